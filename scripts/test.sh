#!/usr/bin/env bash
# The test command (README): the CPU references, the host shim running kernels/*.cu on the CPU,
# and the CUDA backend's tests (which skip when no GPU or driver is found).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "toolchain (NVRTC for build.rs)"
bash scripts/toolchain.sh

section "cargo test"
cargo test

section "cargo test --features cuda"
cargo test --features cuda

section "C ABI: examples/c/classify.c against libclca (scripts/c_example.sh)"
bash scripts/c_example.sh

section "examples (numbered by what they teach)"
for e in examples/[0-9][0-9]_*.rs; do
  name="$(basename "$e" .rs)"
  printf -- '-- %s\n' "$name"
  cargo run --quiet --example "$name"
done
