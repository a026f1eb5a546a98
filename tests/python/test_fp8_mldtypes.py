"""Cross-checks ckbridge's blockwise FP8 quantize / dequantize against an independent numpy +
ml_dtypes implementation of the reference math (te and pt, eps {0, 1e-4}, pow2 {off, on}) on
random bf16 / fp16 / fp32 tensors of odd shapes, including all-zero blocks (pt's te fallback), and
inputs holding NaN (both signs), +-Inf, out-of-range finite values and all-NaN blocks (TE ignores NaN
in the amax, casts unscaled and saturating when the amax is Inf, and writes NaN as 0x7F; ckbridge's
pt emits te's result for every block where LoongForge's pt would give NaN weights).

float32 arithmetic is numpy's (IEEE RN); the E4M3 and bf16 roundings are ml_dtypes' casts.
Drives the fp8_tool helper ($CKB_FP8_TOOL, else $CKB_BUILD_DIR/tests/tools/fp8_tool).
Prints "N passed, M failed"; exits non-zero on any failure.
"""
import math
import os
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np

PASSED = 0
FAILED = 0
F32 = np.float32
E4M3 = ml_dtypes.float8_e4m3fn
C448 = np.array([0x3B124925], np.uint32).view(np.float32)[0]  # RN(1/448)
VMAX = {
    "BF16": np.array([0x7F7F0000], np.uint32).view(np.float32)[0],
    "F16": F32(65504.0),
    "F32": F32(np.finfo(np.float32).max),
}
NP_DTYPE = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
    else:
        FAILED += 1
        print("FAIL:", what)


def tool_path():
    if os.environ.get("CKB_FP8_TOOL"):
        return os.environ["CKB_FP8_TOOL"]
    return os.path.join(os.environ.get("CKB_BUILD_DIR", "build"), "tests", "tools", "fp8_tool")


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def e4m3_sat(v):
    """cvt.rn.satfinite.e4m3: RNE, |v| > 464 and +-Inf -> +-448, NaN -> 0x7F whatever its sign."""
    with np.errstate(invalid="ignore"):
        codes = np.clip(v, F32(-448.0), F32(448.0)).astype(E4M3).view(np.uint8).copy()
    codes[np.isnan(v)] = 0x7F
    return codes


def amax_te(blk):
    """fmaxf reduction from 0: NaN elements are ignored, +-Inf gives +Inf."""
    a = np.abs(blk)
    return F32(np.max(np.where(np.isnan(a), F32(0.0), a))) if a.size else F32(0.0)


def te_block(blk, eps, vmax, pow2):
    a = amax_te(blk)
    if a < eps:
        a = eps
    if a == 0 or np.isinf(a):
        sc = F32(1.0)
    else:
        with np.errstate(over="ignore"):
            sc = F32(448.0) / a
        if np.isinf(sc):
            sc = vmax
        if pow2:
            sc = np.array([bits(np.array([sc]))[0] & 0xFF800000], np.uint32).view(np.float32)[0]
    with np.errstate(invalid="ignore", over="ignore"):
        codes = e4m3_sat(blk * sc)
    return codes, F32(1.0) / sc


def exp2f(e):
    # exact 2^e as float32: 0 below 2^-149, +Inf from 2^128
    if e >= 128:
        return F32(np.inf)
    if e < -149:
        return F32(0.0)
    return F32(math.ldexp(1.0, e))


def reference(x32, dt, eps, pow2, method):
    m, n = x32.shape
    bm, bn = -(-m // 128), -(-n // 128)
    q = np.zeros((m, n), np.uint8)
    s = np.zeros((bm, bn), np.float32)
    fallbacks = 0
    for bi in range(bm):
        for bj in range(bn):
            blk = x32[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
            if method == "te":
                q[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128], s[bi, bj] = te_block(blk, eps, VMAX[dt], pow2)
                continue
            a = F32(np.abs(blk).max())  # pt: NaN-propagating
            if a < eps:
                a = eps
            y = a * C448
            with np.errstate(divide="ignore", over="ignore"):
                if pow2:
                    if not np.isfinite(y):  # NaN / Inf amax: LoongForge's NaN block, te fallback below
                        scale, mul = F32(np.nan), F32(np.nan)
                    elif y == 0:
                        scale, mul = F32(0.0), F32(np.inf)
                    else:
                        e = int(math.ceil(float(F32(math.log2(float(y))))))  # correctly rounded float32 log2
                        scale, mul = exp2f(e), exp2f(-e)
                else:
                    scale, mul = y, (F32(1.0) / a) * F32(448.0)
            if not (np.isfinite(a) and np.isfinite(mul)):
                fallbacks += 1
                q[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128], s[bi, bj] = te_block(blk, eps, VMAX[dt], pow2)
            else:
                q[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128] = (blk * mul).astype(E4M3).view(np.uint8)
                s[bi, bj] = scale
    return q, s, fallbacks


def random_input(rng, dt, m, n):
    bm, bn = -(-m // 128), -(-n // 128)
    mag = np.where(rng.random((bm, bn)) < 0.15, 0.0, 10.0 ** rng.uniform(-8, 3, (bm, bn)))
    scale = np.repeat(np.repeat(mag, 128, 0), 128, 1)[:m, :n]
    x = (rng.standard_normal((m, n)) * scale).astype(np.float32).astype(NP_DTYPE[dt])
    return x


def special_input(rng, dt, m, n):
    """Random values with NaN (both signs), +-Inf and out-of-range finite values in some blocks, an
    all-NaN block and a block with a lone Inf among zeros."""
    x = random_input(rng, dt, m, n).astype(np.float32)
    pos = lambda: (int(rng.integers(0, m)), int(rng.integers(0, n)))  # noqa: E731
    neg_nan = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    big = {"BF16": 1e30, "F16": 60000.0, "F32": 1e30}[dt]
    for v in (np.nan, neg_nan, np.inf, -np.inf, F32(big), F32(-big), F32(464.0), F32(472.0), F32(-0.0)):
        for _ in range(2):
            x[pos()] = v
    if m >= 256 and n >= 256:
        x[128:256, 128:256] = np.nan                    # a block of NaN only
        x[128:256, 128:256][::3, ::5] = neg_nan
        x[0:128, 128:256] = 0.0                         # zeros and one Inf
        x[7, 200] = np.inf
    with np.errstate(over="ignore"):
        return x.astype(NP_DTYPE[dt])


def canonical_nan(y32):
    """Dequantization writes NaN as CUDA's 0x7FFFFFFF (bf16: 0x7FFF)."""
    b = bits(y32).copy()
    b[np.isnan(y32)] = 0x7FFFFFFF
    return b.view(np.float32)


def main():
    tool = tool_path()
    if not os.path.exists(tool):
        print("FAIL: fp8_tool not found at", tool)
        print("0 passed, 1 failed")
        return 1
    rng = np.random.default_rng(20241127)
    eps4 = F32(1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        pin, pq, ps, py = (os.path.join(tmp, f) for f in ("in", "q", "s", "y"))
        cases = [(dt, m, n, False) for dt in ("BF16", "F16", "F32")
                 for (m, n) in ((1, 1), (129, 129), (200, 300), (256, 384), (3, 1000))]
        cases += [(dt, m, n, True) for dt in ("BF16", "F16", "F32") for (m, n) in ((256, 384), (130, 260))]
        for dt, m, n, special in cases:
            x = (special_input if special else random_input)(rng, dt, m, n)
            if special:
                x32 = x.astype(np.float32)
                assert np.isnan(x32).any() and np.isinf(x32).any(), "special input without NaN/Inf"
            x.tofile(pin)
            x32 = x.astype(np.float32)
            for eps in (F32(0.0), eps4):
                for pow2 in (0, 1):
                    for method in ("te", "pt"):
                        what = f"{method} {dt} {m}x{n}{' NaN/Inf' if special else ''} eps={eps} pow2={pow2}"
                        out = subprocess.run(
                            [tool, "quantize", method, dt, str(m), str(n), repr(float(eps)), str(pow2), pin, pq, ps],
                            capture_output=True, text=True)
                        if out.returncode != 0:
                            check(False, what + ": " + out.stderr.strip())
                            continue
                        rq, rs, rf = reference(x32, dt, eps, pow2, method)
                        gq = np.fromfile(pq, np.uint8).reshape(m, n)
                        gs = np.fromfile(ps, np.float32).reshape(rs.shape)
                        check(np.array_equal(gq, rq), what + f": codes differ in {int((gq != rq).sum())} places")
                        check(np.array_equal(bits(gs), bits(rs)), what + ": scales differ")
                        check(int(out.stdout.strip()) == rf, what + f": fallbacks {out.stdout.strip()} != {rf}")
                        if eps == 0 and method == "te":
                            # dequantization: fp32 RN product, bf16 by ml_dtypes' RNE
                            full = np.repeat(np.repeat(rs, 128, 0), 128, 1)[:m, :n]
                            want32 = canonical_nan(rq.view(E4M3).astype(np.float32) * full)
                            want16 = want32.astype(ml_dtypes.bfloat16).view(np.uint16).copy()
                            want16[np.isnan(want32)] = 0x7FFF
                            for od, want in (("F32", want32), ("BF16", want16)):
                                r = subprocess.run([tool, "dequantize", od, str(m), str(n), pq, ps, py],
                                                   capture_output=True, text=True)
                                got = np.fromfile(py, np.uint8)
                                check(r.returncode == 0 and np.array_equal(got, want.view(np.uint8).ravel()),
                                      f"dequantize {od} {what}")
    print(f"{PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
