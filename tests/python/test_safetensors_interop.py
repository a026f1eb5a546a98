"""Cross-checks ckbridge's safetensors reader/writer against the Python `safetensors` package.

- Files ckbridge writes are byte-identical to safetensors.numpy.save_file of the same dict
  (whole files compared), for every dtype incl. F8_E4M3/F8_E5M2/F8_E8M0, zero-size and scalar
  tensors, odd names, with and without __metadata__, written in shuffled pieces from threads.
- ckbridge reads files Python wrote, including a sharded checkpoint with an index written the
  transformers way, and re-shards it: shards and index equal Python's own output.
- On randomly damaged headers ckbridge and Python agree on accept / reject.

Drives the st_tool helper ($CKB_ST_TOOL, else $CKB_BUILD_DIR/tests/tools/st_tool).
Prints "N passed, M failed"; exits non-zero on any failure.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
from safetensors import deserialize
from safetensors.numpy import save, save_file

PASSED = 0
FAILED = 0


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
    else:
        FAILED += 1
        print("FAIL:", what)


def tool_path():
    if os.environ.get("CKB_ST_TOOL"):
        return os.environ["CKB_ST_TOOL"]
    build = os.environ.get("CKB_BUILD_DIR", "build")
    return os.path.join(build, "tests", "tools", "st_tool")


TOOL = tool_path()


def run(*args, ok=True):
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    if ok and r.returncode != 0:
        raise RuntimeError(f"st_tool {' '.join(map(str, args))} failed: {r.stderr}")
    return r


DTYPES = {
    "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E8M0": ml_dtypes.float8_e8m0fnu, "I8": np.int8, "U8": np.uint8, "I16": np.int16,
    "I32": np.int32, "I64": np.int64, "BOOL": np.bool_,
}


def random_array(rng, dt, shape):
    n = int(np.prod(shape)) if shape else 1
    size = np.dtype(dt).itemsize
    if dt is np.bool_:
        raw = rng.integers(0, 2, n, dtype=np.uint8)
    else:
        raw = rng.integers(0, 256, n * size, dtype=np.uint8)  # every bit pattern incl. NaNs
    return raw.view(dt).reshape(shape)


NAMES = ["w", "model.layers.0.mlp.experts.7.down_proj.weight", "a", "B", "z.weight_scale_inv",
         "caf\u00e9", "\U0001F600emoji", "quote\"back\\slash", "ctl\x01\t\n", "slash/ok", "", "0"]


def random_dict(rng, n):
    d = {}
    names = list(NAMES) + [f"t{i}.{rng.integers(1000)}" for i in range(n)]
    rng.shuffle(names)
    for name in names[:n]:
        dt = DTYPES[rng.choice(sorted(DTYPES))]
        kind = rng.integers(0, 6)
        if kind == 0:
            shape = ()
        elif kind == 1:
            shape = (int(rng.integers(0, 3)), 0, int(rng.integers(1, 4)))
        else:
            shape = tuple(int(x) for x in rng.integers(1, 9, int(rng.integers(1, 4))))
        d[name] = random_array(rng, dt, shape)
    return d


def header_of(b):
    n = int.from_bytes(b[:8], "little")
    return json.loads(b[8:8 + n])


def as_raw(arr):
    return np.ascontiguousarray(arr).tobytes()


def same_tensors(dump, ref_dict, what):
    got = {t["name"]: t for t in dump["tensors"]}
    check(sorted(got) == sorted(ref_dict), f"{what}: tensor names {sorted(got)} != {sorted(ref_dict)}")
    for name, arr in ref_dict.items():
        t = got.get(name)
        if t is None:
            continue
        check(t["shape"] == list(arr.shape), f"{what}: {name!r} shape {t['shape']} != {list(arr.shape)}")
        check(DTYPES[t["dtype"]] == arr.dtype.type or np.dtype(DTYPES[t["dtype"]]) == arr.dtype,
              f"{what}: {name!r} dtype {t['dtype']} != {arr.dtype}")
        check(bytes.fromhex(t["hex"]) == as_raw(arr), f"{what}: {name!r} bytes differ")


def test_write_byte_identical(tmp, rng):
    for case in range(12):
        d = random_dict(rng, int(rng.integers(1, 14)))
        md = None if case % 4 == 3 else {"format": "pt"}
        ref = os.path.join(tmp, f"ref{case}.safetensors")
        ours = os.path.join(tmp, f"ours{case}.safetensors")
        save_file(d, ref, metadata=md)
        # our reader reads Python's file ...
        dump = json.loads(run("dump", ref).stdout)
        same_tensors(dump, d, f"case {case} read")
        check(dump["metadata"] == md, f"case {case}: metadata {dump['metadata']} != {md}")
        # ... and our writer reproduces it byte for byte (pieces of 1..7 bytes, 1..4 threads)
        run("copy", ref, ours, 1 + case % 4, 1 + case % 7, case)
        a, b = open(ref, "rb").read(), open(ours, "rb").read()
        check(a == b, f"case {case}: files differ ({len(a)} vs {len(b)} bytes)")
        # Python reads ours with the same values
        back = {name: info for name, info in deserialize(b)}
        for name, arr in d.items():
            info = back.get(name)
            check(info is not None and bytes(info["data"]) == as_raw(arr) and info["shape"] == list(arr.shape),
                  f"case {case}: Python reads {name!r} differently")
        check(not [f for f in os.listdir(tmp) if ".tmp-" in f], f"case {case}: temporary file left behind")


def hf_split(names_sizes, max_bytes):
    """huggingface_hub split_state_dict_into_shards_factory, reimplemented independently."""
    shards, cur, cur_size = [], [], 0
    for name, size in names_sizes:
        if size > max_bytes:
            shards.append([name])
            continue
        if cur_size + size > max_bytes:
            shards.append(cur)
            cur, cur_size = [], 0
        cur.append(name)
        cur_size += size
    if cur:
        shards.append(cur)
    return shards


def save_hf_checkpoint(d, directory, max_bytes, total_parameters, file_pattern):
    """What transformers' save_pretrained does: greedy shards in state-dict order, an index with
    json.dumps(indent=2, sort_keys=True) + newline."""
    os.makedirs(directory, exist_ok=True)
    shards = hf_split([(k, v.nbytes) for k, v in d.items()], max_bytes)
    weight_map = {}
    for i, names in enumerate(shards):
        fn = file_pattern.format(i + 1, len(shards))
        save_file({k: d[k] for k in names}, os.path.join(directory, fn), metadata={"format": "pt"})
        for k in names:
            weight_map[k] = fn
    index = {"metadata": {"total_parameters": total_parameters,
                          "total_size": sum(v.nbytes for v in d.values())},
             "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return shards


def test_sharded(tmp, rng):
    d = random_dict(rng, 40)
    d = {k: d[k] for k in sorted(d)}  # index order (sort_keys) is the state-dict order below
    params = sum(int(np.prod(v.shape)) for v in d.values())
    src = os.path.join(tmp, "src")
    # third-party naming (DeepSeek's 6-digit total): names must come from weight_map
    save_hf_checkpoint(d, src, 300, params, "model-{:05d}-of-{:06d}.safetensors")
    dump = json.loads(run("dump", src).stdout)
    same_tensors(dump, d, "sharded read")
    check(dump["total_size"] == sum(v.nbytes for v in d.values()), "sharded total_size")

    for max_bytes in (1, 150, 700, 10**9):
        ref = os.path.join(tmp, f"ref_{max_bytes}")
        ours = os.path.join(tmp, f"ours_{max_bytes}")
        shards = save_hf_checkpoint(d, ref, max_bytes, params, "model-{:05d}-of-{:05d}.safetensors")
        run("reshard", src, ours, max_bytes, params)
        if len(shards) == 1:  # HF: one shard is model.safetensors, no index
            os.remove(os.path.join(ref, "model.safetensors.index.json"))
            os.rename(os.path.join(ref, "model-00001-of-00001.safetensors"), os.path.join(ref, "model.safetensors"))
        ref_files, our_files = sorted(os.listdir(ref)), sorted(os.listdir(ours))
        check(ref_files == our_files, f"max {max_bytes}: files {our_files} != {ref_files}")
        for fn in ref_files:
            if fn in our_files:
                a = open(os.path.join(ref, fn), "rb").read()
                b = open(os.path.join(ours, fn), "rb").read()
                check(a == b, f"max {max_bytes}: {fn} differs")


def mutate(rng, good):
    """A damaged copy of a valid file (header edits that both readers must judge alike)."""
    n = int.from_bytes(good[:8], "little")
    hdr = json.loads(good[8:8 + n])
    data = good[8 + n:]
    names = [k for k in hdr if k != "__metadata__"]
    k = names[int(rng.integers(len(names)))] if names else None
    m = int(rng.integers(0, 9))
    if m == 0 and k:
        hdr[k]["data_offsets"][int(rng.integers(2))] += int(rng.integers(-3, 4))
    elif m == 1 and k and hdr[k]["shape"]:
        hdr[k]["shape"][int(rng.integers(len(hdr[k]["shape"])))] += int(rng.integers(-1, 3))
    elif m == 2 and k:
        hdr[k]["dtype"] = str(rng.choice(sorted(DTYPES)))
    elif m == 3:
        data = data[:max(0, len(data) - int(rng.integers(1, 9)))]
    elif m == 4:
        data = data + b"\0" * int(rng.integers(1, 9))
    elif m == 5 and k:
        del hdr[k]
    elif m == 6 and k:
        hdr[k]["shape"] = hdr[k]["shape"] + [int(rng.integers(0, 3))]
    elif m == 7 and len(names) > 1:
        a, b = names[0], names[1]
        hdr[a]["data_offsets"], hdr[b]["data_offsets"] = hdr[b]["data_offsets"], hdr[a]["data_offsets"]
    else:
        text = json.dumps(hdr).encode()
        cut = int(rng.integers(0, len(text)))
        return len(text).to_bytes(8, "little") + text[:cut] + b" " * (len(text) - cut) + data
    text = json.dumps(hdr, separators=(",", ":")).encode()
    if rng.integers(2):  # padded or not: both are valid
        text += b" " * int((8 - len(text) % 8) % 8)
    return len(text).to_bytes(8, "little") + text + data


def test_validation_agrees(tmp, rng):
    path = os.path.join(tmp, "mut.safetensors")
    disagreements = 0
    for i in range(400):
        d = random_dict(rng, int(rng.integers(1, 6)))
        good = save(d, metadata={"format": "pt"})
        bad = mutate(rng, good)
        with open(path, "wb") as f:
            f.write(bad)
        try:
            deserialize(bad)
            py_ok = True
        except Exception:
            py_ok = False
        r = run("check", path, ok=False)
        ours_ok = r.returncode == 0
        if r.returncode not in (0, 1):
            check(False, f"mutant {i}: st_tool crashed (rc {r.returncode}): {r.stderr}")
            continue
        if not ours_ok:
            check(path in r.stderr, f"mutant {i}: error does not name the file: {r.stderr.strip()}")
        if py_ok != ours_ok:
            disagreements += 1
            check(False, f"mutant {i}: Python {'accepts' if py_ok else 'rejects'}, ckbridge "
                         f"{'accepts' if ours_ok else 'rejects: ' + r.stderr.strip()}; header {bad[8:200]!r}")
    check(disagreements == 0, f"{disagreements} accept/reject disagreements")


def main():
    if not os.path.exists(TOOL):
        print(f"st_tool not found at {TOOL} (build target st_tool, or set CKB_ST_TOOL)")
        print("0 passed, 1 failed")
        return 1
    rng = np.random.default_rng(20261127)
    tmp = tempfile.mkdtemp(prefix="ckb_st_interop_")
    try:
        for t in (test_write_byte_identical, test_sharded, test_validation_agrees):
            try:
                t(tmp, rng)
            except Exception as e:  # a crash in one test is one failure, the others still run
                check(False, f"{t.__name__}: {type(e).__name__}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
