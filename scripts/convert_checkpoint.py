#!/usr/bin/env python3
"""Convert a checkpoint saved by the authors' train.py (arkel23/CLCA) to safetensors for clca.

    python3 scripts/convert_checkpoint.py CHECKPOINT.pth OUT.safetensors

Needs torch (and safetensors) in the Python environment: `pip install torch safetensors`.
train.py saves a dict with 'model' (the state dict), optimizer, lr_scheduler, epoch, scaler and
'args' (the argparse namespace). Only 'model' is converted, with the authors' parameter names
unchanged, every tensor made contiguous; BatchNorm `num_batches_tracked` counters are kept (clca
ignores them). The train.py flags that shape the model are stored as JSON in the file's
metadata under "clca.args" so `clca classify` / `clca info` can rebuild the configuration.
"""
import argparse
import json
import sys

# The flags that change the architecture or the forward (SPEC §1-§4).
MODEL_FLAGS = [
    "model", "input_size", "reduction_loc", "keep_rate", "clc", "num_clr", "ifa_head",
    "ifa_dws_conv_groups", "clc_include_gap", "clc_recover_at_last", "clc_pool_cls",
    "clc_pool_clr", "num_classes",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("output")
    a = ap.parse_args()
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as e:
        print(f"error: {e}; install with `pip install torch safetensors`", file=sys.stderr)
        return 2
    ck = torch.load(a.checkpoint, map_location="cpu")
    sd = ck.get("model", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict):
        print("error: no state dict found (expected checkpoint['model'])", file=sys.stderr)
        return 2
    tensors = {k: v.detach().contiguous() for k, v in sd.items() if hasattr(v, "detach")}
    meta = {}
    args = ck.get("args") if isinstance(ck, dict) else None
    if args is not None:
        d = vars(args) if hasattr(args, "__dict__") else dict(args)
        meta["clca.args"] = json.dumps({k: d[k] for k in MODEL_FLAGS if k in d})
    save_file(tensors, a.output, metadata=meta or None)
    print(f"wrote {len(tensors)} tensors to {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
