#!/usr/bin/env bash
# include/clca.h from src/capi/ with the pinned cbindgen (cbindgen.toml).
#   bash scripts/cheader.sh           regenerate include/clca.h
#   bash scripts/cheader.sh --check   fail if include/clca.h differs from what cbindgen writes now
# cbindgen is installed once into .toolchain/cbindgen-$CLCA_CBINDGEN_VERSION (git-ignored) with
# `cargo install --debug --locked` when it is not there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

CLCA_CBINDGEN_VERSION=0.29.4
dest="$root/.toolchain/cbindgen-$CLCA_CBINDGEN_VERSION"
bin="$dest/bin/cbindgen"
if [ ! -x "$bin" ]; then
    echo "cheader: installing cbindgen $CLCA_CBINDGEN_VERSION into $dest"
    mkdir -p "$root/.toolchain"
    # --debug: a third of the release build's compile time (CI installs it on every run); it
    # writes the header in about a second either way.
    cargo install --quiet --debug --locked --version "=$CLCA_CBINDGEN_VERSION" --root "$dest" cbindgen
fi
have=$("$bin" --version)
[ "$have" = "cbindgen $CLCA_CBINDGEN_VERSION" ] || {
    echo "cheader: $bin is '$have', expected cbindgen $CLCA_CBINDGEN_VERSION" >&2
    exit 1
}

header=include/clca.h
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$bin" --quiet --config cbindgen.toml --crate clca --output "$tmp" "$root"

if [ "${1:-}" = "--check" ]; then
    if ! diff -u "$header" "$tmp"; then
        echo "cheader: $header is stale: run \`bash scripts/cheader.sh\` and commit it" >&2
        exit 1
    fi
    echo "cheader: $header is fresh"
else
    mkdir -p include
    cp "$tmp" "$header"
    echo "cheader: wrote $header"
fi
