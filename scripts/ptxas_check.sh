#!/usr/bin/env bash
# Assembles every committed ptx/*.ptx with the pinned ptxas (scripts/toolchain.sh) for each
# architecture below and prints one table of per-kernel resources: registers, static shared
# memory, stack frame and spill bytes (stores + loads). Fails when ptxas fails or any function
# spills. With --write-doc the table is also written to docs/ptxas.txt (commit it).
#   PTXAS=/path/to/ptxas overrides the toolchain's ptxas.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
archs=(sm_80 sm_90)
ptxas=${PTXAS:-$root/.toolchain/cuda/nvidia/cuda_nvcc/bin/ptxas}

write_doc=0
case "${1:-}" in
    "") ;;
    --write-doc) write_doc=1 ;;
    *) echo "usage: $0 [--write-doc]" >&2; exit 2 ;;
esac
if [ ! -x "$ptxas" ]; then
    echo "ptxas_check: no ptxas at $ptxas: run \`bash scripts/toolchain.sh\`" >&2
    exit 2
fi

shopt -s nullglob
files=("$root"/ptx/*.ptx)
if [ ${#files[@]} -eq 0 ]; then
    echo "ptxas_check: no ptx/*.ptx" >&2
    exit 1
fi

rows=$(mktemp)
log=$(mktemp)
trap 'rm -f "$rows" "$log"' EXIT
failed=0
for f in "${files[@]}"; do
    module=$(basename "$f" .ptx)
    for arch in "${archs[@]}"; do
        if ! "$ptxas" -arch="$arch" -v "$f" -o /dev/null >"$log" 2>&1; then
            echo "ptxas_check: ptxas -arch=$arch failed on ptx/$module.ptx:" >&2
            cat "$log" >&2
            failed=1
            continue
        fi
        # Per function: "Function properties for NAME", then "N bytes stack frame, N bytes spill
        # stores, N bytes spill loads", then (entries only) "Used N registers[, N bytes smem]...".
        awk -v module="$module" -v arch="$arch" '
            function flush() {
                if (name != "") print module, name, arch, regs, smem, stack, spill
                name = ""
            }
            /Function properties for / {
                flush()
                name = $NF; regs = "-"; smem = 0; stack = 0; spill = 0
                next
            }
            name != "" && /bytes stack frame/ {
                for (i = 1; i < NF; i++) {
                    if ($(i + 1) == "bytes" && $(i + 2) ~ /^stack/) stack = $i + 0
                    if ($(i + 1) == "bytes" && $(i + 2) == "spill") spill += $i
                }
                next
            }
            name != "" && /Used [0-9]+ registers/ {
                for (i = 1; i < NF; i++) {
                    if ($i == "Used") regs = $(i + 1) + 0
                    if ($(i + 1) == "bytes" && $(i + 2) ~ /^smem/) smem = $i + 0
                }
                next
            }
            END { flush() }
        ' "$log" >>"$rows"
    done
done

{
    echo "# ptxas $("$ptxas" --version | sed -n 's/^Cuda compilation tools, //p'), ptx/*.ptx; spill = spill stores + spill loads"
    printf '%-12s %-30s %-5s %5s %10s %11s %11s\n' module kernel arch regs smem_bytes stack_bytes spill_bytes
    sort -k1,1 -k2,2 -k3,3 "$rows" | while read -r m k a r s st sp; do
        printf '%-12s %-30s %-5s %5s %10s %11s %11s\n' "$m" "$k" "$a" "$r" "$s" "$st" "$sp"
    done
} >"$log"
cat "$log"
# The table is written even when it shows spills (it documents them), but not when ptxas failed.
if [ "$write_doc" = 1 ] && [ "$failed" = 0 ]; then
    cp "$log" "$root/docs/ptxas.txt"
    echo "ptxas_check: wrote docs/ptxas.txt"
fi

spills=$(awk '$7 != 0 { print "  " $1 " " $2 " " $3 ": " $7 " spill bytes" }' "$rows")
if [ -n "$spills" ]; then
    echo "ptxas_check: register spills:" >&2
    echo "$spills" >&2
    failed=1
fi
if [ ! -s "$rows" ]; then
    echo "ptxas_check: ptxas reported no functions" >&2
    failed=1
fi
if [ "$failed" != 0 ]; then
    echo "ptxas_check: FAILED" >&2
    exit 1
fi
echo "ptxas_check: ok ($(wc -l <"$rows") function x arch rows, no spills)"
