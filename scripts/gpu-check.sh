#!/usr/bin/env bash
# The GPU check, run on a GPU machine from the repository root with gpu-bin/ beside it (built
# here by scripts/gpu_prepare.sh: the device machine has no Rust toolchain and no network).
#
#   bash scripts/gpu-check.sh [PHASES]      PHASES: comma list, default info,tests,sanitizer,cli,benches,compare
#   Knobs for a short lease: TEST_BINS, SAN_LIST, SAN_TIMEOUT, BENCH_SPECS, BENCH_TIMEOUT,
#   COMPARE_ARGS, COMPARE_TIMEOUT.
#
# - tests:     every `cuda` test binary with CLCA_GPU_ONLY=1 (the host-shim bodies ran in CI) and
#              CLCA_REQUIRE_GPU=1 (a GPU that cannot start fails instead of skipping);
# - sanitizer: compute-sanitizer memcheck on the kernel tests and the device forward, racecheck
#              on the kernels that use shared memory;
# - cli:       `clca` (the main job, f32/f16/bf16) and a `clca bench` sweep on the GPU;
# - benches:   the CUDA criterion benches (short samples);
# - compare:   benches/compare/gpu_compare.py: clca against PyTorch eager / autocast /
#              torch.compile on the same weights (logits checked first), PyTorch's pruning
#              chain at batch 256 and the device-to-device copy bandwidth.
# Writes summary.txt, compare.json, benches.txt and logs.tgz under $OUT (default ./gpu-out) and
# prints the summary last. Each step has its own timeout; a failing step does not stop the rest.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
out=${OUT:-$repo/gpu-out}
mkdir -p "$out"
phases=${1:-info,tests,sanitizer,cli,benches,compare}
has() { [[ ",$phases," == *",$1,"* ]]; }
work=/tmp/clca-gpu
logs=$work/logs
rm -rf "$work" && mkdir -p "$work/bin" "$logs"
tar -C "$work/bin" -xJf gpu-bin/clca-gpu.tar.xz || { echo "gpu-bin/clca-gpu.tar.xz missing: run scripts/gpu_prepare.sh here first"; exit 2; }
bin=$work/bin
summary=$out/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
t0=$SECONDS
phase() { note "== $1 (at $((SECONDS - t0)) s)"; }
[ -d gpu-bin/golden ] && export CLCA_GOLDEN_DIR=$repo/gpu-bin/golden

# cuBLAS: cudarc looks for libcublas.so / .so.12 / …; a CUDA 13 machine may only have
# libcublas.so.13 (toolkit or pip wheels), so link the names it tries to what is there.
libs=$work/libs
mkdir -p "$libs"
for name in cublas cublasLt; do
    real=$(ls /usr/local/cuda/lib64/lib$name.so.* /usr/local/cuda/targets/x86_64-linux/lib/lib$name.so.* \
        /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu*/lib/lib$name.so.* \
        /opt/torch/.venv/lib/python3*/site-packages/nvidia/cublas/lib/lib$name.so.* 2>/dev/null | sort -V | tail -1)
    if [ -n "$real" ]; then
        ln -sf "$real" "$libs/lib$name.so"
        export LD_LIBRARY_PATH="$(dirname "$real")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if has info; then
    phase info
    note "date: $(date -u +%FT%TZ)"
    note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1)"
    note "commit: $(head -1 "$bin/COMMIT") ($(($(wc -l <"$bin/COMMIT") - 1)) uncommitted paths when built)"
    note "cuBLAS: $([ -e "$libs/libcublas.so" ] && readlink -f "$libs/libcublas.so" || echo "not found: GEMMs use the tiled kernel")"
    note "cuBLASLt: $([ -e "$libs/libcublasLt.so" ] && readlink -f "$libs/libcublasLt.so" || echo "not found: biases in separate passes")"
    note "kernel: $(uname -r); cpus: $(nproc)"
fi

if has tests; then
    phase tests
    export CLCA_GPU_ONLY=1 CLCA_REQUIRE_GPU=1
    # cli runs the debug CLI of a cargo checkout; the rest are self-contained.
    # TEST_BINS="flash capi …" limits the run to those binaries (a short lease).
    ls "$bin"/tests/* | grep -v '/cli-' \
        | { if [ -n "${TEST_BINS:-}" ]; then grep -E "/($(echo $TEST_BINS | tr ' ' '|'))-"; else cat; fi; } \
        | xargs -P 4 -I{} sh -c \
        'n=$(basename {}); if timeout 120 {} --test-threads 4 >'"$logs"'/test-$n.log 2>&1; then r=ok; else r="FAIL($?)"; fi; echo "$n $r $(grep -h "test result" '"$logs"'/test-$n.log | tail -1)"' \
        | sort | tee -a "$summary"
    grep -h "skipping the GPU\|panicked" "$logs"/test-*.log | sort | uniq -c | head -20 | tee -a "$summary"
    unset CLCA_GPU_ONLY CLCA_REQUIRE_GPU
fi

if has sanitizer; then
    phase sanitizer
    san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
    if [ -z "$san" ]; then
        note "compute-sanitizer: not found"
    else
        export CLCA_GPU_ONLY=1 CLCA_REQUIRE_GPU=1
        run_san() { # tool test [filter]
            local t
            t=$(ls "$bin"/tests/$2-* | head -1)
            timeout ${SAN_TIMEOUT:-150} "$san" --tool "$1" --error-exitcode 9 "$t" --test-threads 1 ${3:-} \
                >"$logs/san-$1-$2.log" 2>&1
            echo "$1 $2: exit $? | $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$logs/san-$1-$2.log" | tail -1) | $(grep -h 'test result' "$logs/san-$1-$2.log" | tail -1)"
        }
        export -f run_san
        export san bin logs
        # SAN_LIST="memcheck flash,racecheck flash" replaces the list (a short lease).
        if [ -n "${SAN_LIST:-}" ]; then
            echo "$SAN_LIST" | tr ',' '\n'
        else
            printf '%s\n' "memcheck topk" "memcheck prune" "memcheck attn_score" "memcheck token_cache" \
                "memcheck tome" "memcheck cla_head" "memcheck merge" "memcheck dyvit" "memcheck dpcknn" \
                "memcheck ats" "memcheck flash" "memcheck golden_vit" "racecheck topk" "racecheck tome" \
                "racecheck dpcknn" "racecheck attn_score" "racecheck ats" "racecheck flash"
        fi | xargs -P 8 -L 1 bash -c 'run_san "$@"' _ | sort | tee -a "$summary"
        unset CLCA_GPU_ONLY CLCA_REQUIRE_GPU
    fi
fi

if has cli; then
    phase cli
    timeout 180 "$bin/clca" --dtype f32,f16,bf16 --runs 5 >"$logs/clca-run.log" 2>&1
    note "clca (main job): exit $?"
    grep -i "backend\|cuda\|cpu " "$logs/clca-run.log" | head -20 | tee -a "$summary"
    timeout 240 "$bin/clca" bench --device cuda --dtype bf16 --methods ${BENCH_METHODS:-vit,evit,tome} \
        --keep-rates ${BENCH_KEEP_RATES:-0.1,0.5} --batch 1,64 --runs 10 --warmup 2 --csv "$out/clca-bench.csv" \
        >"$logs/clca-bench.log" 2>&1
    note "clca bench (cuda bf16): exit $?"
    tail -40 "$logs/clca-bench.log" >>"$summary"
fi

if has benches; then
    phase benches
    : >"$out/benches.txt"
    # bench binary and criterion filter: the issue-6 points and bf16 for the rest (f32/f16 when
    # BENCH_ALL=1), to stay inside a short lease.
    if [ -n "${BENCH_ALL:-}" ]; then f=cuda_; fb=cuda_; else f=bf16; fb='cuda_prune_b256|cuda_prune_bf16|cuda_evit_prune_bf16'; fi
    specs=${BENCH_SPECS:-"attention:cuda_flash_bf16/(q(64|128)|q64_cls|topk_kr0.1)/B(8|64)_N786 prune:$fb select:cuda_.*$f token_cache:cuda_.*$f tome:cuda_.*$f cla_head:cuda_.*$f methods_ops:cuda_.*$f dpc_ats:cuda_.*$f"}
    for spec in $specs; do
        b=${spec%%:*} filter=${spec#*:}
        t=$(ls "$bin"/benches/$b-* 2>/dev/null | head -1)
        [ -n "$t" ] || continue
        timeout ${BENCH_TIMEOUT:-200} "$t" --bench "$filter" --warm-up-time 0.3 --measurement-time 0.6 \
            >"$logs/bench-$b.log" 2>&1
        note "bench $b ($filter): exit $?"
        # criterion prints the id, then "time: [lo mid hi]" and "thrpt: [...]".
        grep -B1 -A1 "time:" "$logs/bench-$b.log" | grep -v '^--$' >>"$out/benches.txt"
    done
fi

if has compare; then
    phase compare
    # The log goes straight to $out: its JSON lines survive a lease that ends mid-run.
    PYTHONUNBUFFERED=1 timeout ${COMPARE_TIMEOUT:-420} python3 benches/compare/gpu_compare.py \
        --clca "$bin/clca" --out "$out" ${COMPARE_ARGS:-} >"$out/compare.log" 2>&1
    note "compare: exit $?"
    sed -n '/== summary ==/,$p' "$out/compare.log" >>"$summary"
    grep '"error"' "$out/compare.log" | tee -a "$summary"
fi

phase done
tar -C "$work" -czf "$out/logs.tgz" logs
cat "$summary"
