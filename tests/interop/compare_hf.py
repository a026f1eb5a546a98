#!/usr/bin/env python3
"""Compare the tensors of two HuggingFace safetensors checkpoints, whatever their sharding.

  compare_hf.py SOURCE OTHER

Reads every *.safetensors file of both directories (safetensors' own reader) and checks that both
hold the same tensor names, and for each name the same dtype, shape and bytes. File names, shard
boundaries and config.json are not compared: LoongForge shards its HF output its own way. Prints one
summary line and exits 0 when every tensor matches, 1 otherwise.
"""
import glob
import os
import sys

import torch
from safetensors import safe_open


def tensors(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                if k in out:
                    raise SystemExit(f"{d}: tensor {k} in two files")
                out[k] = h.get_tensor(k)
    return out


def main(argv):
    if len(argv) != 3:
        print(__doc__)
        return 2
    a, b = tensors(argv[1]), tensors(argv[2])
    problems = []
    if set(a) != set(b):
        problems.append(f"names only in source {sorted(set(a) - set(b))[:5]}, only in other {sorted(set(b) - set(a))[:5]}")
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.dtype != y.dtype:
            problems.append(f"{k}: dtype {x.dtype} vs {y.dtype}")
        elif tuple(x.shape) != tuple(y.shape):
            problems.append(f"{k}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        elif not (x.contiguous().reshape(-1).view(torch.uint8)
                  == y.contiguous().reshape(-1).view(torch.uint8)).all():
            problems.append(f"{k}: bytes differ")
    if problems:
        print(f"HF TENSORS DIFFER ({len(problems)} problems); first ones:")
        for p in problems[:12]:
            print("  " + p)
        return 1
    print(f"HF tensors identical: {len(a)} tensors (names, dtype, shape, bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
