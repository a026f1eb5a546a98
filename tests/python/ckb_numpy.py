"""numpy references shared by the converter-level Python tests: safetensors and torch readers,
the FP8 numerics (TE's 128x128 block quantizer, dequantization), TP split rules, vocab padding, and
LoongForge's pipeline / expert-parallel layout rules (reference loongforge-converter.md §4-§6).
Nothing here uses the converter's code; every rule is restated from LoongForge's documented
behaviour."""
import glob
import json
import os
import re
import struct

import ml_dtypes
import numpy as np

ST_DTYPES = {'BF16': np.uint16, 'F16': np.uint16, 'F32': np.float32, 'F8_E4M3': np.uint8, 'I64': np.int64}


# ----------------------------------------------------------------------------------- readers
def read_safetensors(path):
    """Own reader (the safetensors package has no FP8 in its numpy API): key -> (dtype, array)."""
    with open(path, 'rb') as f:
        buf = f.read()
    n = struct.unpack_from('<Q', buf, 0)[0]
    hdr = json.loads(buf[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == '__metadata__':
            continue
        dt = np.dtype(ST_DTYPES[v['dtype']])
        b, e = v['data_offsets']
        arr = np.frombuffer(buf, dtype=dt, count=(e - b) // dt.itemsize, offset=8 + n + b).reshape(v['shape'])
        out[k] = (v['dtype'], arr)
    return out


def read_hf(d):
    """Every tensor of every *.safetensors file of directory d: key -> (dtype name, raw array)."""
    out = {}
    for p in sorted(glob.glob(os.path.join(d, '*.safetensors'))):
        for k, v in read_safetensors(p).items():
            assert k not in out, 'duplicate tensor %s in %s' % (k, d)
            out[k] = v
    return out


def t2np(t):
    """torch tensor -> (dtype name, numpy array of its raw values)."""
    import torch
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return 'BF16', t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.float32:
        return 'F32', t.numpy()
    if t.dtype == torch.float16:
        return 'F16', t.numpy().view(np.uint16)
    if t.dtype == torch.uint8:
        return 'U8', t.numpy()
    raise AssertionError('unexpected tensor dtype %s' % t.dtype)


# ----------------------------------------------------------------------------------- FP8 numerics
def is_pow2(s):
    s = np.asarray(s, np.float32)
    return bool(np.all(s > 0) and np.all((s.view(np.uint32) & 0x007FFFFF) == 0))


def expand_scale(scale, m, n):
    """Each block's scale over its 128x128 elements, cut to m x n (`scale` covers whole blocks)."""
    rb, cb = scale.shape
    return np.broadcast_to(scale[:, None, :, None], (rb, 128, cb, 128)).reshape(rb * 128, cb * 128)[:m, :n]


E4M3_F32 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)  # code -> value


def dequant(data_u8, scale):
    """fp32 = f32(e4m3) * scale_inv[i//128, j//128] (one fp32 rounding; the code's value from ml_dtypes).
    Each 128x128 block times its scale by broadcasting (the values padded to whole blocks)."""
    m, n = data_u8.shape
    rb, cb = (m + 127) // 128, (n + 127) // 128
    s = np.asarray(scale[:rb, :cb], np.float32)
    v = E4M3_F32[data_u8]
    if m % 128 or n % 128:
        p = np.zeros((rb * 128, cb * 128), np.float32)
        p[:m, :n] = v
        v = p
    return (v.reshape(rb, 128, cb, 128) * s[:, None, :, None]).reshape(rb * 128, cb * 128)[:m, :n]


def quant_te(x, pow2=True):
    """TE Float8BlockQuantizer (128x128, e4m3, amax_epsilon 0), reference spec fp8-blockwise §9."""
    x = np.asarray(x, np.float32)
    m, n = x.shape
    rb, cb = (m + 127) // 128, (n + 127) // 128
    q = np.empty((m, n), np.uint8)
    sinv = np.empty((rb, cb), np.float32)
    for i in range(rb):
        for j in range(cb):
            blk = x[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            a = np.float32(np.max(np.abs(blk))) if blk.size else np.float32(0)
            if a == 0 or not np.isfinite(a):
                s = np.float32(1)
            else:
                s = np.float32(448) / a
                if not np.isfinite(s):
                    s = np.float32(np.finfo(np.float32).max)
                if pow2:
                    s = np.array([s], np.float32).view(np.uint32)
                    s = (s & np.uint32(0xFF800000)).view(np.float32)[0]
            sinv[i, j] = np.float32(1) / s
            v = np.clip(blk * s, -448, 448)  # RNE onto e4m3 below; |v| <= 448(1+2^-23) anyway
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = v.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    return q, sinv


def pad4(scale):
    """TE's stored rowwise scale_inv: columns padded to a multiple of 4 (ckbridge fills zeros)."""
    rows, cols = scale.shape
    out = np.zeros((rows, (cols + 3) // 4 * 4), np.float32)
    out[:, :cols] = scale
    return out


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    """float32 -> raw bf16 (RNE)."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


# ----------------------------------------------------------------------------------- TP rules
def split(a, rule, n, t):
    """Shard t of n of a full array (also applied to FP8 scales on the block grid).
    rows / cols: contiguous chunks of dim 0 / 1; gateup: [G; U] -> [G_t; U_t] (LoongForge's SwiGLU
    interleave, transpose_mlp_dense); repl: the whole array on every rank."""
    if rule == 'repl' or n == 1:
        return a
    if rule == 'rows':
        assert a.shape[0] % n == 0, ('rows not divisible', a.shape, n)
        k = a.shape[0] // n
        return a[t * k:(t + 1) * k]
    if rule == 'cols':
        assert a.shape[1] % n == 0, ('cols not divisible', a.shape, n)
        k = a.shape[1] // n
        return a[:, t * k:(t + 1) * k]
    if rule == 'gateup':
        f = a.shape[0] // 2
        k = f // n
        return np.concatenate([a[t * k:(t + 1) * k], a[f + t * k:f + (t + 1) * k]])
    raise AssertionError(rule)


def aligned(shape, rule, n):
    """Do the shard cuts fall on 128 blocks (FP8 data and scales move unchanged)?"""
    if rule == 'repl' or n == 1:
        return True
    if rule == 'rows':
        return (shape[0] // n) % 128 == 0
    if rule == 'cols':
        return (shape[1] // n) % 128 == 0
    return (shape[0] // 2 // n) % 128 == 0  # gateup


def grouped_qkv(q, k, v, groups):
    """LoongForge's fused linear_qkv (transpose_query_key_value): per query group g
    [q heads g*R .. g*R+R-1; k_g; v_g], from HF's q / k / v (weights, biases, or FP8 scale rows when
    a head is a whole number of 128-row blocks). Works on the leading axis of any rank."""
    rest = q.shape[1:]
    return np.concatenate([q.reshape((groups, -1) + rest), k.reshape((groups, -1) + rest),
                           v.reshape((groups, -1) + rest)], axis=1).reshape((-1,) + rest)


def padded_vocab(v, tp, divisible_by=128, pad_to=None):
    if pad_to:
        return pad_to
    mult = divisible_by * tp
    return (v + mult - 1) // mult * mult


def pad_rows(a, rows):
    """Vocab padding: LoongForge appends copies of the last row (not zeros)."""
    return np.concatenate([a, np.repeat(a[-1:], rows - a.shape[0], axis=0)]) if rows > a.shape[0] else a


# ----------------------------------------------------------------------------------- PP / EP rules
def balanced(n, parts):
    # LoongForge partition_balanced; for the even splits used by the tests it is n/parts per part.
    assert n % parts == 0 or parts == 1, 'only even splits are modelled here'
    return [n // parts] * parts


def expand_layout(s):
    """Megatron layout string -> stages (LoongForge §6.1.4: commas dropped, (...)*n and x*n expanded)."""
    s = s.replace(',', '').replace(' ', '')
    while True:
        t = re.sub(r'\(([^()]*)\)\*(\d+)', lambda m: m.group(1) * int(m.group(2)), s)
        t = re.sub(r'(.)\*(\d+)', lambda m: m.group(1) * int(m.group(2)), t)
        if t == s:
            return s.split('|')
        s = t


def vp_counts(n_layers, mtp, pp, vpp=1, custom=None, layout=None):
    """Decoder layers per virtual partition (LoongForge get_num_layers_in_vp_map), MTP added last."""
    if layout:
        stages = expand_layout(layout)
        assert len(stages) == pp * vpp, (stages, pp, vpp)
        c = [st.count('t') for st in stages]
    elif custom:
        c = list(custom)
    else:
        c = balanced(n_layers, pp * vpp)
    assert sum(c) == n_layers, c
    c[-1] += mtp
    return c


def stage_layers(n_layers, mtp, pp, vpp=1, custom=None, layout=None, dualpipev=False):
    """Per PP rank, per virtual stage: [(global id, local index)]; the local index restarts per
    virtual stage, MTP layers (global id >= n_layers) are numbered from 0 (§6.2)."""
    c = vp_counts(n_layers, mtp, pp, vpp, custom, layout)
    off = [sum(c[:i]) for i in range(len(c))]
    out = []
    for p in range(pp):
        per_s = []
        for s in range(vpp):
            vp = (p if s == 0 else pp * s + (pp - 1 - p)) if dualpipev else p + pp * s
            ids = list(range(off[vp], off[vp] + c[vp]))
            per_s.append([(g, g - n_layers if g >= n_layers else i) for i, g in enumerate(ids)])
        out.append(per_s)
    return out


def etp_map(tp, ep, etp):
    """LoongForge get_etp_map: etp_to_tp[g][et]."""
    v = max(tp, etp * ep)
    m = [[None] * etp for _ in range(ep)]
    for t in range(v):
        m[(t // etp) % ep][t % etp] = t % tp
    return m


def rank_files(tp, pp, ep=1, etp=None):
    """[(dir, t, p, e, et)] as LoongForge names and fills the rank files (§5.4)."""
    if etp is None:
        trip = [(t, e, t) for e in range(ep) for t in range(tp)]
    else:
        m = etp_map(tp, ep, etp)
        trip = [(m[e][et], e, et) for e in range(ep) for et in range(etp)]
    out = []
    for p in range(pp):
        for t, e, et in trip:
            d = 'mp_rank_%02d' % t + ('_%03d' % p if pp > 1 else '') + ('_%03d' % e if ep > 1 else '')
            out.append((d, t, p, e, et))
    return out
