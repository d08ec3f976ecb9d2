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

# With the `cuda` feature and no GPU the GPU bodies skip, so the other test bodies would repeat
# the run above; only the tests whose behaviour the feature changes (no driver, the C ABI's
# CUDA backend, the library and CLI units) run. With a GPU
# (nvidia-smi answers), or CLCA_FULL_CUDA_TESTS=1, all of them run (scripts/gpu-check.sh runs
# their GPU bodies on a lent GPU).
if [ -n "${CLCA_FULL_CUDA_TESTS:-}" ] || nvidia-smi -L >/dev/null 2>&1; then
  section "cargo test --features cuda (all)"
  cargo test --features cuda
else
  # Only these are built: clippy --all-targets --features cuda type-checks the rest, and
  # scripts/gpu_prepare.sh builds every GPU test binary for a GPU run.
  section "cargo test --features cuda (no GPU: the feature-dependent tests)"
  cargo test --features cuda --lib --bins --test bad_input --test capi --test kernel_table
fi

section "C ABI: examples/c/classify.c against libclca (scripts/c_example.sh)"
bash scripts/c_example.sh

section "examples (numbered by what they teach)"
for e in examples/[0-9][0-9]_*.rs; do
  name="$(basename "$e" .rs)"
  printf -- '-- %s\n' "$name"
  cargo run --quiet --example "$name"
done
