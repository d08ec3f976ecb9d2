#!/usr/bin/env bash
# Valgrind memcheck over the CPU tests (docs/reliability.md records a run):
#
#   bash scripts/memcheck.sh            # the default set below
#   bash scripts/memcheck.sh TEST[:FILTER] ...
#
# Each TEST is a tests/*.rs file, FILTER an optional test-name filter. The default set is the
# CPU-only tests of the public API's bad inputs, the fuzz corpus replay, determinism and every
# method's forward; the host-shim tests are left out (the shim's fibers switch stacks, which
# memcheck reports as noise, and run ~100× slower under it). Fails on any memcheck error
# (invalid read/write, use of uninitialised values, invalid free) or definite leak. Needs
# valgrind (apt-get install valgrind); too slow for CI (~10-20 min on 2 cores), so not in .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "memcheck: valgrind not found (apt-get install valgrind)" >&2; exit 2; }

sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(
    "bad_input:"
    "fuzz_corpus:corpus_and_regressions_replay"
    "determinism:cpu_"
    "methods:"
    "plan:"
)
status=0
for s in "${sets[@]}"; do
    test=${s%%:*}
    filter=${s#*:}
    [ "$filter" = "$s" ] && filter=""
    bin=$(cargo test --no-run --test "$test" --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]:
        print(m["executable"])' | tail -n 1)
    [ -n "$bin" ] || { echo "memcheck: cannot build tests/$test.rs" >&2; exit 2; }
    echo "---- memcheck: tests/$test.rs ${filter:+(filter $filter)}"
    t=$SECONDS
    rc=0
    # Rayon's global pool outlives main (its threads are never joined): only definite leaks
    # count.
    RAYON_NUM_THREADS=2 valgrind --tool=memcheck --error-exitcode=99 \
        --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
        --num-callers=30 --quiet "$bin" --test-threads=1 $filter || rc=$?
    echo "---- tests/$test.rs: exit $rc in $((SECONDS - t)) s"
    [ "$rc" = 0 ] || status=1
done
exit $status
