"""The PyTorch peer of clca: the same ViT (timm conventions, SPEC §1) with EViT / Top-K pruning or
ToMe merging (SPEC §4.3), the cross-layer cache (CLC, SPEC §2) and the CLA head (SPEC §3), built
from a safetensors file in the authors' parameter names (what `clca random-weights` writes and
what the authors' checkpoints hold). Written for this harness from the SPEC, not copied from the
authors' code; its job is to be what a PyTorch user would run (eager, autocast, torch.compile)
and to agree with clca's logits.

Only batch-uniform methods are here (plain ViT, Top-K, EViT, ToMe): every image keeps the same
count, so the batch stays one tensor, as in the authors' code. Every shape follows from the input
size, so `torch.onnx.export` traces the whole forward, reductions included (ToMe's matching is
argsort/sort/gather/scatter_add: TopK, GatherElements and ScatterElements(add) in ONNX).

`python benches/compare/clca_torch.py [GOLDEN_DIR]` checks the peer's logits against the authors'
golden cases it covers (plain ViT, Top-K, EViT, ToMe; default $CLCA_GOLDEN_DIR, else
../shared/golden beside the repository); exit status 1 above 1e-5 of max |logit|.
"""
import math

import torch
import torch.nn.functional as F


class Flags:
    """The train.py flags clca's CLI takes (same names, same store_false defaults)."""

    def __init__(self, method="evit", reduction_loc=(3, 6, 9), keep_rate=(0.1,), clc=True,
                 num_clr=1, ifa_head=True, clc_include_gap=True, clc_recover_at_last=True,
                 clc_pool_cls=False, clc_pool_clr=False, ifa_dws_conv_groups=2):
        self.method = method  # "vit" | "topk" | "evit" | "tome"
        self.reduction_loc = list(reduction_loc)
        self.keep_rate = list(keep_rate)
        self.clc = clc
        self.num_clr = num_clr if clc else 0
        self.ifa_head = ifa_head
        self.clc_include_gap = clc_include_gap
        self.clc_recover_at_last = clc_recover_at_last
        self.clc_pool_cls = clc_pool_cls
        self.clc_pool_clr = clc_pool_clr
        self.ifa_dws_conv_groups = ifa_dws_conv_groups

    def cli(self, backbone="vit_base_patch16_clip_224.laion2b"):
        """The same model as `clca` flags."""
        model = backbone if self.method == "vit" else f"{self.method}_{backbone}"
        a = ["--model", model, "--reduction_loc", *map(str, self.reduction_loc),
             "--keep_rate", *map(str, self.keep_rate)]
        if self.clc:
            a += ["--clc", "--num_clr", str(self.num_clr)]
            if not self.clc_include_gap:
                a.append("--clc_include_gap")
            if not self.clc_recover_at_last:
                a.append("--clc_recover_at_last")
            if self.clc_pool_cls:
                a.append("--clc_pool_cls")
            if self.clc_pool_clr:
                a.append("--clc_pool_clr")
        if self.ifa_head:
            a += ["--ifa_head", "--ifa_dws_conv_groups", str(self.ifa_dws_conv_groups)]
        return a


class TorchClca(torch.nn.Module):
    def __init__(self, sd, flags, num_heads=12, patch=16):
        super().__init__()
        self.f = flags
        p = lambda t: torch.nn.Parameter(t.float().contiguous(), requires_grad=False)
        self.params = torch.nn.ParameterDict({k.replace(".", "__"): p(v) for k, v in sd.items()
                                              if v.dtype.is_floating_point})
        self.depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        self.dim = sd["cls_token"].shape[-1]
        self.heads = num_heads
        self.patch = patch
        self.clip = "norm_pre.weight" in sd
        self.eps = 1e-5 if self.clip else 1e-6
        # DeiT-3 (LayerScale) adds positions to the patches only (SPEC §1.2).
        self.no_embed_class = "blocks.0.ls1.gamma" in sd
        if flags.method == "vit":
            # models/vit.py hard-codes the CLC/CLA layers (SPEC §2.3).
            self.locs = [3, 6, 9]
        else:
            self.locs = list(flags.reduction_loc)
        kr = flags.keep_rate
        self.kr = {l: (kr[j] if len(kr) > 1 else kr[0]) for j, l in enumerate(self.locs)} \
            if flags.method in ("topk", "evit") else {}
        # ToMe (SPEC §4.3): target counts T_j = int(P·kr^(j+1)) (a keep_rate list holds them
        # directly), r_j = T_{j-1} − T_j with T_{-1} = P, capped at (N−1)//2 when merging.
        self.tome_r = {}
        if flags.method == "tome":
            C = sd["clr"].shape[1] if "clr" in sd else 0
            P = sd["pos_embed"].shape[1] - (0 if self.no_embed_class else 1 + C)
            T = [int(P * kr[0] ** (j + 1)) if len(kr) == 1 else int(kr[j])
                 for j in range(len(self.locs))]
            self.tome_r = {l: ([P] + T)[j] - T[j] for j, l in enumerate(self.locs)}

    def w(self, name):
        return self.params[name.replace(".", "__")]

    def has(self, name):
        return name.replace(".", "__") in self.params

    def ln(self, x, name):
        return F.layer_norm(x, (self.dim,), self.w(name + ".weight"), self.w(name + ".bias"),
                            self.eps)

    def block(self, x, i, size=None):
        """Block i; `size` [B, N, 1] is ToMe's token sizes (None before its first merge).
        Returns (x, size)."""
        B, N, D = x.shape
        H, hd = self.heads, D // self.heads
        pre = f"blocks.{i}."
        h = self.ln(x, pre + "norm1")
        qb = self.w(pre + "attn.qkv.bias") if self.has(pre + "attn.qkv.bias") else None
        qkv = F.linear(h, self.w(pre + "attn.qkv.weight"), qb)
        q, k, v = qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
        reduce = i in self.kr and self.kr[i] < 1
        if reduce:
            # The probabilities are needed for the scores: the manual path, as the authors.
            a = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
            o = a @ v
            cls_attn = a[:, :, 0, 1:].mean(1)  # [B, N-1]
        elif size is not None:
            # ToMe's proportional attention: log(size of key j) added to the scaled logits.
            # (The mask in q's dtype: under autocast q is bf16/f16 and SDPA wants them alike.)
            bias = size.log()[:, None, None, :, 0].to(q.dtype)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(B, N, D)
        o = F.linear(o, self.w(pre + "attn.proj.weight"), self.w(pre + "attn.proj.bias"))
        if self.has(pre + "ls1.gamma"):
            o = o * self.w(pre + "ls1.gamma")
        x = x + o
        if reduce:
            x = self.prune(x, cls_attn, math.ceil(self.kr[i] * (N - 1)))
        r = min(self.tome_r.get(i, 0), (N - 1) // 2)
        if r > 0:
            # The metric: the keys (before scaling) averaged over heads.
            x, size = tome_merge(x, size, k.mean(1), r)
        h = self.ln(x, pre + "norm2")
        h = F.gelu(F.linear(h, self.w(pre + "mlp.fc1.weight"), self.w(pre + "mlp.fc1.bias")))
        h = F.linear(h, self.w(pre + "mlp.fc2.weight"), self.w(pre + "mlp.fc2.bias"))
        if self.has(pre + "ls2.gamma"):
            h = h * self.w(pre + "ls2.gamma")
        return x + h, size

    def prune(self, x, cls_attn, k):
        B, N, D = x.shape
        if k >= N - 1:
            return x
        rest = x[:, 1:]
        _, idx = torch.topk(cls_attn, k, dim=1, largest=True, sorted=True)
        kept = torch.gather(rest, 1, idx.unsqueeze(-1).expand(-1, -1, D))
        if self.f.method == "topk":
            return torch.cat([x[:, :1], kept], 1)
        compl = complement(idx, N - 1)
        dropped = torch.gather(rest, 1, compl.unsqueeze(-1).expand(-1, -1, D))
        w = torch.gather(cls_attn, 1, compl)
        fused = (dropped * w.unsqueeze(-1)).sum(1, keepdim=True)
        return torch.cat([x[:, :1], kept, fused], 1)

    def forward(self, img):
        f, B = self.f, img.shape[0]
        pb = self.w("patch_embed.proj.bias") if self.has("patch_embed.proj.bias") else None
        x = F.conv2d(img, self.w("patch_embed.proj.weight"), pb, stride=self.patch)
        x = x.flatten(2).transpose(1, 2)
        if self.no_embed_class:
            x = x + self.w("pos_embed")
        parts = [self.w("cls_token").expand(B, -1, -1), x]
        C = f.num_clr
        if C > 0:
            parts.append(self.w("clr").expand(B, -1, -1))
        x = torch.cat(parts, 1)
        if not self.no_embed_class:
            x = x + self.w("pos_embed")
        if self.clip:
            x = self.ln(x, "norm_pre")
        L = self.depth
        rec = set(self.locs) | ({L - 2} if f.clc_recover_at_last else set()) if f.clc else set()
        last_rec = max(rec) if rec else -1
        pool_end = x.shape[1] - C if (C > 0 and not f.clc_pool_clr) else x.shape[1]
        start = 0 if f.clc_pool_cls else 1
        cache, taps, size = [], [], None
        for i in range(L):
            x, size = self.block(x, i, size)
            if i in rec:
                pool_end = x.shape[1]
                x = torch.cat([x] + cache, 1)
                if size is not None:
                    # ToMe: recovered tokens have size 1 (SPEC §2.3).
                    size = F.pad(size, (0, 0, 0, x.shape[1] - pool_end), value=1.0)
                cache = []
            if f.clc and i < last_rec:
                if f.clc_include_gap:
                    cache.append(x[:, start:pool_end].mean(1, keepdim=True))
                if C > 0:
                    cache.append(x[:, -C:])
            if i in self.locs or i == L - 1:
                taps.append(x[:, 0])
        if f.ifa_head:
            return self.cla(torch.stack(taps, -1), len(taps))
        x = self.ln(x, "norm")
        return F.linear(x[:, 0], self.w("head.weight"), self.w("head.bias"))

    def cla(self, z, f):
        w = lambda n: self.w("ifa_head.0." + n)
        z = F.batch_norm(z, w("0.running_mean"), w("0.running_var"), w("0.weight"), w("0.bias"),
                         False, 0.0, 1e-5)
        u = F.conv1d(z, w("1.weight"), w("1.bias"), stride=f, groups=self.dim)
        u = F.batch_norm(u, w("2.running_mean"), w("2.running_var"), w("2.weight"), w("2.bias"),
                         False, 0.0, 1e-5)
        u = F.gelu(u)
        return F.conv1d(u, w("4.weight"), w("4.bias")).squeeze(-1)


def tome_merge(x, size, metric, r):
    """ToMe's bipartite soft matching and size-weighted merge (SPEC §4.3), batched: removes r
    tokens of x [B, N, D]; size [B, N, 1] or None (all ones), metric [B, N, hd]. Returns
    (x [B, N−r, D], size [B, N−r, 1]). The sequence becomes [unmerged even-position tokens
    (ascending, cls first), every odd-position token (each the size-weighted mean of itself and
    its sources)]. x·size and size travel together as D+1 channels through one gather/scatter."""
    B, N, D = x.shape
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)  # [B, na, nb]: even vs odd positions
    # cls (a[0]) never merges: its row is -inf (a cat, not an in-place write, for the export).
    scores = torch.cat([torch.full_like(scores[:, :1], -math.inf), scores[:, 1:]], 1)
    node_max, node_idx = scores.max(dim=-1)
    edge = node_max.argsort(dim=-1, descending=True)
    src_idx = edge[:, :r]  # the r best-matched a tokens merge
    unm_idx = edge[:, r:].sort(dim=-1).values  # the rest stay, ascending (cls first)
    dst_idx = node_idx.gather(1, src_idx)
    if size is None:
        size = torch.ones_like(x[..., :1])
    xs = torch.cat([x * size, size], -1)
    a, b = xs[:, ::2], xs[:, 1::2]
    na, C = a.shape[1], D + 1
    unm = a.gather(1, unm_idx[..., None].expand(B, na - r, C))
    src = a.gather(1, src_idx[..., None].expand(B, r, C))
    b = b.scatter_add(1, dst_idx[..., None].expand(B, r, C), src)
    out = torch.cat([unm, b], 1)
    size = out[..., D:]
    return out[..., :D] / size, size


def complement(idx, n):
    """The indices of [0, n) not in idx, ascending (per row)."""
    a = torch.arange(n, device=idx.device).expand(idx.shape[0], n)
    return a.scatter(1, idx, 0).sort(1).values[:, idx.shape[1]:]


def prune_chain(probs, x, k, fused=True):
    """The pruning layer as a PyTorch user writes it: mean over heads of the cls attention,
    topk, gather, complement, weighted sum (the issue's reference chain)."""
    cls_attn = probs[:, :, 0, 1:].mean(1)
    B, N, D = x.shape
    rest = x[:, 1:]
    _, idx = torch.topk(cls_attn, k, dim=1, largest=True, sorted=True)
    kept = torch.gather(rest, 1, idx.unsqueeze(-1).expand(-1, -1, D))
    if not fused:
        return torch.cat([x[:, :1], kept], 1)
    compl = complement(idx, N - 1)
    dropped = torch.gather(rest, 1, compl.unsqueeze(-1).expand(-1, -1, D))
    w = torch.gather(cls_attn, 1, compl).to(x.dtype)
    return torch.cat([x[:, :1], kept, (dropped * w.unsqueeze(-1)).sum(1, keepdim=True)], 1)


# The golden cases' model classes this peer covers (../shared/golden/README.md).
GOLDEN_METHODS = {"models.vit.ViT": "vit", "models.topk.TopK": "topk", "models.evit.EViT": "evit",
                  "models.tome.ToMeViT": "tome"}


def check_golden(root):
    """Runs every golden case of a covered method; prints the max |logit error| / max |logit|
    against the authors' output and returns the worst."""
    import json
    import os

    from safetensors.torch import load_file
    worst = 0.0
    for case in sorted(os.listdir(root)):
        cfg_path = os.path.join(root, case, "config.json")
        if not os.path.exists(cfg_path):
            continue
        cfg = json.load(open(cfg_path))
        method = GOLDEN_METHODS.get(cfg["model"]["model_class"])
        if method is None:
            continue
        a = cfg["args"]
        f = Flags(method, a["reduction_loc"], a["keep_rate"] or (1.0,), clc=a["clc"],
                  num_clr=a["num_clr"], ifa_head=a["ifa_head"],
                  clc_include_gap=a["clc_include_gap"],
                  clc_recover_at_last=a["clc_recover_at_last"],
                  clc_pool_cls=a["clc_pool_cls"], clc_pool_clr=a["clc_pool_clr"],
                  ifa_dws_conv_groups=a["ifa_dws_conv_groups"])
        m = cfg["model"]
        model = TorchClca(load_file(os.path.join(root, case, "weights.safetensors")), f,
                          num_heads=m["num_heads"], patch=m["patch_size"][0]).eval()
        img = load_file(os.path.join(root, case, "input.safetensors"))["images"]
        ref = load_file(os.path.join(root, case, "output.safetensors"))["logits"].double()
        with torch.no_grad():
            got = model(img).double()
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        worst = max(worst, err)
        print(f"{case:<24} {method:<5} max|err|/max|ref| = {err:.2e}  "
              f"top-1 same: {bool((got.argmax(1) == ref.argmax(1)).all())}")
    return worst


if __name__ == "__main__":
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "CLCA_GOLDEN_DIR", os.path.join(here, "..", "..", "..", "shared", "golden"))
    w = check_golden(root)
    print(f"worst {w:.2e}")
    sys.exit(0 if w < 1e-5 else 1)
