"""Side by side on one GPU: clca's CLI against PyTorch (eager f32, eager autocast bf16,
torch.compile) on the same weights and inputs, after checking that the logits agree; plus the
issue-6 pruning point (batch 256, N 786, C 768) as PyTorch's op chain and the card's
device-to-device copy bandwidth. End-to-end models (--models): EViT + CLCA kr 0.1, plain ViT and
ToMe + CLCA kr 0.1, ViT-B/16 CLIP at 448 px. Run by scripts/gpu-check.sh on the device machine:

    python3 benches/compare/gpu_compare.py --clca gpu-bin/clca --out $OUT

Prints one JSON object per measurement and a table last; writes compare.json under --out.
Timing: CUDA events around the region, warm-up first, median of the runs (METHOD.md).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clca_torch import Flags, TorchClca, prune_chain  # noqa: E402

RESULTS = []
# Exact f32 on both sides for the logits check (cuDNN convolutions default to TF32).
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def emit(**kv):
    RESULTS.append(kv)
    print(json.dumps(kv), flush=True)


def cuda_time(fn, warmup=3, runs=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    ts.sort()
    return {"median_s": ts[len(ts) // 2], "min_s": ts[0], "max_s": ts[-1], "runs": runs}


def copy_bandwidth():
    n = 1 << 30  # 1 GiB each way
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), warmup=3, runs=20)
    emit(what="copy_d2d", bytes=2 * n, gbps=2 * n / t["median_s"] / 1e9, **t)


def prune_point():
    B, H, N, C, k = 256, 12, 786, 768, 79
    for dt in (torch.float32, torch.bfloat16):
        g = torch.Generator(device="cuda").manual_seed(0)
        probs = torch.empty(B, H, N, N, dtype=dt, device="cuda")
        probs[:, :, 0, :] = torch.randn(B, H, N, device="cuda", generator=g).softmax(-1).to(dt)
        x = torch.randn(B, N, C, device="cuda", generator=g).to(dt)
        t = cuda_time(lambda: prune_chain(probs, x, k), warmup=5, runs=50)
        by = (B * (N + 2 + k) * C) * x.element_size()
        emit(what="torch_prune_chain_b256", dtype=str(dt).split(".")[-1], bytes=by,
             gbps=by / t["median_s"] / 1e9, **t)
        del probs, x
        torch.cuda.empty_cache()


def run_clca(clca, args, env=None):
    r = subprocess.run([clca, *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise RuntimeError(f"clca {' '.join(args)}: exit {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def end_to_end(clca, out, batches, compile_batches, compile_models, models, dtypes=("f32", "bf16"),
               attention_paths=(), profile_batches=(), classes=200, clca_alt=None, alt_rounds=2,
               cuda_graph=False, env_variants=()):
    cases = [
        ("evit_clca_kr0.1", Flags("evit", (3, 6, 9), (0.1,), clc=True, num_clr=1, ifa_head=True)),
        ("plain", Flags("vit", (3, 6, 9), (1.0,), clc=False, num_clr=0, ifa_head=False)),
        ("tome_clca_kr0.1", Flags("tome", (3, 6, 9), (0.1,), clc=True, num_clr=1, ifa_head=True)),
    ]
    # In the order asked for (torch.compile's long first call last, say).
    cases = sorted(((name, f) for name, f in cases if name in models),
                   key=lambda c: models.index(c[0]))
    gen = torch.Generator().manual_seed(7)
    bmax = max(batches)
    imgs = torch.randn(bmax, 3, 448, 448, generator=gen)
    for name, f in cases:
        w = os.path.join(out, f"{name}.safetensors")
        run_clca(clca, ["random-weights", *f.cli(), "--num_classes", str(classes), "--seed", "1",
                        "--output", w])
        sd = load_file(w)
        model = TorchClca(sd, f).cuda().eval()
        # Correctness first: f32 logits of both on 4 images.
        b = 4
        inp = os.path.join(out, f"images_b{b}.safetensors")
        save_file({"images": imgs[:b].contiguous()}, inp)
        lo = os.path.join(out, f"{name}_logits.safetensors")
        run_clca(clca, ["forward", "--weights", w, "--input", inp, "--output", lo, *f.cli(),
                        "--device", "cuda", "--dtype", "f32"])
        ours = load_file(lo)["logits"].double()
        with torch.no_grad():
            ref = model(imgs[:b].cuda()).double().cpu()
        err = ((ours - ref).abs().max() / ref.abs().max()).item()
        agree = (ours.argmax(1) == ref.argmax(1)).float().mean().item()
        emit(what="logits_check", model=name, dtype="f32", rel_max_err=err, top1_agree=agree)
        if cuda_graph:
            # The replayed graph against the eager forward: the same kernels in the same order.
            lg = os.path.join(out, f"{name}_logits_graph.safetensors")
            run_clca(clca, ["forward", "--weights", w, "--input", inp, "--output", lg, *f.cli(),
                            "--device", "cuda", "--dtype", "f32", "--cuda-graph"])
            graph = load_file(lg)["logits"].double()
            emit(what="graph_check", model=name, dtype="f32",
                 rel_max_err=((graph - ours).abs().max() / ours.abs().max()).item(),
                 bit_identical=bool(torch.equal(graph, ours)))
        for b in batches:
            inp = os.path.join(out, f"images_b{b}.safetensors")
            if not os.path.exists(inp):
                save_file({"images": imgs[:b].contiguous()}, inp)
            x = imgs[:b].cuda()
            for dt in dtypes:
                runs = 20 if b < 64 else 10
                fwd = ["forward", "--weights", w, "--input", inp, "--output",
                       os.path.join(out, "o.safetensors"), *f.cli(), "--device", "cuda",
                       "--dtype", dt, "--warmup", "3", "--runs", str(runs), "--json"]
                # With --clca-alt, the two builds alternate, `alt_rounds` rounds each: an A/B
                # of two versions on the same card, inputs and minute.
                for rnd in range(alt_rounds if clca_alt else 1):
                    for impl, exe in [("clca", clca)] + ([("clca_alt", clca_alt)] if clca_alt else []):
                        j = json.loads(run_clca(exe, fwd))
                        emit(what="e2e", model=name, impl=impl if rnd == 0 else f"{impl}_r{rnd}",
                             dtype=dt, batch=b, median_s=j["forward_median_s"],
                             min_s=j["forward_min_s"], max_s=j["forward_max_s"], macs=j["macs"],
                             backend=j.get("backend"))
                if cuda_graph:
                    j = json.loads(run_clca(clca, fwd + ["--cuda-graph"]))
                    emit(what="e2e", model=name, impl="clca_graph", dtype=dt, batch=b,
                         median_s=j["forward_median_s"], min_s=j["forward_min_s"],
                         max_s=j["forward_max_s"], macs=j["macs"], backend=j.get("backend"))
                for var in env_variants:
                    # The same build with one switch flipped (CLCA_PRUNE_FIRST=0: Top-K / EViT
                    # in the authors' order; CLCA_BIAS_EPILOGUE=0: biases in their own pass):
                    # an A/B of a change without a second binary.
                    key, val = var.split("=", 1)
                    j = json.loads(run_clca(clca, fwd, env={key: val}))
                    emit(what="e2e", model=name, impl=f"clca_{key.lower()}_{val}", dtype=dt,
                         batch=b, median_s=j["forward_median_s"], min_s=j["forward_min_s"],
                         max_s=j["forward_max_s"], macs=j["macs"], backend=j.get("backend"))
                for path in attention_paths if dt != "f32" else ():
                    # The same forward on another attention path (CLCA_ATTENTION): the GEMM
                    # path (the default before the fused kernel), or the fused kernel with
                    # 128-query tiles, for the side by side of the paths.
                    j = json.loads(run_clca(clca, fwd, env={"CLCA_ATTENTION": path}))
                    emit(what="e2e", model=name, impl=f"clca_{path.replace('-', '_')}_attention",
                         dtype=dt, batch=b, median_s=j["forward_median_s"],
                         min_s=j["forward_min_s"], max_s=j["forward_max_s"], macs=j["macs"],
                         backend=j.get("backend"))
                if b in profile_batches and dt != "f32":
                    prof = fwd[:-5] + ["--warmup", "2", "--runs", "3", "--json", "--profile"]
                    j = json.loads(run_clca(clca, prof))
                    emit(what="profile", model=name, dtype=dt, batch=b,
                         median_s=j["forward_median_s"], profile=j.get("profile"))
                with torch.no_grad():
                    if dt == "f32":
                        fn = lambda: model(x)
                    else:
                        def fn():
                            with torch.autocast("cuda", dtype=torch.bfloat16):
                                return model(x)
                    t = cuda_time(fn, warmup=3, runs=runs)
                emit(what="e2e", model=name, impl="torch_eager", dtype=dt, batch=b, **t)
            if b in compile_batches and name in compile_models:
                # Stamped, so a run cut off mid-compile still tells how far it got.
                print(f"torch.compile {name} B{b}: compiling from {time.strftime('%H:%M:%S')}",
                      flush=True)
                cm = torch.compile(model)
                def fc():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return cm(x)
                t0 = time.time()
                with torch.no_grad():
                    fc()
                    torch.cuda.synchronize()
                    ct = time.time() - t0
                    t = cuda_time(fc, warmup=3, runs=10)
                emit(what="e2e", model=name, impl="torch_compile", dtype="bf16", batch=b,
                     compile_s=ct, **t)
        del model
        torch.cuda.empty_cache()


def table():
    print("\n== summary ==")
    for r in RESULTS:
        if r["what"] == "copy_d2d":
            print(f"copy d2d: {r['gbps']:.0f} GB/s (read+write)")
        elif r["what"] == "torch_prune_chain_b256":
            print(f"torch prune chain B256 {r['dtype']}: {r['median_s']*1e6:.0f} us, "
                  f"{r['gbps']:.0f} GB/s")
        elif r["what"] == "profile" and r.get("profile"):
            pr = r["profile"]
            parts = ", ".join(f"{x['phase']} {x['s']*1e3:.2f} ms ({x['share']*100:.0f}%)"
                              for x in pr["phases"])
            print(f"profile {r['model']} {r['dtype']} B{r['batch']} (synchronized per phase, "
                  f"{pr['total_s']*1e3:.2f} ms): {parts}")
            for blk in pr["blocks"]:
                print(f"  block {blk['block']}: {blk['total_s']*1e3:.2f} ms")
        elif r["what"] == "e2e" and "compile_s" in r:
            print(f"torch.compile {r['model']} B{r['batch']}: first call (compile) "
                  f"{r['compile_s']:.0f} s")
        elif r["what"] == "graph_check":
            print(f"logits {r['model']} f32 clca CUDA graph vs eager: rel max err "
                  f"{r['rel_max_err']:.2e}, bit identical {r['bit_identical']}")
        elif r["what"] == "logits_check":
            print(f"logits {r['model']} f32 clca vs torch: rel max err {r['rel_max_err']:.2e}, "
                  f"top-1 agree {r['top1_agree']:.2f}")
    e2e = {}
    for r in RESULTS:
        if r["what"] == "e2e":
            e2e[(r["model"], r["dtype"], r["batch"], r["impl"])] = r["median_s"]
    for (m, dt, b, impl), s in sorted(e2e.items()):
        base = e2e.get((m, dt, b, "clca"))
        if not base or impl == "clca":
            ratio = ""
        elif impl.startswith("clca"):
            ratio = f"  {base / s:.2f}x the speed of eager clca"
        else:
            ratio = f"  clca speed-up {s / base:.2f}x"
        print(f"e2e {m} {dt} B{b} {impl}: {s*1e3:.2f} ms{ratio}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clca", required=True)
    ap.add_argument("--out", required=True, help="where compare.json goes")
    ap.add_argument("--work", default="/tmp/clca-compare", help="weights and images (large)")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--compile-batches", default="64")
    ap.add_argument("--compile-models", default="evit_clca_kr0.1")
    ap.add_argument("--models", default="evit_clca_kr0.1,plain,tome_clca_kr0.1",
                    help="end-to-end models (EViT + CLCA, plain ViT, ToMe + CLCA at 448 px)")
    ap.add_argument("--skip", default="", help="comma list of: copy,prune,e2e")
    ap.add_argument("--dtypes", default="f32,bf16", help="end-to-end storage types")
    ap.add_argument("--attention-paths", default="fused-wide",
                    help="comma list of CLCA_ATTENTION paths (gemm, fused-wide) clca's 16-bit "
                         "forwards are also timed with; empty: none")
    ap.add_argument("--gemm-attention", action="store_true",
                    help="add gemm to --attention-paths")
    ap.add_argument("--clca-alt", default=None,
                    help="a second clca binary, timed alternately with --clca (impl clca_alt)")
    ap.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                    help="skip clca --cuda-graph (by default also timed, impl clca_graph, and its "
                         "logits checked against the eager forward)")
    ap.add_argument("--profile-batches", default="",
                    help="batches at which clca's 16-bit forward is also run with --profile")
    ap.add_argument("--env-variants", default="",
                    help="comma list of ENV=VALUE switches clca's forwards are also timed with, "
                         "one at a time (impl clca_<env>_<value>), e.g. "
                         "CLCA_PRUNE_FIRST=0,CLCA_BIAS_EPILOGUE=0")
    a = ap.parse_args()
    bad = [v for v in a.env_variants.split(",") if v and "=" not in v]
    if bad:
        ap.error(f"--env-variants: not ENV=VALUE: {bad}")
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    skip = set(a.skip.split(","))
    emit(what="machine", torch=torch.__version__, gpu=torch.cuda.get_device_name(0))
    steps = [("copy", copy_bandwidth), ("prune", prune_point),
             ("e2e", lambda: end_to_end(a.clca, a.work, [int(b) for b in a.batches.split(",")],
                                        [int(b) for b in a.compile_batches.split(",") if b],
                                        a.compile_models.split(","),
                                        a.models.split(","), a.dtypes.split(","),
                                        [p for p in a.attention_paths.split(",") if p]
                                        + (["gemm"] if a.gemm_attention else []),
                                        [int(b) for b in a.profile_batches.split(",") if b],
                                        clca_alt=a.clca_alt, cuda_graph=a.cuda_graph,
                                        env_variants=[v for v in a.env_variants.split(",") if v]))]
    for name, fn in steps:
        if name in skip:
            continue
        try:
            fn()
        except Exception as e:  # keep going: a partial table is worth more than none
            emit(what="error", step=name, error=repr(e)[:2000])
    with open(os.path.join(a.out, "compare.json"), "w") as fh:
        json.dump(RESULTS, fh, indent=1)
    table()


if __name__ == "__main__":
    main()
