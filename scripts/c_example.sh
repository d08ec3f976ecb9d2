#!/usr/bin/env bash
# Builds libclca (the cdylib of `cargo build --lib`), compiles examples/c/classify.c against it
# and include/clca.h with gcc (warnings are errors; the header is also compiled as C++), and runs
# it on the CPU. Arguments go to the program: [W.safetensors ["FLAGS"]].
#   bash scripts/c_example.sh [--release] [W.safetensors ["FLAGS"]]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=debug
cargo_flags=()
if [ "${1:-}" = "--release" ]; then
    profile=release
    cargo_flags=(--release)
    shift
fi
# --examples: the lib then resolves its dependencies' features with the dev-dependencies, as
# `cargo test` does, so the test step's build of the lib is reused instead of compiled again.
cargo build --quiet --lib --examples "${cargo_flags[@]}"
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
lib="$target/$profile"
[ -f "$lib/libclca.so" ] || { echo "c_example: $lib/libclca.so missing" >&2; exit 1; }
out="$target/c-example"
mkdir -p "$out"

CC=${CC:-gcc}
"$CC" -std=c11 -Wall -Wextra -Wpedantic -Werror -O2 -Iinclude examples/c/classify.c \
    -L"$lib" -Wl,-rpath,"$lib" -lclca -lm -o "$out/classify"
if command -v g++ >/dev/null; then
    printf '#include "clca.h"\nint main() { return clca_abi_version() == CLCA_ABI_VERSION ? 0 : 1; }\n' |
        g++ -std=c++11 -Wall -Wextra -Werror -Iinclude -x c++ - -L"$lib" -Wl,-rpath,"$lib" -lclca \
            -o "$out/header_cxx"
    "$out/header_cxx"
fi
"$out/classify" "$@"
