"""Side by side on the CPU: clca's CLI, PyTorch eager and ONNX Runtime (the same PyTorch model
exported, CPU execution provider, all graph optimizations), same weights, same inputs, the same
thread count for everyone. Models (MODELS): plain ViT, EViT + CLCA and ToMe + CLCA (CLC with one
clr token + CLA head) on ViT-B/16 CLIP at 448 px. Logits are checked first; then the three
alternate, round after round, so that a noisy machine hits them alike. Prints one JSON line per
point and a table:

    bash benches/compare/setup.sh                   # once: .venv with torch, onnxruntime
    benches/compare/.venv/bin/python benches/compare/cpu_compare.py --threads 2

Figures: medians over the rounds (min and max beside them); GFLOP/s = 2 x MACs (clca's own count)
/ time. The matmul ceiling is the faster of PyTorch's (MKL) and NumPy's (OpenBLAS) 2048^3 f32
product with the same threads (MKL runs a generic path on AMD CPUs), measured before and after
the timings, the higher kept (as the FMA peak). The FMA peak is the roof
above both: fma_peak.c (built with gcc) running FMA chains on registers only, at clca's vector
width; "% peak" says how much of it a forward sustains.

AVX2-only machines (the packed path on AVX2 + FMA) can be approximated on a CPU that also has
AVX-512: `--isa avx2` runs clca's AVX2 path (CLCA_CPU_ISA), and MKL_ENABLE_INSTRUCTIONS=AVX2 in
the environment restricts PyTorch (and so the ceiling) to AVX2; ONNX Runtime has no such switch
and keeps AVX-512, so its column is then a harder peer than on a real AVX2 machine.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clca_torch import Flags, TorchClca  # noqa: E402

MODELS = {
    "plain": Flags("vit", (3, 6, 9), (1.0,), clc=False, num_clr=0, ifa_head=False),
    "evit_clca_kr0.1": Flags("evit", (3, 6, 9), (0.1,)),
    "evit_clca_kr0.25": Flags("evit", (3, 6, 9), (0.25,)),
    "evit_clca_kr0.7": Flags("evit", (3, 6, 9), (0.7,)),
    # ToMe + CLCA, the README recipe's locs and keep rate (SPEC §2.5: 394/329/328 tokens out of
    # the merging blocks, because ToMe merges at most half the tokens per block).
    "tome_clca_kr0.1": Flags("tome", (3, 6, 9), (0.1,)),
    "tome_clca_kr0.25": Flags("tome", (3, 6, 9), (0.25,)),
    "tome_clca_kr0.7": Flags("tome", (3, 6, 9), (0.7,)),
}


CLCA_ENV = dict(os.environ)


def clca(binary, args):
    r = subprocess.run([binary, *args], capture_output=True, text=True, env=CLCA_ENV)
    if r.returncode != 0:
        raise RuntimeError(f"clca {' '.join(args)}: {r.stderr[-1500:]}")
    return r.stdout


def matmul_ceiling(runs=5):
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / min(ts) / 1e9


def openblas_ceiling(threads, runs=5):
    """The same 2048^3 product in NumPy (its bundled OpenBLAS), in a child so that the thread
    count holds: MKL's kernels fall back on AMD CPUs, where this ceiling is the higher one."""
    code = ("import numpy as np, time\n"
            "a = np.random.rand(2048, 2048).astype(np.float32); b = a.T.copy(); a @ b\n"
            "ts = []\n"
            f"for _ in range({runs}):\n"
            "    t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)\n"
            "print(2 * 2048 ** 3 / min(ts) / 1e9)\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return float(r.stdout) if r.returncode == 0 else None


def build_fma_peak(isa, work):
    """fma_peak.c built with gcc at clca's vector width: (the executable or None, the ISA).
    None without gcc, FMA or the ISA."""
    flags = open("/proc/cpuinfo").read()
    if isa == "best":
        isa = "avx512" if " avx512f" in flags else "avx2"
    if isa == "portable" or (isa == "avx512" and " avx512f" not in flags) or " fma" not in flags:
        return None, isa
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, isa
    exe = os.path.join(work, f"fma_peak_{isa}")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.c")
    arch = ["-mavx512f", "-DWIDTH=512"] if isa == "avx512" else ["-mavx2", "-mfma", "-DWIDTH=256"]
    if subprocess.run([gcc, "-O2", "-fopenmp", *arch, src, "-o", exe]).returncode != 0:
        return None, isa
    return exe, isa


def fma_peak(exe, threads):
    """The machine's f32 FMA peak (GFLOP/s) from the built fma_peak, or None."""
    if exe is None:
        return None
    r = subprocess.run([exe], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return float(r.stdout) if r.returncode == 0 else None


def stats(ts):
    ts = sorted(ts)
    return {"median_s": ts[len(ts) // 2], "min_s": ts[0], "max_s": ts[-1], "n": len(ts)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clca", default="target/release/clca")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--models", default="plain,evit_clca_kr0.1,evit_clca_kr0.25,evit_clca_kr0.7,"
                                        "tome_clca_kr0.1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/clca-cpu-compare")
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--isa", default="best", choices=["best", "avx512", "avx2", "portable"],
                    help="clca's CPU path (CLCA_CPU_ISA); best = what the CPU has")
    a = ap.parse_args()
    if a.isa != "best":
        CLCA_ENV["CLCA_CPU_ISA"] = a.isa
    os.makedirs(a.work, exist_ok=True)
    torch.set_num_threads(a.threads)
    results = []

    def emit(**kv):
        results.append(kv)
        print(json.dumps(kv), flush=True)

    emit(what="machine", torch=torch.__version__, onnxruntime=ort.__version__,
         threads=a.threads, clca_isa=a.isa,
         mkl_instructions=os.environ.get("MKL_ENABLE_INSTRUCTIONS", "(default)"), cpu=open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"))
    peak_exe, peak_isa = build_fma_peak(a.isa, a.work)

    def roofs():
        """The matmul ceiling and the FMA peak, as two records (measured before and after the
        timings; the summary keeps the higher of each)."""
        mkl, oblas = matmul_ceiling(), openblas_ceiling(a.threads)
        emit(what="matmul_ceiling", gflops=max(mkl, oblas or 0.0), torch_mkl=mkl,
             numpy_openblas=oblas)
        emit(what="fma_peak", gflops=fma_peak(peak_exe, a.threads), isa=peak_isa)

    roofs()
    batches = [int(b) for b in a.batches.split(",")]
    gen = torch.Generator().manual_seed(7)
    imgs = torch.randn(max(batches), 3, 448, 448, generator=gen)
    for name in a.models.split(","):
        f = MODELS[name]
        w = os.path.join(a.work, f"{name}.safetensors")
        if not os.path.exists(w):
            clca(a.clca, ["random-weights", *f.cli(), "--num_classes", "200", "--seed", "1",
                          "--output", w])
        model = TorchClca(load_file(w), f).eval()
        for b in batches:
            x = imgs[:b].contiguous()
            inp = os.path.join(a.work, f"images_b{b}.safetensors")
            if not os.path.exists(inp):
                save_file({"images": x}, inp)
            onnx_path = os.path.join(a.work, f"{name}_b{b}.onnx")
            if not os.path.exists(onnx_path):
                with torch.no_grad():
                    torch.onnx.export(model, (x,), onnx_path, opset_version=17,
                                      input_names=["images"], output_names=["logits"])
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
            out = os.path.join(a.work, "logits.safetensors")
            base = ["forward", "--weights", w, "--input", inp, "--output", out, *f.cli(),
                    "--threads", str(a.threads)]
            # Logits first: all three on the same input.
            clca(a.clca, base)
            ours = load_file(out)["logits"].double()
            with torch.no_grad():
                ref = model(x).double()
            onx = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0]).double()
            scale = ref.abs().max().item()
            emit(what="logits_check", model=name, batch=b,
                 clca_vs_torch=(ours - ref).abs().max().item() / scale,
                 ort_vs_torch=(onx - ref).abs().max().item() / scale,
                 top1_same=bool((ours.argmax(1) == ref.argmax(1)).all()
                                and (onx.argmax(1) == ref.argmax(1)).all()))
            macs = None
            t = {"clca": [], "torch": [], "onnxruntime": []}
            xn = x.numpy()
            with torch.no_grad():
                model(x)  # warm-up
            sess.run(None, {"images": xn})
            for _ in range(a.rounds):
                j = json.loads(clca(a.clca, base + ["--warmup", "1", "--runs", "1", "--json"]))
                macs = j["macs"]
                t["clca"].append(j["forward_median_s"])
                with torch.no_grad():
                    s = time.perf_counter()
                    model(x)
                    t["torch"].append(time.perf_counter() - s)
                s = time.perf_counter()
                sess.run(None, {"images": xn})
                t["onnxruntime"].append(time.perf_counter() - s)
            for impl, ts in t.items():
                st = stats(ts)
                emit(what="forward", model=name, batch=b, impl=impl, macs=macs,
                     gflops=2 * macs * b / st["median_s"] / 1e9, **st)
    # Again at the end: on a shared VM one vCPU is sometimes starved for a while (a 2-thread
    # run at 1-thread speed), and a peak or a ceiling measured then would make every "% peak"
    # or "% ceil" too high (a run on 2026-11-28 measured the ceiling at 109 GFLOP/s, half of
    # what the same matmuls did an hour before). The summary keeps the higher of each.
    roofs()
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print("\n== summary (medians; ratio = best peer time / clca time, > 1 means clca is faster;"
          " min ratio: the same of the fastest rounds) ==")
    cr = max((r for r in results if r["what"] == "matmul_ceiling"), key=lambda r: r["gflops"])
    ceil = cr["gflops"]
    peaks = [r["gflops"] for r in results if r["what"] == "fma_peak" and r["gflops"]]
    pk = {"gflops": max(peaks) if peaks else None, "isa": peak_isa}
    ob = f"{cr['numpy_openblas']:.0f}" if cr["numpy_openblas"] else "n/a"
    print(f"matmul ceiling (2048^3 f32, {a.threads} threads, the higher of the runs before and "
          f"after, the faster of PyTorch/MKL "
          f"{cr['torch_mkl']:.0f} and NumPy/OpenBLAS {ob}): {ceil:.0f} GFLOP/s; "
          f"clca path: {a.isa}; MKL_ENABLE_INSTRUCTIONS: "
          f"{os.environ.get('MKL_ENABLE_INSTRUCTIONS', '(default)')}")
    if pk["gflops"]:
        print(f"FMA peak ({pk['isa']}, {a.threads} threads, fma_peak.c, the higher of the runs "
              f"before and after): {pk['gflops']:.0f} GFLOP/s")
    peak = pk["gflops"]
    fw = {(r["model"], r["batch"], r["impl"]): r for r in results if r["what"] == "forward"}
    # "min ratio": the same ratio of the fastest rounds. On a shared VM whose slow spells hit
    # some rounds and not others, the medians of a few rounds swing widely while the minima
    # hold (BENCHMARKS.md); the two together show how far to trust a run.
    print(f"{'model':<18} {'B':>2} {'clca':>9} {'torch':>9} {'ORT':>9} {'ratio':>6} {'min ratio':>9} "
          f"{'clca GFLOP/s':>13} {'% ceil':>7} {'% peak':>7}")
    for (m, b, impl), r in sorted(fw.items()):
        if impl != "clca":
            continue
        tt, to = fw[(m, b, "torch")]["median_s"], fw[(m, b, "onnxruntime")]["median_s"]
        mt, mo = fw[(m, b, "torch")]["min_s"], fw[(m, b, "onnxruntime")]["min_s"]
        print(f"{m:<18} {b:>2} {r['median_s']:>8.3f}s {tt:>8.3f}s {to:>8.3f}s "
              f"{min(tt, to) / r['median_s']:>6.2f} {min(mt, mo) / r['min_s']:>9.2f} "
              f"{r['gflops']:>13.0f} {100 * r['gflops'] / ceil:>6.0f}% "
              + (f"{100 * r['gflops'] / peak:>6.0f}%" if peak else f"{'n/a':>7}"))


if __name__ == "__main__":
    main()
