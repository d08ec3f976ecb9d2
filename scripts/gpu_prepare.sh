#!/usr/bin/env bash
# Builds everything scripts/gpu-check.sh runs on a GPU machine (which has no crates registry and
# no Rust toolchain): the `cuda` test binaries, the CUDA criterion benches and the release CLI,
# stripped and packed into gpu-bin/clca-gpu.tar.xz (git-ignored), with the golden cases beside
# it in gpu-bin/golden when ../shared/golden exists. The device tool carries gpu-bin/ (its limit
# is 64 MiB: unstripped, the test binaries alone are 1.7 GB). See docs/gpu-runs/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/tests" "$stage/benches"
artifacts() { # $1 = jq-less filter on the cargo JSON stream: "test" or "bench"
    python3 -c 'import json,sys
kind = sys.argv[1]
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if (kind == "test" and m["profile"]["test"]) or (kind == "bench" and "bench" in m["target"]["kind"]):
        print(m["executable"])' "$1"
}
cargo test --features cuda --no-run --message-format=json 2>/dev/null | artifacts test \
    | while read -r exe; do cp "$exe" "$stage/tests/"; done
cargo bench --features cuda --no-run --message-format=json 2>/dev/null | artifacts bench \
    | while read -r exe; do cp "$exe" "$stage/benches/"; done
cargo build --release --features cuda --bin clca
cp target/release/clca "$stage/"
strip "$stage"/clca "$stage"/tests/* "$stage"/benches/*
git rev-parse HEAD >"$stage/COMMIT"
git status --porcelain >>"$stage/COMMIT"
rm -rf gpu-bin && mkdir -p gpu-bin
tar -C "$stage" -cJf gpu-bin/clca-gpu.tar.xz .
if [ -d ../shared/golden ]; then
    cp -r ../shared/golden gpu-bin/golden
fi
ls -la gpu-bin
du -sh gpu-bin
