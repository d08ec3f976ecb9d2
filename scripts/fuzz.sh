#!/usr/bin/env bash
# Coverage-guided fuzzing of the fuzz/ targets with libFuzzer (nightly Rust, AddressSanitizer):
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default: 600 s, every target)
#
# Targets: safetensors_load (the weight loader and its shape checks), config_flags (config.json
# and the model-name + train.py flag parser, then the planner), plan_model (a model planned and
# loaded from a configuration and weights, then a CPU forward). The same crate runs under
# `cargo fuzz run TARGET` where cargo-fuzz is installed; this script needs only rustup: it
# installs the pinned nightly (scripts/toolchain.env) when it is missing and passes
# cargo-fuzz's flags itself.
#
# Each target starts from fuzz/corpus/TARGET and writes what it learns to a scratch copy
# (CLCA_FUZZ_UPDATE_CORPUS=1 merges the new inputs back into fuzz/corpus, minimized). A crash
# stops the run with exit 1 and leaves the input in fuzz/artifacts/TARGET/; after the fix, copy
# it to fuzz/regressions/TARGET/ so tests/fuzz_corpus.rs replays it on every CI run.
# Limits per input: 2 GiB RSS and no single allocation above 2 GiB (a hostile size must be
# refused, not allocated), 20 s.
# The last lines print, per target, executions, seconds and crashes (docs/reliability.md).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_load config_flags plan_model)

# shellcheck source=toolchain.env
. scripts/toolchain.env
toolchain=${CLCA_FUZZ_TOOLCHAIN:-$CLCA_FUZZ_NIGHTLY}
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the $toolchain toolchain (minimal profile)"
    rustup toolchain install "$toolchain" --profile minimal
fi
host=$(rustup run "$toolchain" rustc -vV | sed -n 's/^host: //p')
echo "fuzz: $(rustup run "$toolchain" rustc --version), target $host"

# cargo-fuzz's flags (cargo fuzz build --release, the default sanitizer): SanitizerCoverage
# for libFuzzer, AddressSanitizer, debug assertions and overflow checks on. --target keeps them
# off build scripts and proc macros.
export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address \
-Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=${CLCA_FUZZ_TARGET_DIR:-$root/fuzz/target}
# The targets launch no kernel: build.rs embeds the committed ptx/ instead of running NVRTC.
export CLCA_NVRTC=${CLCA_NVRTC:-off}
t0=$SECONDS
cargo +"$toolchain" build --manifest-path fuzz/Cargo.toml --release --target "$host" --bins
echo "fuzz: built in $((SECONDS - t0)) s"
bin="$CARGO_TARGET_DIR/$host/release"

# One scratch folder per run; libFuzzer adds what it finds there.
work=$(mktemp -d "${TMPDIR:-/tmp}/clca-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
summary=()
status=0
# Rayon in the forward: one thread keeps runs reproducible and fast.
export RAYON_NUM_THREADS=1
for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || { echo "fuzz: no target $t" >&2; exit 2; }
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    cp -r "fuzz/corpus/$t/." "$work/$t/"
    log="$work/$t.log"
    echo "---- $t: ${secs}s"
    rc=0
    touch "$work/$t.start"
    "$bin/$t" "$work/$t" -max_total_time="$secs" -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 -timeout=20 -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        ${CLCA_FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    tail -n 25 "$log"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    took=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    crashes=$(find "fuzz/artifacts/$t" -type f -newer "$work/$t.start" | wc -l)
    summary+=("$t: ${execs:-?} executions in ${secs} s (${took:-?}/s), exit $rc, $crashes crash/oom/timeout input(s) in fuzz/artifacts/$t")
    if [ "$rc" != 0 ]; then
        status=1
        echo "fuzz: $t FAILED (exit $rc); the input is in fuzz/artifacts/$t/ — fix, then copy it to fuzz/regressions/$t/" >&2
    fi
    if [ "${CLCA_FUZZ_UPDATE_CORPUS:-0}" = 1 ] && [ "$rc" = 0 ]; then
        # Adds to fuzz/corpus only the inputs that reach new coverage.
        "$bin/$t" -merge=1 "fuzz/corpus/$t" "$work/$t" >/dev/null 2>&1
        echo "fuzz: fuzz/corpus/$t now has $(find "fuzz/corpus/$t" -type f | wc -l) files"
    fi
done
echo
echo "==== fuzz summary ($toolchain, ${secs} s per target)"
printf '%s\n' "${summary[@]}"
exit $status
