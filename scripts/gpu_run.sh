#!/usr/bin/env bash
# Runs on the device machine (from the repository root, with gpu-bin/ carried): the GPU tests,
# compute-sanitizer memcheck/racecheck on a kernel test, the CLI main job, and the benches.
# Writes everything under $OUT (default ./gpu-out) and prints a summary last.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
log="$out/gpu-run.log"
export CLCA_GOLDEN_DIR=${CLCA_GOLDEN_DIR:-$PWD/shared/golden}
# cuBLAS may live beside the toolkit rather than on the default library path.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    git rev-parse HEAD 2>/dev/null || true
} >"$out/machine.txt" 2>&1
summary=()
for t in gpu-bin/tests/*; do
    name=$(basename "$t")
    if timeout 300 "$t" >"$out/test-$name.log" 2>&1; then r=ok; else r=FAIL; fi
    summary+=("test $name: $r ($(grep -h 'test result' "$out/test-$name.log" | tail -1))")
done
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$san" ]; then
    for tool in memcheck racecheck; do
        t=$(ls gpu-bin/tests/topk-* 2>/dev/null | head -1)
        if [ -n "$t" ]; then
            timeout 300 "$san" --tool "$tool" "$t" contract long_rows >"$out/sanitizer-$tool.log" 2>&1
            summary+=("compute-sanitizer $tool (topk): $(tail -1 "$out/sanitizer-$tool.log")")
        fi
    done
else
    summary+=("compute-sanitizer: not found")
fi
timeout 120 gpu-bin/clca --dtype f32,f16,bf16 >"$out/clca-run.log" 2>&1
summary+=("clca run: exit $? ($(grep -m1 'CUDA' "$out/clca-run.log"))")
for b in gpu-bin/benches/*; do
    timeout 240 "$b" --bench cuda_ >"$out/bench-$(basename "$b").log" 2>&1
    summary+=("bench $(basename "$b"): exit $?")
done
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
cat "$out/machine.txt"
