#!/usr/bin/env bash
# Builds everything a GPU session runs (tests and benches with the `cuda` feature, release CLI)
# and copies the executables into gpu-bin/ (git-ignored), to be carried to the device machine,
# which has no crates registry. Then run scripts/gpu_run.sh there (see docs/gpu-runs/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf gpu-bin && mkdir -p gpu-bin/tests gpu-bin/benches
cargo test --features cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' | while read -r exe; do cp "$exe" gpu-bin/tests/; done
cargo bench --features cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["executable"])' | while read -r exe; do cp "$exe" gpu-bin/benches/; done
cargo build --release --features cuda --bin clca
cp target/release/clca gpu-bin/
cp -r scripts/gpu_run.sh gpu-bin/
ls -la gpu-bin/tests gpu-bin/benches | head -40
du -sh gpu-bin
