#!/usr/bin/env python3
"""Compare two Megatron-Core legacy checkpoints (LoongForge's and ckbridge's output for one layout).

  compare_mcore.py A B        A, B: checkpoint roots or iteration directories (release/)

Checks, independently of either converter: the same set of rank directories; in each rank file the
same model state dicts (`model`, or `model0`, `model1`, ... with virtual stages) with the same set of
keys, and for each key the same value type, and for tensors the same dtype, shape and bytes. Key
order is reported, not required: torch's load_state_dict matches by key, and LoongForge orders keys
differently from ckbridge (on the last stage: final norm and output layer before the MTP block, the
embedding copy after it; inside a layer: layer_norm_weight after weight, expert fc1/fc2 interleaved).
Top-level entries other than the model state dicts (`args`, `checkpoint_version`, `iteration`) are
reported, not required to match: each converter records its own option Namespace under `args`.
Prints one summary line and exits 0 when every model state matches, 1 otherwise.

  compare_mcore.py --args A   print the layout-related `args` entries of A's first rank file
"""
import os
import sys

import torch

LAYOUT_ARGS = (
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_parallel_size",
    "expert_model_parallel_size", "expert_tensor_parallel_size", "num_virtual_stages_per_pipeline_rank",
    "virtual_pipeline_model_parallel_size", "num_layers_per_virtual_pipeline_stage", "custom_pipeline_layers",
    "pipeline_model_parallel_layout", "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers",
    "moe_grouped_gemm", "num_layers", "num_experts", "mtp_num_layers", "vocab_size", "padded_vocab_size",
)


def iteration_dir(root):
    if os.path.isdir(os.path.join(root, "release")):
        return os.path.join(root, "release")
    return root


def rank_files(root):
    d = iteration_dir(root)
    out = {}
    for name in sorted(os.listdir(d)):
        f = os.path.join(d, name, "model_optim_rng.pt")
        if name.startswith("mp_rank_") and os.path.isfile(f):
            out[name] = f
    return out


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def same_value(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if type(a) is not type(b):
            return f"type {type(a).__name__} vs {type(b).__name__}"
        if a.dtype != b.dtype:
            return f"dtype {a.dtype} vs {b.dtype}"
        if tuple(a.shape) != tuple(b.shape):
            return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        ab = a.contiguous().reshape(-1).view(torch.uint8)
        bb = b.contiguous().reshape(-1).view(torch.uint8)
        if not torch.equal(ab, bb):
            n = int((ab != bb).sum())
            return f"{n} bytes differ"
        return None
    if type(a) is not type(b):
        return f"type {type(a).__name__} vs {type(b).__name__}"
    if a is None:
        return None
    try:
        return None if a == b else f"value {a!r} vs {b!r}"
    except Exception as e:  # objects without equality
        return f"not comparable ({e})"


def main(argv):
    if len(argv) == 3 and argv[1] == "--args":
        files = rank_files(argv[2])
        if not files:
            print(f"no mp_rank_* rank files under {iteration_dir(argv[2])}")
            return 1
        name, path = next(iter(files.items()))
        sd = load(path)
        args = vars(sd["args"]) if not isinstance(sd.get("args"), dict) else sd["args"]
        shown = {k: args[k] for k in LAYOUT_ARGS if k in args}
        print(f"{name}: top-level {sorted(sd.keys())}; args ({type(sd.get('args')).__name__}, "
              f"{len(args)} entries): {shown}")
        return 0
    if len(argv) != 3:
        print(__doc__)
        return 2
    fa, fb = rank_files(argv[1]), rank_files(argv[2])
    problems = []
    if set(fa) != set(fb):
        problems.append(f"rank directories differ: only in A {sorted(set(fa) - set(fb))}, "
                        f"only in B {sorted(set(fb) - set(fa))}")
    tensors = 0
    reordered = 0  # state dicts with the same keys in another order (torch's load_state_dict is by key)
    other_diffs = set()
    for name in sorted(set(fa) & set(fb)):
        a, b = load(fa[name]), load(fb[name])
        models_a = [k for k in a if k == "model" or (k.startswith("model") and k[5:].isdigit())]
        models_b = [k for k in b if k == "model" or (k.startswith("model") and k[5:].isdigit())]
        if models_a != models_b:
            problems.append(f"{name}: model entries {models_a} vs {models_b}")
            continue
        for k in sorted(set(a) | set(b)):
            if k in models_a:
                continue
            if k not in a or k not in b:
                other_diffs.add(f"{k} only in {'A' if k in a else 'B'}")
            elif k != "args" and same_value(a[k], b[k]):
                other_diffs.add(f"{k}: {same_value(a[k], b[k])}")
            elif k == "args":
                other_diffs.add("args (each converter's own Namespace)")
        for m in models_a:
            ka, kb = list(a[m].keys()), list(b[m].keys())
            if set(ka) != set(kb):
                sa, sb = set(ka), set(kb)
                problems.append(f"{name}/{m}: keys only in A {sorted(sa - sb)[:5]}, only in B {sorted(sb - sa)[:5]}")
                continue
            if ka != kb:
                reordered += 1
            for key in ka:
                d = same_value(a[m][key], b[m][key])
                if isinstance(a[m][key], torch.Tensor):
                    tensors += 1
                if d:
                    problems.append(f"{name}/{m}/{key}: {d}")
    if problems:
        print(f"MODEL STATES DIFFER ({len(problems)} problems); first ones:")
        for p in problems[:12]:
            print("  " + p)
        return 1
    print(f"model states identical: {len(fa)} rank files, {tensors} tensors (keys, dtype, shape, bytes); "
          f"key order differs in {reordered} state dicts; "
          f"other top-level entries differing: {sorted(other_diffs) if other_diffs else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
