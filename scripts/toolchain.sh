#!/usr/bin/env bash
# Installs the pinned CUDA toolchain wheels (scripts/toolchain.env) into .toolchain/cuda:
# libnvrtc (used by build.rs and scripts/ptx.py) and ptxas (scripts/ptxas_check.sh).
# No GPU, no CUDA install, no root needed. Idempotent: a marker file records the installed pins,
# and a run whose pins match it (and whose files are present) does nothing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=toolchain.env
. "$root/scripts/toolchain.env"

dest="$root/.toolchain/cuda"
marker="$dest/.clca-pins"
nvrtc="$dest/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
ptxas="$dest/nvidia/cuda_nvcc/bin/ptxas"
want="$CLCA_CUDA_NVRTC_WHEEL $CLCA_CUDA_NVCC_WHEEL"

have_pins() {
    [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -f "$nvrtc" ] && [ -x "$ptxas" ]
}

# An install made by hand with the same pins (pip's dist-info folders say so) is adopted as is.
dist_infos_match() {
    local w name ver
    for w in $want; do
        name=${w%%==*} ver=${w#*==}
        [ -d "$dest/${name//-/_}-$ver.dist-info" ] || return 1
    done
    [ -f "$nvrtc" ] && [ -x "$ptxas" ]
}
if ! have_pins && dist_infos_match; then
    printf '%s' "$want" >"$marker"
fi

if have_pins; then
    echo "toolchain: up to date ($want)"
else
    echo "toolchain: installing $want into $dest"
    py=${PYTHON:-python3}
    # Install into a fresh folder beside the old one, then swap, so an interrupted install never
    # leaves a half-filled .toolchain/cuda behind a valid marker.
    mkdir -p "$root/.toolchain"
    tmp=$(mktemp -d "$root/.toolchain/cuda.new.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # shellcheck disable=SC2086 # $want is a list of requirement specifiers
    "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --no-deps --target "$tmp" $want
    [ -f "$tmp/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ] || { echo "toolchain: libnvrtc.so.12 missing after install" >&2; exit 1; }
    [ -f "$tmp/nvidia/cuda_nvcc/bin/ptxas" ] || { echo "toolchain: ptxas missing after install" >&2; exit 1; }
    chmod 755 "$tmp" "$tmp/nvidia/cuda_nvcc/bin/ptxas"
    printf '%s' "$want" >"$tmp/.clca-pins"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
fi

echo "toolchain: libnvrtc $nvrtc"
echo "toolchain: ptxas   $ptxas ($("$ptxas" --version | sed -n 's/^Cuda compilation tools, //p'))"

# Pillow for tests/preprocess.rs (the PIL-exact resize check), in its own folder.
pydest="$root/.toolchain/py"
pymarker="$pydest/.clca-pins"
if [ -f "$pymarker" ] && [ "$(cat "$pymarker")" = "$CLCA_PILLOW_WHEEL" ]; then
    echo "toolchain: Pillow up to date ($CLCA_PILLOW_WHEEL)"
else
    rm -rf "$pydest"
    if "${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --no-deps --target "$pydest" "$CLCA_PILLOW_WHEEL"; then
        printf '%s' "$CLCA_PILLOW_WHEEL" >"$pymarker"
        echo "toolchain: Pillow installed in $pydest"
    else
        echo "toolchain: Pillow not installed; tests/preprocess.rs will skip its Pillow comparison" >&2
    fi
fi
