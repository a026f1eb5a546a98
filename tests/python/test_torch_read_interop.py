"""Cross-check of ckbridge's torch.save / Megatron readers against torch itself.

torch (the venv's) writes files with torch.save; the C++ tool tests/tools/tr_dump reads them with
ckbridge and prints JSON; this script compares that with what torch.load returns, value by value
and byte by byte. TE Float8BlockwiseQTensor pickles are produced by the real pickler from stand-in
classes registered under TE's module names, in each TE version's form (TE itself is not needed).
Bad inputs must make tr_dump fail with a ckbridge::Error that names the file (and offset).
Env: CKB_BUILD_DIR (tr_dump at tests/tools/tr_dump). Prints 'N passed, M failed'.
"""
import argparse
import collections
import copyreg
import enum
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import types
import zipfile

import torch

BUILD = os.environ.get("CKB_BUILD_DIR", "build")
TOOL = os.path.join(BUILD, "tests", "tools", "tr_dump")
results = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    if cond:
        results["passed"] += 1
    else:
        results["failed"] += 1
        print(f"FAIL {name}: {detail}"[:2000])


def run_tool(mode, path):
    p = subprocess.run([TOOL, mode, path], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def dump(mode, path):
    rc, out, err = run_tool(mode, path)
    if rc != 0:
        raise RuntimeError(f"tr_dump {mode} {path} failed: {err}")
    return json.loads(out)


# ---- the JSON form tr_dump prints, computed from torch.load's result
def tensor_hex(t):
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return ""
    return t.view(torch.uint8).numpy().tobytes().hex() if t.dtype != torch.uint8 else t.numpy().tobytes().hex()


def J(x):
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return x if -(2**63) <= x < 2**63 else {"__bigint__": str(x)}
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, bytes):
        return {"__bytes__": x.hex()}
    if isinstance(x, torch.Tensor):
        return {"__tensor__": {"dtype": str(x.dtype).replace("torch.", ""), "shape": list(x.shape),
                               "stride": list(x.stride()), "offset": x.storage_offset(), "hex": tensor_hex(x)}}
    if isinstance(x, torch.dtype):
        return {"__global__": str(x)}
    if isinstance(x, argparse.Namespace):
        return {"__namespace__": [[k, J(v)] for k, v in vars(x).items()], "__class__": "argparse.Namespace"}
    if isinstance(x, dict):
        cls = "collections.OrderedDict" if isinstance(x, collections.OrderedDict) else ""
        return {"__dict__": [[J(k), J(v)] for k, v in x.items()], "__class__": cls}
    if isinstance(x, list):
        return [J(v) for v in x]
    if isinstance(x, tuple):
        return {"__tuple__": [J(v) for v in x]}
    raise TypeError(type(x))


def strip_keys(j):
    """Storage keys are ckbridge-only detail; compared separately."""
    if isinstance(j, dict):
        if "__tensor__" in j:
            return {"__tensor__": {k: v for k, v in j["__tensor__"].items() if k != "key"}}
        return {k: strip_keys(v) for k, v in j.items()}
    if isinstance(j, list):
        return [strip_keys(v) for v in j]
    return j


def first_diff(a, b, path="$"):
    if type(a) != type(b):
        return f"{path}: {str(a)[:200]} != {str(b)[:200]}"
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            d = first_diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: len {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {str(a)[:200]} != {str(b)[:200]}"


def roundtrip(name, obj, tmp):
    path = os.path.join(tmp, name + ".pt")
    torch.save(obj, path)
    want = J(torch.load(path))
    try:
        got = dump("file", path)
    except Exception as e:  # noqa: BLE001
        check(name, False, str(e))
        return None
    d = first_diff(strip_keys(got), want)
    check(name, d is None, d)
    return got


def tensor_keys(j, out):
    if isinstance(j, dict):
        if "__tensor__" in j:
            out.append(j["__tensor__"]["key"])
        for v in j.values():
            tensor_keys(v, out)
    elif isinstance(j, list):
        for v in j:
            tensor_keys(v, out)
    return out


# ----------------------------------------------------------------------- value cases
def case_values(tmp):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 10, generator=g)
    obj = {
        "bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(3, 4, generator=g).to(torch.float16),
        "fp32": base,
        "fp64": torch.randn(4, generator=g, dtype=torch.float64),
        "i64": torch.tensor([0, -1, 2**62, -(2**63)], dtype=torch.int64),
        "i32": torch.tensor([7, -7], dtype=torch.int32),
        "i16": torch.tensor([300, -300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "view_offset": base[2:5, 3:9],          # storage offset, non-contiguous rows
        "transposed": base.t(),
        "strided": base[::2, ::3],
        "row": base[4],
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "empty_view": base[3:3],
        "nested": {"a": [1, 2.5, None, True, "x"], "b": (1, (2, (3,))), "c": {"d": {"e": torch.ones(2, dtype=torch.bfloat16)}}},
        "od": collections.OrderedDict([("z", 1), ("a", 2)]),
        "ns": argparse.Namespace(num_layers=4, hidden_size=64, params_dtype=torch.bfloat16, name="gpt", lst=[1, 2], none=None),
        "ints": [0, 255, 256, 65535, 65536, -1, 2**31, -(2**31) - 1, 2**40, 2**63 - 1, -(2**63), 2**64, -(2**100), 10**30],
        "floats": [0.0, -0.0, 1.5, 1e-300, float("inf"), float("-inf"), float("nan")],
        "unicode": "héllo ✓ 𝄞",
        "bytes": bytes(range(256)),
        "size": torch.Size([3, 4]),
    }
    got = roundtrip("values", obj, tmp)
    if got:
        keys = dict((k, tensor_keys(v, [])) for k, v in got["__dict__"])
        shared = {keys[k][0] for k in ("fp32", "view_offset", "transposed", "strided", "row", "empty_view")}
        check("shared storage one key", len(shared) == 1, str(keys))
        check("distinct storages distinct keys", keys["bf16"][0] != keys["fp32"][0], str(keys))


def case_state_dict(tmp):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False)).to(torch.bfloat16)
    roundtrip("state_dict", m.state_dict(), tmp)            # OrderedDict + BUILD(_metadata)
    roundtrip("parameter", {"p": torch.nn.Parameter(torch.ones(3, 2))}, tmp)
    roundtrip("list_top", [torch.ones(2), 3, "x"], tmp)
    big = {f"layer.{i}.weight": torch.full((3,), float(i)) for i in range(2500)}   # >1000 items: batched SETITEMS
    roundtrip("many_items", big, tmp)


def case_rng_and_optimizer(tmp):
    # What Megatron adds beside the model: python/numpy/torch RNG states, optimizer state with int keys.
    import random
    import numpy as np
    random.seed(3)
    np.random.seed(3)
    exp_avg = torch.randn(4, 3)
    obj = {"rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                          "torch_rng_state": torch.get_rng_state(), "rng_tracker_states": {"model-parallel-rng": torch.get_rng_state()}}],
           "optimizer": {"optimizer": {"state": {0: {"exp_avg": exp_avg, "step": 3}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}},
           "opt_param_scheduler": {"max_lr": 3e-4, "num_steps": 10}}
    path = os.path.join(tmp, "rng.pt")
    torch.save(obj, path)
    try:
        got = dump("file", path)
    except Exception as e:  # noqa: BLE001
        check("rng/optimizer file", False, str(e))
        return
    top = dict((k, v) for k, v in got["__dict__"])
    rng = dict((k, v) for k, v in top["rng_state"][0]["__dict__"])
    py_state = random.getstate()
    check("python random state", rng["random_rng_state"]["__tuple__"][0] == py_state[0]
          and rng["random_rng_state"]["__tuple__"][1]["__tuple__"] == list(py_state[1]), str(rng["random_rng_state"])[:300])
    np_state = rng["np_rng_state"]
    check("numpy state stays an opaque call tree", "__tuple__" in np_state and np_state["__tuple__"][0] == "MT19937", str(np_state)[:300])
    check("torch rng tensor", strip_keys(rng["torch_rng_state"]) == J(torch.get_rng_state()), "")
    opt = dict((k, v) for k, v in top["optimizer"]["__dict__"])
    state = dict((k, v) for k, v in opt["optimizer"]["__dict__"])["state"]["__dict__"]
    check("optimizer int keys", state[0][0] == 0 and strip_keys(dict(state[0][1]["__dict__"])["exp_avg"]) == J(exp_avg), str(state)[:300])


def case_big_file(tmp):
    # ~320 MB of storage: zero-copy views over a large mapping; CRCs of every record checked.
    n = 80 * 1024 * 1024
    x = torch.arange(n, dtype=torch.int32)
    path = os.path.join(tmp, "big.pt")
    torch.save({"x": x, "tail": x[-5:], "small": torch.ones(3, dtype=torch.bfloat16)}, path)
    z = dump("zip", path)
    sizes = {r["name"].split("/", 1)[1]: r["size"] for r in z["records"]}
    check("big record size", sizes.get("data/0") == 4 * n, str(sizes))
    check("big aligned", all(r["data_offset"] % 64 == 0 for r in z["records"]), str(z["records"][:3]))
    with zipfile.ZipFile(path) as zf:
        ref = {i.filename: (i.CRC, i.file_size) for i in zf.infolist()}
    check("big crc/size match zipfile", all(ref[r["name"]] == (r["crc"], r["size"]) for r in z["records"]), "")
    # Elements through the view: compare only the small tensors (hex of 320 MB is too much)
    path2 = os.path.join(tmp, "big2.pt")
    torch.save({"tail": x[-5:].clone(), "mid": x[n // 2:n // 2 + 3]}, path2)
    got = dump("file", path2)
    check("big view values", strip_keys(got) == J(torch.load(path2)), "")


# ----------------------------------------------------------------------- TE stand-ins
def install_te_standins(version):
    """Registers classes under TE's module names whose pickles take TE `version`'s form."""
    for name in list(sys.modules):
        if name.startswith("transformer_engine"):
            del sys.modules[name]
    bw_name = "transformer_engine.pytorch.tensor.float8_blockwise_tensor"
    mods = {}
    for name in ("transformer_engine", "transformer_engine.pytorch", "transformer_engine.pytorch.tensor", bw_name,
                 "transformer_engine_torch", "transformer_engine.pytorch.constants"):
        mods[name] = types.ModuleType(name)
        sys.modules[name] = mods[name]
    tex = mods["transformer_engine_torch"]
    bw = mods[bw_name]

    if version == "2.17":
        DType = enum.IntEnum("DType", {"kByte": 0, "kFloat32": 4, "kBFloat16": 6, "kFloat8E4M3": 7, "kFloat8E5M2": 8},
                             module="transformer_engine.pytorch.constants")
        mods["transformer_engine.pytorch.constants"].DType = DType
        fp8 = DType.kFloat8E4M3
    else:
        class DType:  # pybind enum stand-in
            def __init__(self, v):
                self.v = v

            def __reduce_ex__(self, proto):
                if version == "2.16":
                    return (DType, (self.v,))
                return (copyreg.__newobj__, (DType,), self.v)  # NEWOBJ + BUILD int, pybind11's pickling

        DType.__module__ = "transformer_engine_torch"
        DType.__qualname__ = "DType"
        tex.DType = DType
        fp8 = DType(6 if version == "2.3" else 7)

    class Fmt:
        def __reduce_ex__(self, proto):
            return (copyreg.__newobj__, (Fmt,), 0)

    Fmt.__module__ = "transformer_engine_torch"
    Fmt.__qualname__ = Fmt.__name__ = "Float8BlockScaleTensorFormat"
    tex.Float8BlockScaleTensorFormat = Fmt

    class Float8BlockQuantizer:
        pass

    Float8BlockQuantizer.__module__ = bw_name
    Float8BlockQuantizer.__qualname__ = "Float8BlockQuantizer"
    bw.Float8BlockQuantizer = Float8BlockQuantizer

    def make_quantizer(pow2, eps):
        q = Float8BlockQuantizer()
        if version in ("2.3", "2.4") or version.startswith("2.9"):
            keys = ["rowwise_usage", "columnwise_usage", "internal", "dtype", "block_len", "force_pow_2_scales",
                    "amax_epsilon", "block_scaling_dim"] + ([] if version in ("2.3", "2.4") else ["all_gather_usage"])
        else:
            keys = ["rowwise_usage", "columnwise_usage", "internal", "optimize_for_gemm", "dtype", "block_len",
                    "force_pow_2_scales", "amax_epsilon", "block_scaling_dim"]
        vals = {"rowwise_usage": True, "columnwise_usage": False, "internal": False, "dtype": fp8, "block_len": 128,
                "force_pow_2_scales": pow2, "amax_epsilon": eps, "block_scaling_dim": 2, "all_gather_usage": [False],
                "optimize_for_gemm": [False]}
        for k in keys:
            setattr(q, k, vals[k])
        return q

    class Float8BlockwiseQTensor:
        def __init__(self, shape, data, scale_inv, quantizer):
            self.args = (torch.Size(shape), data, scale_inv, None, None, fp8, torch.bfloat16, quantizer, True)

        @classmethod
        def _make_in_reduce_ex(cls, *a):
            raise AssertionError("never called")

        def __reduce_ex__(self, proto):
            a = self.args
            if version.startswith("2.9"):
                a = a + (Fmt(),)
            elif version not in ("2.3", "2.4"):
                a = a + (None,)
            if version in ("2.16", "2.17"):
                return (bw._make_float8_blockwise_tensor_in_reduce_ex, a)
            return (Float8BlockwiseQTensor._make_in_reduce_ex, a)  # bound classmethod: getattr(cls, name)

    Float8BlockwiseQTensor.__module__ = bw_name
    Float8BlockwiseQTensor.__qualname__ = "Float8BlockwiseQTensor"
    bw.Float8BlockwiseQTensor = Float8BlockwiseQTensor

    def _make_float8_blockwise_tensor_in_reduce_ex(*a):
        raise AssertionError("never called")

    _make_float8_blockwise_tensor_in_reduce_ex.__module__ = bw_name
    _make_float8_blockwise_tensor_in_reduce_ex.__qualname__ = "_make_float8_blockwise_tensor_in_reduce_ex"
    bw._make_float8_blockwise_tensor_in_reduce_ex = _make_float8_blockwise_tensor_in_reduce_ex
    return Float8BlockwiseQTensor, make_quantizer


def fp8_tensor(cls, make_q, m, n, pow2, eps, seed):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (m, n), dtype=torch.uint8, generator=g)
    sr, sc = (m + 127) // 128, ((n + 127) // 128 + 3) // 4 * 4
    scale = torch.rand(sr, sc, generator=g)
    return cls((m, n), data, scale, make_q(pow2, eps)), data, scale


def save_rank(path, model, args, iteration=0, vpp=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sd = {"args": args, "checkpoint_version": 3.0, "iteration": iteration}
    if vpp:
        for i, m in enumerate(model):
            sd[f"model{i}"] = m
    else:
        sd["model"] = model
    torch.save(sd, path)


def megatron_args(tp, pp, ep):
    return argparse.Namespace(num_layers=2, hidden_size=256, num_attention_heads=4, tensor_model_parallel_size=tp,
                              pipeline_model_parallel_size=pp, expert_model_parallel_size=ep,
                              params_dtype=torch.bfloat16, seq_length=128)


def case_te_forms(tmp):
    expected_code = {"2.3": 6, "2.4": 7, "2.9": 7, "2.12": 7, "2.16": 7, "2.17": 7}
    for version in ("2.3", "2.4", "2.9", "2.12", "2.16", "2.17"):
        cls, make_q = install_te_standins(version)
        t, data, scale = fp8_tensor(cls, make_q, 200, 300, version != "2.4", 1e-6 if version == "2.12" else 0.0, 7)
        model = collections.OrderedDict()
        model["decoder.layers.0.mlp.linear_fc1.weight"] = t
        model["decoder.layers.0.mlp.linear_fc1._extra_state"] = torch.empty(0, dtype=torch.uint8)
        model["decoder.layers.0.mlp.linear_fc2._extra_state"] = None
        model["decoder.final_layernorm.weight"] = torch.ones(256, dtype=torch.bfloat16)
        root = os.path.join(tmp, "te" + version)
        save_rank(os.path.join(root, "release", "mp_rank_00", "model_optim_rng.pt"), model, megatron_args(1, 1, 1))
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("release")
        try:
            got = dump("megatron", root)
        except Exception as e:  # noqa: BLE001
            check(f"te {version}", False, str(e))
            continue
        entries = {e["name"]: e for e in got["ranks"][0]["models"]["model"]}
        e = entries["decoder.layers.0.mlp.linear_fc1.weight"]
        v = e["value"]
        ok = (e["kind"] == "te_fp8" and v["shape"] == [200, 300] and v["fp8_dtype"] == "F8_E4M3"
              and v["te_dtype_code"] == expected_code[version] and v["fake_dtype"] == "bfloat16"
              and v["num_args"] == (9 if version in ("2.3", "2.4") else 10)
              and v["module_level"] == (version in ("2.16", "2.17"))
              and v["data_format"] == (0 if version == "2.9" else None)
              and v["data"]["__tensor__"]["hex"] == data.numpy().tobytes().hex()
              and v["scale_inv"]["__tensor__"]["hex"] == scale.numpy().tobytes().hex()
              and v["scale_inv"]["__tensor__"]["shape"] == [2, 4]
              and v["quantizer"]["block_len"] == 128 and v["quantizer"]["block_scaling_dim"] == 2
              and v["quantizer"]["force_pow_2_scales"] == (version != "2.4")
              and v["quantizer"]["amax_epsilon"] == (1e-6 if version == "2.12" else 0.0)
              and v["quantizer"]["dtype_code"] == expected_code[version]
              and v["quantizer"]["all_gather_usage"] == (False if version == "2.9" else None)
              and v["quantizer"]["optimize_for_gemm"] == (False if version in ("2.12", "2.16", "2.17") else None)
              and v["ambiguous"] == (version == "2.4"))
        check(f"te {version} fp8 record", ok, json.dumps({k: v[k] for k in v if k not in ("data", "scale_inv")}))
        check(f"te {version} extra_state", entries["decoder.layers.0.mlp.linear_fc1._extra_state"]["kind"] == "extra_state"
              and entries["decoder.layers.0.mlp.linear_fc2._extra_state"]["value"] is None, "")
        check(f"te {version} plain tensor", entries["decoder.final_layernorm.weight"]["kind"] == "tensor", "")
    for name in list(sys.modules):
        if name.startswith("transformer_engine"):
            del sys.modules[name]


def case_megatron_layouts(tmp):
    # TP2 x PP2 iteration checkpoint; EP via two-number names (PP=1); TP x PP x EP; VPP model0/model1.
    def model(tp, pp, ep):
        return collections.OrderedDict(
            [("embedding.word_embeddings.weight", torch.full((4, 8), float(tp * 100 + pp * 10 + ep), dtype=torch.bfloat16)),
             ("decoder.layers.0.self_attention.linear_qkv._extra_state", torch.empty(0, dtype=torch.uint8))])

    layouts = [("tp_pp", 2, 2, 1, "iter"), ("tp_ep", 2, 1, 2, "release"), ("tp_pp_ep", 1, 2, 2, "iter"), ("vpp", 1, 2, 1, "vpp")]
    for name, tp, pp, ep, mode in layouts:
        root = os.path.join(tmp, "meg_" + name)
        sub = "iter_0000120" if mode != "release" else "release"
        expect = []
        for t in range(tp):
            for p in range(pp):
                for e in range(ep):
                    d = f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "") + (f"_{e:03d}" if ep > 1 else "")
                    m = model(t, p, e)
                    save_rank(os.path.join(root, sub, d, "model_optim_rng.pt"), [m, m] if mode == "vpp" else m,
                              megatron_args(tp, pp, ep), iteration=120 if mode != "release" else 0, vpp=mode == "vpp")
                    expect.append((t, p, e, d, m))
        os.makedirs(os.path.join(root, sub, "not_a_rank"), exist_ok=True)
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("release" if mode == "release" else "120\n")
        try:
            got = dump("megatron", root)
        except Exception as ex:  # noqa: BLE001
            check(f"megatron {name}", False, str(ex))
            continue
        check(f"megatron {name} header", got["release"] == (mode == "release") and got["iteration"] == (0 if mode == "release" else 120), "")
        ranks = {(r["tp"], r["pp"], r["ep"]): r for r in got["ranks"]}
        check(f"megatron {name} rank set", sorted(ranks) == sorted((t, p, e) for t, p, e, _, _ in expect), str(sorted(ranks)))
        for t, p, e, d, m in expect:
            r = ranks.get((t, p, e))
            if not r:
                continue
            keys = ["model0", "model1"] if mode == "vpp" else ["model"]
            ok = r["name"] == d and r["checkpoint_version"] == 3.0 and r["args"]["tensor_model_parallel_size"] == tp
            ok = ok and r["args"]["params_dtype"] == {"__global__": "torch.bfloat16"} and sorted(r["models"]) == keys
            for k in keys:
                es = r["models"][k]
                ok = ok and [x["name"] for x in es] == list(m) and es[1]["kind"] == "extra_state"
                ok = ok and strip_keys(es[0]["value"]) == J(m["embedding.word_embeddings.weight"])
            check(f"megatron {name} rank {d}", ok, json.dumps(r)[:600])


# ----------------------------------------------------------------------- bad input
def archive(path, pkl, records=None, compress=False, prefix="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        for k, v in (records or {}).items():
            z.writestr(f"{prefix}/data/{k}", v)
        z.writestr(f"{prefix}/version", "3\n")
    return path


def expect_error(name, path, *needles, mode="file"):
    rc, out, err = run_tool(mode, path)
    ok = rc == 1 and err.startswith("error: ") and all(n in err for n in needles)
    check(f"bad input: {name}", ok, f"rc={rc} stderr={err.strip()[:400]}")


def tensor_pickle(numel, size, stride, offset=0, storage="FloatStorage"):
    ints = lambda v: b"(" + b"".join(b"K" + bytes([x]) if x < 256 else b"J" + struct.pack("<i", x) for x in v) + b"t"
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + b"(X\x07\x00\x00\x00storagectorch\n" + storage.encode()
            + b"\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ" + struct.pack("<i", numel) + b"tQJ" + struct.pack("<i", offset)
            + ints(size) + ints(stride) + b"\x89ccollections\nOrderedDict\n)RtR.")


def case_bad_inputs(tmp):
    good = os.path.join(tmp, "good.pt")
    torch.save({"w": torch.arange(64, dtype=torch.float32), "n": argparse.Namespace(a=1)}, good)
    raw = open(good, "rb").read()
    # truncated at several points
    for cut in (10, len(raw) // 3, len(raw) - 30, len(raw) - 1):
        p = os.path.join(tmp, f"trunc{cut}.pt")
        open(p, "wb").write(raw[:cut])
        expect_error(f"truncated at {cut}", p, p)
    # lying central directory: EOCD's CD offset (and the zip64 one) pointing past the file
    eocd = raw.rfind(b"PK\x05\x06")
    z64 = raw.rfind(b"PK\x06\x06")
    bad = bytearray(raw)
    struct.pack_into("<Q", bad, z64 + 48, len(raw) + 1000)
    p = os.path.join(tmp, "lying_cd.pt")
    open(p, "wb").write(bad)
    expect_error("central directory offset past the end", p, p, "central directory")
    # central directory entry with a size larger than the file
    cd = struct.unpack_from("<Q", raw, z64 + 48)[0]
    bad = bytearray(raw)
    struct.pack_into("<I", bad, cd + 20, 0x7FFFFFF0)
    struct.pack_into("<I", bad, cd + 24, 0x7FFFFFF0)
    p = os.path.join(tmp, "lying_size.pt")
    open(p, "wb").write(bad)
    expect_error("record size past the end", p, p, "data.pkl")
    # local header offset pointing at garbage
    bad = bytearray(raw)
    struct.pack_into("<I", bad, cd + 42, 7)
    p = os.path.join(tmp, "lying_offset.pt")
    open(p, "wb").write(bad)
    expect_error("local header offset", p, p, "offset 7")
    check("eocd found", eocd > 0, "")
    # compressed record
    p = archive(os.path.join(tmp, "deflate.pt"), pickle.dumps({"a": 1}, protocol=2), compress=True)
    expect_error("compressed record", p, p, "compressed")
    # storage record shorter than the pickle declares (out-of-range record)
    p = archive(os.path.join(tmp, "short_storage.pt"), tensor_pickle(16, [16], [1]), {"0": b"\0" * 60})
    expect_error("storage record too small", p, p, "64 bytes")
    # view past the declared storage
    p = archive(os.path.join(tmp, "view_oob.pt"), tensor_pickle(16, [4, 4], [5, 1]), {"0": b"\0" * 64})
    expect_error("view past storage", p, p, "reaches past storage")
    # missing storage record
    p = archive(os.path.join(tmp, "no_storage.pt"), tensor_pickle(4, [4], [1]))
    expect_error("missing storage record", p, p, "data/0")
    # unknown opcode
    p = archive(os.path.join(tmp, "opcode.pt"), b"\x80\x02}q\x00\xff.")
    expect_error("unknown opcode", p, p, "offset 5", "0xff")
    # memo cycle: l = []; l.append(l)
    lst = []
    lst.append(lst)
    p = archive(os.path.join(tmp, "cycle.pt"), pickle.dumps(lst, protocol=2))
    expect_error("self-referencing list", p, p, "offset")
    d = {}
    d["self"] = [d]
    p = archive(os.path.join(tmp, "cycle2.pt"), pickle.dumps(d, protocol=2))
    expect_error("dict cycle through a list", p, p, "cycle")
    # deep nesting
    p = archive(os.path.join(tmp, "deep.pt"), b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b".")
    expect_error("deep nesting", p, p, "nesting deeper")
    # huge length prefixes
    p = archive(os.path.join(tmp, "huge_str.pt"), b"\x80\x02X\xff\xff\xff\x7fabc.")
    expect_error("huge BINUNICODE length", p, p, "offset 2", "runs past")
    p = archive(os.path.join(tmp, "huge_bytes8.pt"), b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x.")
    expect_error("huge BINBYTES8 length", p, p, "offset 2")
    p = archive(os.path.join(tmp, "huge_long4.pt"), b"\x80\x02\x8b\xff\xff\xff\x7f.")
    expect_error("huge LONG4 length", p, p, "offset 2")
    # not a zip / legacy format
    p = os.path.join(tmp, "legacy.pt")
    torch.save({"a": torch.ones(1)}, p, _use_new_zipfile_serialization=False)
    expect_error("legacy format", p, p, "legacy")
    # missing data.pkl / version
    p = os.path.join(tmp, "nopkl.pt")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/version", "3\n")
    expect_error("no data.pkl", p, p, "data.pkl")
    # stack underflow, STOP with leftovers, BUILD on an int
    for nm, blob, needle in (("underflow", b"\x80\x02t.", "MARK"), ("stop leftovers", b"\x80\x02K\x01K\x02.", "STOP"),
                             ("build on int", b"\x80\x02K\x01}b.", "BUILD")):
        p = archive(os.path.join(tmp, nm.replace(" ", "_") + ".pt"), blob)
        expect_error(nm, p, p, needle)


def main():
    if not os.path.exists(TOOL):
        print(f"tr_dump not found at {TOOL} (build target tr_dump)")
        print("0 passed, 1 failed")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for case in (case_values, case_state_dict, case_te_forms, case_megatron_layouts, case_rng_and_optimizer, case_bad_inputs,
                     case_big_file):
            try:
                case(tmp)
            except Exception as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                check(case.__name__, False, repr(e))
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
