"""Acceptance tests of the DeepSeek V3 converter (examples/deepseek_v3) against independent expectations.

Drives $CKB_BUILD_DIR/examples/deepseek_v3_make_tiny and ckbridge_convert on the tiny model of
configs/deepseek_v3/deepseek_v3_tiny.yaml and checks, without using any of the converter's code:
  1. HF -> MCore in several layouts (TP/PP/EP/ETP, grouped and sequential experts, custom pipeline
     split, BF16 source with and without --convert_to_fp8, TP 4 with FP8 re-quantization);
  2. every MCore rank file, loaded with torch.load (TE classes from tests/python/te_stub): the set of
     files (LoongForge's mp_rank naming and EP/ETP maps), the set of keys of every file, and every
     tensor against an expectation computed here with numpy from the HF safetensors and LoongForge's
     rules (name table, stage-local layer numbering, MTP block, vocab padding with copies of the last
     row, TP split per rule, SwiGLU [gate_r; up_r] interleave, fp8_ignore_tp replication, TE FP8
     objects with zero-padded scales, _extra_state None entries, args and checkpoint_version);
     bytes are compared exactly, re-quantized tensors against a numpy port of TE's quantizer and the
     FP8 error bound;
  3. MCore -> HF back to the source (whole files byte-identical where no re-quantization happened);
  4. coverage: an unknown extra tensor and a missing tensor are refused, naming the tensor;
  5. bad input: each refused with a message naming the flag / tensor / file, before any output;
  6. --dry-run prints a plan and writes nothing.
Where ckbridge deliberately differs from LoongForge the expectation says so in a comment.
Exits non-zero on failure; the last line is "N passed, M failed".
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

import ml_dtypes
import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'te_stub'))
os.environ.setdefault('TE_STUB_VERSION', '2.9')  # the converter's default --te_version

import torch  # noqa: E402

sys.path.insert(0, HERE)
# the numpy references shared with the other converter tests (readers, FP8 numerics, TP / PP / EP rules)
from ckb_numpy import (E4M3_F32, ST_DTYPES, aligned, balanced, bf16_to_f32, dequant, etp_map,  # noqa: E402,F401
                       expand_layout, expand_scale, is_pow2, pad4, quant_te, read_hf, read_safetensors, split, t2np)

SRC = os.environ.get('CKB_SOURCE_DIR', os.path.join(HERE, '..', '..'))
BUILD = os.environ.get('CKB_BUILD_DIR', os.path.join(SRC, 'build'))
CONVERT = os.path.join(BUILD, 'examples', 'ckbridge_convert')
MAKE_TINY = os.path.join(BUILD, 'examples', 'deepseek_v3_make_tiny')
CFG = os.path.join(SRC, 'configs', 'deepseek_v3', 'deepseek_v3_tiny.yaml')
CONV = os.path.join(SRC, 'configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert.yaml')
SHARD = '4MB'  # the generator's default shard size; MCore -> HF uses the same

PASSED, FAILED = [], []


def check(name, fn, *args):
    try:
        fn(*args)
        PASSED.append(name)
        print('PASS', name, flush=True)
    except Exception:  # noqa: BLE001 - report every failure, keep going
        FAILED.append(name)
        print('FAIL', name, flush=True)
        traceback.print_exc()


# ----------------------------------------------------------------------------------- the model
class Model:
    def __init__(self):
        with open(CFG) as f:
            y = yaml.safe_load(f)
        self.N = y['num_layers']
        self.H = y['hidden_size']
        self.F = y['ffn_hidden_size']
        self.heads = y['num_attention_heads']
        self.E = y['num_experts']
        self.MTP = y['mtp_num_layers']
        self.Fm = y['moe_ffn_hidden_size']
        self.Fs = y['moe_shared_expert_intermediate_size']
        self.q_lora = y['q_lora_rank']
        self.kv_lora = y['kv_lora_rank']
        self.qk, self.pe, self.v = y['qk_head_dim'], y['qk_pos_emb_head_dim'], y['v_head_dim']
        self.V = y['vocab_size_in_config_file']
        m = re.fullmatch(r'\$\{moe_freq:"\[0\]\*(\d+)\+\[1\]\*(\d+)"\}', str(y['moe_layer_freq']))
        assert m and int(m.group(1)) + int(m.group(2)) == self.N, y['moe_layer_freq']
        self.first_k_dense = int(m.group(1))

    def is_moe(self, layer):  # HF layer id (the MTP layer N is MoE)
        return layer >= self.first_k_dense


M = Model()


# ----------------------------------------------------------------------------------- file readers


def load_mcore(path):
    return torch.load(path, map_location='cpu', weights_only=False)


# ----------------------------------------------------------------------------------- FP8 numerics


def within_fp8_bound(x, data_u8, scale, what, steps=1):
    """|dequant - x| <= `steps` half e4m3 steps: 2^-4 relative (normals), 2^-10 * scale (subnormals)."""
    d = dequant(data_u8, scale)
    s = expand_scale(scale[:(x.shape[0] + 127) // 128, :(x.shape[1] + 127) // 128], *x.shape)
    err = np.abs(d - x)
    bound = steps * (np.abs(x) * (2.0 ** -4) + s * (2.0 ** -10)) + 1e-30
    bad = err > bound
    assert not bad.any(), '%s: %d elements beyond the FP8 bound, worst |err| %g' % (what, int(bad.sum()), err.max())


# ----------------------------------------------------------------------------------- logical tensors
class Logical:
    """One full (common) tensor from the HF source: plain, or FP8 data + unpadded scales."""

    def __init__(self, hf, keys):
        parts = [hf[k] for k in keys]
        self.dtype = parts[0][0]
        self.arr = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        self.scale = None
        if self.dtype == 'F8_E4M3':
            scales = [hf[k[:-len('weight')] + 'weight_scale_inv'][1] for k in keys]
            self.scale = np.concatenate(scales) if len(scales) > 1 else scales[0]
            self.pow2 = is_pow2(self.scale)
        self.keys = keys


    def f32(self):
        if self.dtype == 'F8_E4M3':
            return dequant(self.arr, self.scale)
        if self.dtype == 'BF16':
            return bf16_to_f32(self.arr)
        return self.arr.astype(np.float32)


class Plain:
    """A full plain tensor computed here (the vocab-padded embedding / output layer)."""

    def __init__(self, dtype, arr):
        self.dtype, self.arr, self.scale = dtype, arr, None


CUR = {}


def quantize(x, pow2):
    """The quantizer of the current options: TE (numpy port above) or, for --quant_method pt or a
    non-zero --amax_epsilon, the independent reference of test_fp8_mldtypes (ckbridge's pt emits
    te's result where LoongForge's pt would give NaN weights)."""
    method, eps = CUR.get('method', 'te'), CUR.get('eps', 0.0)
    if method == 'te' and eps == 0.0:
        return quant_te(x, pow2)
    import test_fp8_mldtypes as mld
    q, s, _ = mld.reference(np.asarray(x, np.float32), 'F32', np.float32(eps), int(pow2), method)
    return q, s


TORCH_DTYPES = {'bfloat16': ('BF16', torch.bfloat16), 'float16': ('F16', torch.float16),
                'float32': ('F32', torch.float32)}


def to_dtype(x32, name):
    """float32 -> the --torch_dtype's raw values (RNE; ml_dtypes for bf16, numpy for fp16)."""
    if name == 'bfloat16':
        return x32.astype(ml_dtypes.bfloat16).view(np.uint16)
    if name == 'float16':
        return x32.astype(np.float16).view(np.uint16)
    return x32.astype(np.float32)


def padded_vocab(v, tp):
    if CUR.get('pad_to'):
        return CUR['pad_to']
    mult = CUR.get('divisible_by', 128) * tp
    return (v + mult - 1) // mult * mult


def pad_vocab(a, tp):
    vp = padded_vocab(a.shape[0], tp)
    return np.concatenate([a, np.repeat(a[-1:], vp - a.shape[0], axis=0)]) if vp > a.shape[0] else a


class Spec:
    """Expected value of one MCore entry."""

    def __init__(self, kind, dtype=None, arr=None, scale=None, pow2=None, how='', x=None):
        self.kind, self.dtype, self.arr, self.scale, self.pow2, self.how, self.x = kind, dtype, arr, scale, pow2, how, x


def shard_spec(lt, rule, n, t, fp8_target, ignore_tp_if_fp8, want_pow2=None):
    """Expectation for shard t of n of logical tensor lt (LoongForge get_chunked_weight, §9.3).
    want_pow2: the --force_pow_2_scales request (None: flag not given)."""
    if lt.dtype == 'F8_E4M3' and CUR.get('dequantize'):  # --dequantize_fp8: plain --torch_dtype tensors
        dt = CUR.get('torch_dtype', 'bfloat16')
        return Spec('plain', dtype=TORCH_DTYPES[dt][0], arr=split(to_dtype(lt.f32(), dt), rule, n, t))
    if lt.dtype == 'F8_E4M3':
        if ignore_tp_if_fp8:
            rule = 'repl'
        # ckbridge: without the flag the source's scale kind is kept (LoongForge: flag default False,
        # so a power-of-two V3.1 source would be re-quantized to linear scales, its B3).
        want = lt.pow2 if want_pow2 is None else want_pow2
        if aligned(lt.arr.shape, rule, n) and want == lt.pow2:  # direct: blocks move unchanged
            return Spec('fp8', arr=split(lt.arr, rule, n, t), scale=split(lt.scale, rule, n, t), pow2=lt.pow2,
                        how='direct')
        x = split(lt.f32(), rule, n, t)  # dequantize, re-quantize the shard
        q, s = quantize(x, want)
        return Spec('fp8', arr=q, scale=s, pow2=want, how='requant', x=x)
    if fp8_target:
        if ignore_tp_if_fp8:
            rule = 'repl'
        x = split(lt.f32(), rule, n, t)
        # ckbridge: a BF16 source quantizes with power-of-two scales unless --force_pow_2_scales=false
        # (LoongForge's default is linear; its --convert_to_fp8 does not apply to HF -> MCore at all).
        want = True if want_pow2 is None else want_pow2
        q, s = quantize(x, want)
        return Spec('fp8', arr=q, scale=s, pow2=want, how='quantize', x=x)
    return Spec('plain', dtype=lt.dtype, arr=split(lt.arr, rule, n, t))


# ----------------------------------------------------------------------------------- expected MCore
def vp_counts(L):
    """Decoder layers per virtual partition (LoongForge get_num_layers_in_vp_map, §6.1), MTP added last."""
    pp, vpp = L['pp'], L.get('vpp', 1)
    if L.get('layout'):
        stages = expand_layout(L['layout'])
        assert len(stages) == pp * vpp, (stages, pp, vpp)
        c = [st.count('t') for st in stages]
    elif L.get('custom'):
        c = list(L['custom'])
    elif L.get('first') is not None or L.get('last') is not None:  # uneven_vpp_partition (V-shaped)
        assert vpp == 2 and pp > 1
        first, last = L.get('first'), L.get('last')
        given = (first is not None) + (last is not None)
        rest = M.N - (first or 0) - (last or 0)
        k = rest // (pp - given) if pp > given else 0
        c = [0] * (2 * pp)
        for i in range(pp):
            n = first if (i == 0 and first is not None) else last if (i == pp - 1 and last is not None) else k
            c[i] = (n + 1) // 2 if (i == 0 and first is not None) or (i == pp - 1 and last is not None) else n // 2
            c[2 * pp - 1 - i] = n - c[i]
    else:
        c = balanced(M.N, pp * vpp)
    assert sum(c) == M.N, c
    c[-1] += L.get('mtp', M.MTP)
    return c


def vp_index(L, p, s):
    pp = L['pp']
    if L.get('dualpipev'):
        return p if s == 0 else pp * s + (pp - 1 - p)
    return p + pp * s


def stage_layers(L):
    """Per PP rank, per virtual stage: [(global id, local index)] (§6.2: local index restarts per
    virtual stage; MTP layers are numbered from 0)."""
    c = vp_counts(L)
    off = [sum(c[:i]) for i in range(len(c))]
    out = []
    for p in range(L['pp']):
        per_s = []
        for s in range(L.get('vpp', 1)):
            vp = vp_index(L, p, s)
            ids = list(range(off[vp], off[vp] + c[vp]))
            per_s.append([(g, g - M.N if g >= M.N else i) for i, g in enumerate(ids)])
        out.append(per_s)
    return out


def rank_files(L):
    """[(dir, t, p, e, et)] as LoongForge names and fills them (§5.4)."""
    tp, pp, ep, etp = L['tp'], L['pp'], L['ep'], L.get('etp')
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


def expected_checkpoint(hf, L):
    """dir -> {key: Spec} for layout L, from the HF tensors and LoongForge's rules."""
    CUR.clear()
    CUR.update(L.get('opts', {}))
    tp, ep = L['tp'], L['ep']
    etp = L.get('etp') or tp
    c2f = bool(L.get('convert_to_fp8'))
    wp = L.get('pow2')
    per_ep = M.E // ep
    stages = stage_layers(L)
    cache = {}

    def lt(*keys):
        if keys not in cache:
            cache[keys] = Logical(hf, list(keys))
        return cache[keys]

    def lin(d, key, keys, rule, t, n=tp, ignore_tp=False, extra=True, fp8_capable=True):
        d[key + '.weight'] = shard_spec(lt(*keys), rule, n, t, c2f and fp8_capable, ignore_tp, wp)
        if extra:
            d[key + '._extra_state'] = Spec('none')

    def layer(d, mp, hl, t, e, et):
        h = 'model.layers.%d.' % hl
        plain = lambda k, src: d.__setitem__(mp + k, shard_spec(lt(h + src), 'repl', 1, 0, False, False))  # noqa
        plain('input_layernorm.weight', 'input_layernorm.weight')
        a = mp + 'self_attention.'
        lin(d, a + 'linear_q_down_proj', [h + 'self_attn.q_a_proj.weight'], 'rows', t, ignore_tp=True)
        plain('self_attention.linear_q_up_proj.layer_norm_weight', 'self_attn.q_a_layernorm.weight')
        lin(d, a + 'linear_q_up_proj', [h + 'self_attn.q_b_proj.weight'], 'rows', t)
        lin(d, a + 'linear_kv_down_proj', [h + 'self_attn.kv_a_proj_with_mqa.weight'], 'rows', t, ignore_tp=True)
        plain('self_attention.linear_kv_up_proj.layer_norm_weight', 'self_attn.kv_a_layernorm.weight')
        lin(d, a + 'linear_kv_up_proj', [h + 'self_attn.kv_b_proj.weight'], 'rows', t)
        lin(d, a + 'linear_proj', [h + 'self_attn.o_proj.weight'], 'cols', t)
        plain('pre_mlp_layernorm.weight', 'post_attention_layernorm.weight')
        if not M.is_moe(hl):
            lin(d, mp + 'mlp.linear_fc1', [h + 'mlp.gate_proj.weight', h + 'mlp.up_proj.weight'], 'gateup', t)
            lin(d, mp + 'mlp.linear_fc2', [h + 'mlp.down_proj.weight'], 'cols', t)
            return
        plain('mlp.router.weight', 'mlp.gate.weight')
        plain('mlp.router.expert_bias', 'mlp.gate.e_score_correction_bias')
        s = h + 'mlp.shared_experts.'
        lin(d, mp + 'mlp.shared_experts.linear_fc1', [s + 'gate_proj.weight', s + 'up_proj.weight'], 'gateup', t)
        lin(d, mp + 'mlp.shared_experts.linear_fc2', [s + 'down_proj.weight'], 'cols', t)
        for i in range(per_ep):
            x = h + 'mlp.experts.%d.' % (e * per_ep + i)
            for fc, keys, rule in (('linear_fc1', [x + 'gate_proj.weight', x + 'up_proj.weight'], 'gateup'),
                                   ('linear_fc2', [x + 'down_proj.weight'], 'cols')):
                if L.get('grouped'):
                    mod = mp + 'mlp.experts.' + fc
                    d[mod + '.weight%d' % i] = shard_spec(lt(*keys), rule, etp, et, c2f, False, wp)
                    d[mod + '._extra_state'] = Spec('none')
                else:
                    lin(d, mp + 'mlp.experts.local_experts.%d.%s' % (i, fc), keys, rule, et, n=etp)

    out = {}
    vpp = L.get('vpp', 1)
    for d_name, t, p, e, et in rank_files(L):
        models = {}
        for s_idx, stage in enumerate(stages[p]):
            d = stage_dict(hf, L, stage, p == 0 and s_idx == 0, t, e, et, lt, lin, layer)
            if d:  # a virtual stage without tensors gets no key (§6.4)
                models['model%d' % s_idx if vpp > 1 else 'model'] = d
        out[d_name] = models
    return out


def stage_dict(hf, L, stage, first, t, e, et, lt, lin, layer):
    """The state dict of one (virtual) stage of one rank file."""
    tp = L['tp']
    d = {}
    if True:
        def emb():
            dt, arr = hf['model.embed_tokens.weight']
            return shard_spec(Plain(dt, pad_vocab(arr, tp)), 'rows', tp, t, False, False)
        if first:
            d['embedding.word_embeddings.weight'] = emb()
        for g, loc in stage:
            if g < M.N:
                layer(d, 'decoder.layers.%d.' % loc, g, t, e, et)
        if any(g == M.N - 1 for g, _ in stage):
            d['decoder.final_layernorm.weight'] = shard_spec(lt('model.norm.weight'), 'repl', 1, 0, False, False)
            d['decoder.final_layernorm._extra_state'] = Spec('none')
            dt, arr = hf['lm_head.weight']
            d['output_layer.weight'] = shard_spec(Plain(dt, pad_vocab(arr, tp)), 'rows', tp, t, False, False)
        for g, loc in stage:
            if g >= M.N:
                h = 'model.layers.%d.' % g
                mp = 'mtp.layers.%d.' % loc
                d['embedding.word_embeddings.weight'] = emb()  # the MTP stage's copy (LoongForge §4.5)
                d[mp + 'enorm.weight'] = shard_spec(lt(h + 'enorm.weight'), 'repl', 1, 0, False, False)
                d[mp + 'hnorm.weight'] = shard_spec(lt(h + 'hnorm.weight'), 'repl', 1, 0, False, False)
                # eh_proj: rows over TP, no _extra_state. LoongForge quantizes it to FP8 in every
                # conversion (hf dtype bf16, mcore dtype fp8); ckbridge only with --convert_to_fp8.
                lin(d, mp + 'eh_proj', [h + 'eh_proj.weight'], 'rows', t, extra=False)
                d[mp + 'final_layernorm.weight'] = shard_spec(lt(h + 'shared_head.norm.weight'), 'repl', 1, 0,
                                                              False, False)
                d[mp + 'final_layernorm._extra_state'] = Spec('none')
                layer(d, mp + 'transformer_layer.', g, t, e, et)
    return d


# ----------------------------------------------------------------------------------- runners
def run(args, expect_ok=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        raise AssertionError('%s failed (%d):\n%s%s' % (' '.join(map(str, args)), r.returncode, r.stdout, r.stderr))
    return r


def layout_flags(L, layout=True):
    """The converter flags of layout L; layout=False: only the non-layout ones (the way back from
    MCore reads the layout from the checkpoint)."""
    f = []
    if layout:
        f += ['--tensor_model_parallel_size', L['tp'], '--pipeline_model_parallel_size', L['pp'],
              '--expert_parallel_size', L['ep']]
        if L.get('etp') is not None:
            f += ['--expert_tensor_parallel_size', L['etp']]
        if L.get('grouped'):
            f += ['--moe-grouped-gemm']
        if L.get('custom'):
            f += ['--custom_pipeline_layers', ','.join(map(str, L['custom']))]
        if L.get('layout'):
            f += ['--pipeline_model_parallel_layout', L['layout']]
        elif L.get('layers_per_vstage'):
            f += ['--num_layers_per_virtual_pipeline_stage', L['layers_per_vstage']]
        elif L.get('vpp', 1) > 1:
            f += ['--num-virtual-stages-per-pipeline-rank', L['vpp']]
        if L.get('dualpipev'):
            f += ['--vpp-scheduler', 'dualpipev']
        if L.get('first') is not None:
            f += ['--decoder-first-pipeline-num-layers', L['first']]
        if L.get('last') is not None:
            f += ['--decoder-last-pipeline-num-layers', L['last']]
    o = L.get('opts', {})
    if layout and o.get('pad_to'):
        f += ['--pad_vocab_size_to', o['pad_to']]
    if layout and o.get('divisible_by'):
        f += ['--make_vocab_size_divisible_by', o['divisible_by']]
    if o.get('method'):
        f += ['--quant_method', o['method']]
    if o.get('eps'):
        f += ['--amax_epsilon', repr(float(o['eps']))]
    if o.get('dequantize'):
        f += ['--dequantize_fp8']
    if o.get('torch_dtype'):
        f += ['--torch_dtype', o['torch_dtype']]
    if L.get('convert_to_fp8'):
        f += ['--convert_to_fp8']
    if L.get('pow2') is not None:
        f += ['--force_pow_2_scales' if L['pow2'] else '--force_pow_2_scales=false']
    return f + list(L.get('extra', []))


def convert(src, dst, L, to='mcore', expect_ok=True, frm=None, layout=True, env=None, workers=2):
    frm = frm or ('huggingface' if to == 'mcore' else 'mcore')
    args = [CONVERT, '--load_platform', frm, '--save_platform', to, '--config_file', CFG, '--convert_file', CONV,
            '--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors', '--max_workers', workers,
            '--hf_max_shard_size', SHARD, '-q'] + layout_flags(L, layout)
    if env is None:
        return run(args, expect_ok)
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=dict(os.environ, **env))
    if expect_ok and r.returncode != 0:
        raise AssertionError('%s failed (%d):\n%s%s' % (' '.join(map(str, args)), r.returncode, r.stdout, r.stderr))
    return r


# ----------------------------------------------------------------------------------- checks
def check_file(path, exp_models, L, notes):
    obj = load_mcore(path)
    assert set(obj) == {'args', 'checkpoint_version', 'iteration'} | set(exp_models), (sorted(obj), sorted(exp_models))
    assert obj['checkpoint_version'] == 3.0 and obj['iteration'] == 0, (obj['checkpoint_version'], obj['iteration'])
    a = vars(obj['args'])
    want_args = {'num_layers': M.N, 'hidden_size': M.H, 'num_attention_heads': M.heads,
                 'tensor_model_parallel_size': L['tp'], 'pipeline_model_parallel_size': L['pp'],
                 'expert_model_parallel_size': L['ep'], 'expert_tensor_parallel_size': L.get('etp') or L['tp'],
                 'num_experts': M.E, 'mtp_num_layers': L.get('mtp', M.MTP), 'vocab_size': M.V,
                 'padded_vocab_size': pad_vocab(np.zeros((M.V, 1)), L['tp']).shape[0],  # CUR: this layout's
                 'moe_grouped_gemm': bool(L.get('grouped'))}
    for k, v in want_args.items():
        assert k in a and a[k] == v, 'args.%s = %r, expected %r' % (k, a.get(k, '<missing>'), v)
    for mk, exp in exp_models.items():
        check_model(obj[mk], exp, notes, L, mk)


def check_model(model, exp, notes, L, mk):
    got, want = set(model), set(exp)
    assert got == want, '%s: keys differ: missing %s; extra %s' % (mk, sorted(want - got)[:10],
                                                                   sorted(got - want)[:10])
    for k, s in exp.items():
        v = model[k]
        if s.kind == 'none':
            assert v is None, '%s: expected None, got %r' % (k, type(v))
            continue
        if s.kind == 'plain':
            assert isinstance(v, torch.Tensor), '%s: expected a tensor, got %r' % (k, type(v))
            dt, arr = t2np(v)
            assert dt == s.dtype, '%s: dtype %s, expected %s' % (k, dt, s.dtype)
            assert arr.shape == s.arr.shape, '%s: shape %s, expected %s' % (k, arr.shape, s.arr.shape)
            assert arr.tobytes() == np.ascontiguousarray(s.arr).tobytes(), '%s: values differ' % k
            continue
        # FP8: the TE Float8BlockwiseQTensor's rowwise data (uint8) and scale_inv (fp32, padded to 4 cols)
        assert not isinstance(v, torch.Tensor) and hasattr(v, 'data'), '%s: expected a TE FP8 tensor, got %r' % (
            k, type(v))
        assert v.shape == s.arr.shape, '%s: shape %s, expected %s' % (k, v.shape, s.arr.shape)
        dt, data = t2np(v.data)
        assert dt == 'U8' and data.shape == s.arr.shape, (k, dt, data.shape)
        _, scale = t2np(v.scale)
        want_scale = pad4(s.scale)
        assert scale.shape == want_scale.shape, '%s: scale shape %s, expected %s' % (k, scale.shape, want_scale.shape)
        assert np.all(scale[:, s.scale.shape[1]:] == 0), '%s: scale padding columns are not zero' % k
        q = v.quantizer
        assert q['force_pow_2_scales'] is bool(s.pow2), '%s: quantizer force_pow_2_scales %r, scales pow2 %r' % (
            k, q['force_pow_2_scales'], s.pow2)
        eps = float(np.float32(L.get('opts', {}).get('eps', 0.0)))  # the flag's value as a float32
        assert q['amax_epsilon'] == eps and q['block_scaling_dim'] == 2, (k, q, eps)
        fake = TORCH_DTYPES[L.get('opts', {}).get('torch_dtype', 'bfloat16')][1]
        assert v.dtype == fake, '%s: fake dtype %s, expected %s' % (k, v.dtype, fake)
        if s.x is not None:  # quantized here: bound first (a clear message), then the TE bits
            within_fp8_bound(s.x, data, scale, k)
            assert is_pow2(scale[:, :s.scale.shape[1]]) == s.pow2, '%s: scale kind is not pow2=%s' % (k, s.pow2)
        assert scale[:, :s.scale.shape[1]].tobytes() == s.scale.tobytes(), '%s: scale_inv differs (%s)' % (k, s.how)
        assert data.tobytes() == np.ascontiguousarray(s.arr).tobytes(), '%s: FP8 data differs (%s)' % (k, s.how)
        notes[s.how] = notes.get(s.how, 0) + 1


def check_mcore(hf, out, L):
    with open(os.path.join(out, 'latest_checkpointed_iteration.txt')) as f:
        assert f.read().strip() == 'release'
    exp = expected_checkpoint(hf, L)
    have = sorted(os.listdir(os.path.join(out, 'release')))
    assert have == sorted(exp), 'rank directories %s, expected %s' % (have, sorted(exp))
    assert sorted(os.listdir(out)) == [MANIFEST, 'latest_checkpointed_iteration.txt', 'release'], os.listdir(out)
    notes = {}
    n_entries = 0
    for d, e in exp.items():
        files = os.listdir(os.path.join(out, 'release', d))
        assert files == ['model_optim_rng.pt'], (d, files)
        check_file(os.path.join(out, 'release', d, 'model_optim_rng.pt'), e, L, notes)
        n_entries += sum(len(m) for m in e.values())
    print('    %d files, %d entries checked; FP8 paths %s' % (len(exp), n_entries, notes))
    return notes


MANIFEST = 'ckbridge-manifest.json'  # every conversion output has one (checked by test_verify_manifest.py)


def listing(d):
    return sorted(n for n in os.listdir(d) if n != MANIFEST)


def same_files(a, b, names=None):
    names = names or listing(a)
    assert listing(b) == listing(a), 'file sets differ: %s vs %s' % (listing(a), listing(b))
    for n in names:
        with open(os.path.join(a, n), 'rb') as f1, open(os.path.join(b, n), 'rb') as f2:
            assert f1.read() == f2.read(), '%s differs' % n


def check_back_close(src_hf, out_hf, exact_ok, steps):
    """HF output vs source: identical tensors where possible, else FP8 within the bound of the source."""
    a, b = read_hf(src_hf), read_hf(out_hf)
    assert set(a) == set(b), 'keys differ: %s' % sorted(set(a) ^ set(b))[:10]
    approx = []
    for k, (dt, arr) in a.items():
        if k.endswith('weight_scale_inv'):
            continue
        dt2, arr2 = b[k]
        assert dt == dt2 and arr.shape == arr2.shape, (k, dt, dt2, arr.shape, arr2.shape)
        if arr.tobytes() == arr2.tobytes() and (dt != 'F8_E4M3' or a[k[:-6] + 'weight_scale_inv'][1].tobytes() ==
                                                 b[k[:-6] + 'weight_scale_inv'][1].tobytes()):
            continue
        assert dt == 'F8_E4M3' and not exact_ok(k), '%s differs' % k
        x = dequant(arr, a[k[:-6] + 'weight_scale_inv'][1])
        s2 = b[k[:-6] + 'weight_scale_inv'][1]
        within_fp8_bound(x, arr2, s2, k, steps)
        approx.append(k)
    return approx


# ----------------------------------------------------------------------------------- main
def main():
    for p in (CONVERT, MAKE_TINY):
        if not os.path.exists(p):
            print('missing %s (build the ckbridge_convert and deepseek_v3_make_tiny targets)' % p)
            print('0 passed, 1 failed')
            return 1
    work = tempfile.mkdtemp(prefix='ckb_convert_ds_')
    try:
        return run_all(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


LAYOUTS = [
    # name, source, layout
    ('fp8_tp2_pp2_ep2_etp1_grouped', 'fp8', dict(tp=2, pp=2, ep=2, etp=1, grouped=True)),
    ('fp8_tp1_pp1_ep4_sequential', 'fp8', dict(tp=1, pp=1, ep=4)),
    ('fp8_tp2_pp2_ep2_etp_unset', 'fp8', dict(tp=2, pp=2, ep=2, grouped=True)),
    ('fp8_pp2_custom_1_3', 'fp8', dict(tp=2, pp=2, ep=2, etp=1, grouped=True, custom=[1, 3])),
    ('bf16_tp2_pp2_ep2_etp1_grouped', 'bf16', dict(tp=2, pp=2, ep=2, etp=1, grouped=True)),
    ('bf16_convert_to_fp8', 'bf16', dict(tp=2, pp=2, ep=2, etp=1, grouped=True, convert_to_fp8=True)),
    ('fp8_tp4_requant', 'fp8', dict(tp=4, pp=1, ep=2)),
    # scale kinds: a power-of-two (V3.1 / UE8M0) source is kept as is; --force_pow_2_scales re-quantizes
    # a linear source to powers of two, =false a power-of-two source to linear scales
    ('fp8pow2_tp2_kept', 'fp8pow2', dict(tp=2, pp=1, ep=2, etp=1, grouped=True)),
    ('fp8_force_pow2', 'fp8', dict(tp=2, pp=1, ep=2, etp=1, grouped=True, pow2=True)),
    ('fp8pow2_force_linear', 'fp8pow2', dict(tp=2, pp=1, ep=2, etp=1, grouped=True, pow2=False)),
    # the pipeline layouts of round_trip.sh --all: virtual stages (model0/model1 per file), DualPipeV
    # (rank 0 holds the first and the last virtual stage), a layout string with an MTP stage, first /
    # last stage sizes, layers per virtual stage, ETP 2 != TP 4
    ('fp8_vpp2', 'fp8', dict(tp=1, pp=2, vpp=2, ep=2, grouped=True)),
    ('fp8_vpp2_dualpipev', 'fp8', dict(tp=1, pp=2, vpp=2, dualpipev=True, ep=2, grouped=True)),
    ('fp8_layout_mtp_stage', 'fp8', dict(tp=1, pp=2, vpp=2, layout='Ett|t|t|mL', ep=2, grouped=True)),
    ('fp8_first_last_dualpipev', 'fp8', dict(tp=1, pp=2, vpp=2, dualpipev=True, first=2, last=2, ep=2)),
    ('fp8_layers_per_vstage_1', 'fp8', dict(tp=2, pp=2, vpp=2, layers_per_vstage=1, ep=2, etp=1, grouped=True)),
    ('bf16_tp4_ep2_etp2', 'bf16', dict(tp=4, pp=1, ep=2, etp=2, grouped=True)),
]


def run_all(work):
    src = {k: os.path.join(work, 'hf_' + k) for k in ('fp8', 'bf16', 'fp8pow2')}

    def gen():
        for k, d in src.items():
            dtype = ['--dtype', 'bf16'] if k == 'bf16' else ['--dtype', 'fp8'] + (['--pow2'] if k == 'fp8pow2' else [])
            run([MAKE_TINY, '--config_file', CFG, '--convert_file', CONV, '--out', d] + dtype)
    check('generate tiny FP8 (linear and power-of-two scales) and BF16 HF checkpoints', gen)
    if FAILED:
        return finish()
    hf = {k: read_hf(d) for k, d in src.items()}

    def source_kinds():
        f8 = [k for k, v in hf['fp8'].items() if v[0] == 'F8_E4M3']
        assert f8 and not any(v[0] == 'F8_E4M3' for v in hf['bf16'].values())
        assert not is_pow2(hf['fp8'][f8[0][:-6] + 'weight_scale_inv'][1]), 'generator should give linear scales'
        assert all(is_pow2(v[1]) for k, v in hf['fp8pow2'].items() if k.endswith('_scale_inv'))
        assert set(hf['fp8pow2']) == set(hf['fp8'])
    check('sources: FP8 (linear / power-of-two scales) and BF16', source_kinds)

    for name, s, L in LAYOUTS:
        out = os.path.join(work, name, 'mcore')
        back = os.path.join(work, name, 'hf')
        ok = [True]

        def fwd():
            try:
                convert(src[s], out, L)
            except Exception:
                ok[0] = False
                raise
        check('%s: HF -> MCore runs' % name, fwd)
        if not ok[0]:
            continue

        def verify(name=name, s=s, L=L, out=out):
            notes = check_mcore(hf[s], out, L)
            if name == 'fp8_tp4_requant':
                assert notes.get('requant', 0) > 0 and notes.get('direct', 0) > 0, notes
            elif L.get('pow2') is not None:
                assert set(notes) == {'requant'}, notes
            elif L.get('convert_to_fp8'):
                assert notes.get('quantize', 0) > 0 and 'direct' not in notes, notes
            elif s.startswith('fp8'):
                assert set(notes) == {'direct'}, notes
            else:
                assert not notes, notes
        check('%s: every MCore file, key and tensor as expected' % name, verify)

        def rev(s=s, L=L, name=name, out=out, back=back):
            # no layout flags: the source layout is read from the checkpoint
            convert(os.path.join(out, 'release'), back, L, to='huggingface', layout=False)
            if name == 'fp8_tp4_requant':
                # blocks cut by TP 4 (o_proj, shared and expert fc1/fc2: 64-wide shards) come back re-quantized
                approx = check_back_close(src[s], back, lambda k: not re.search(
                    r'o_proj|shared_experts|experts\.\d+\.', k), steps=2)  # quantized twice
                assert approx, 'expected re-quantized tensors'
                print('    %d tensors re-quantized within the FP8 bound, the rest byte-identical' % len(approx))
            elif L.get('pow2') is not None:  # every FP8 tensor came through one re-quantization
                approx = check_back_close(src[s], back, lambda k: False, steps=1)
                b = read_hf(back)
                assert all(is_pow2(v[1]) == L['pow2'] for k, v in b.items() if k.endswith('_scale_inv'))
                print('    %d FP8 tensors within the FP8 bound, scales pow2=%s' % (len(approx), L['pow2']))
            elif L.get('convert_to_fp8'):
                a, b = hf[s], read_hf(back)
                n_fp8 = 0
                for k, (dt, arr) in a.items():
                    if k.endswith('weight_scale_inv'):
                        continue
                    dt2, arr2 = b[k]
                    if dt2 == 'F8_E4M3':
                        n_fp8 += 1
                        within_fp8_bound(bf16_to_f32(arr), arr2, b[k[:-6] + 'weight_scale_inv'][1], k)
                    elif arr2.tobytes() != arr.tobytes():
                        # FP8 in MCore (eh_proj) and BF16 in HF: dequantized, so within the FP8 bound
                        assert dt2 == dt == 'BF16' and k.endswith('eh_proj.weight'), '%s differs' % k
                        x, y = bf16_to_f32(arr), bf16_to_f32(arr2)
                        assert np.all(np.abs(y - x) <= np.abs(x) * 2.0 ** -3 + 1e-6), '%s beyond bound' % k
                assert n_fp8 > 0
                print('    %d HF tensors FP8, within the FP8 bound of the BF16 source' % n_fp8)
            else:
                same_files(src[s], back)
        check('%s: MCore -> HF (layout read from the checkpoint) back to the source' % name, rev)

    check_mcore_to_mcore(work, src, hf)
    check_coverage(work, src, hf)
    check_bad_inputs(work, src)
    check_dry_run(work, src)
    return finish()


def check_mcore_to_mcore(work, src, hf):
    """MCore (TP2 PP2 EP2 ETP1 grouped) -> MCore (TP1 PP1 EP4, and TP1 PP2 VPP2 DualPipeV EP2): the
    source layout read from the checkpoint, every target tensor against the HF-derived expectation,
    then back to HF without layout flags."""
    mc = os.path.join(work, 'fp8_tp2_pp2_ep2_etp1_grouped', 'mcore')
    targets = [('mcore_to_mcore_tp1_ep4', dict(tp=1, pp=1, ep=4, grouped=True)),
               ('mcore_to_mcore_vpp2_dualpipev', dict(tp=1, pp=2, vpp=2, dualpipev=True, ep=2, grouped=True))]
    for name, L in targets:
        out = os.path.join(work, name, 'mcore')
        back = os.path.join(work, name, 'hf')

        def f(L=L, out=out, back=back):
            assert os.path.isdir(mc), 'needs the first layout converted'
            r = convert(mc, out, L, to='mcore', frm='mcore')
            notes = check_mcore(hf['fp8'], out, L)
            assert set(notes) == {'direct'}, notes
            convert(out, back, {}, to='huggingface', layout=False)
            same_files(src['fp8'], back)
        check('%s: MCore -> MCore, every tensor as expected; back to HF byte-identical' % name, f)


# ----------------------------------------------------------------------------------- coverage and bad input
def copy_modified(src, dst, edit):
    """Copy an HF directory through the safetensors package, with edit(shard_name, dict) applied."""
    from safetensors.torch import load_file, save_file  # torch 1.13: BF16 yes, FP8 no
    os.makedirs(dst)
    index = json.load(open(os.path.join(src, 'model.safetensors.index.json')))
    for p in sorted(glob.glob(os.path.join(src, '*.safetensors'))):
        n = os.path.basename(p)
        t = load_file(p)
        edit(n, t)
        save_file(t, os.path.join(dst, n))
        for k in list(index['weight_map']):
            if index['weight_map'][k] == n and k not in t:
                del index['weight_map'][k]
        for k in t:
            index['weight_map'][k] = n
    with open(os.path.join(dst, 'model.safetensors.index.json'), 'w') as f:
        json.dump(index, f, indent=2)
    shutil.copy(os.path.join(src, 'config.json'), dst)


BASE = dict(tp=2, pp=2, ep=2, etp=1, grouped=True)


def refused(src_dir, out, L, needles, to='mcore'):
    r = convert(src_dir, out, L, to=to, expect_ok=False, layout='tp' in L)
    msg = r.stderr + r.stdout
    assert r.returncode != 0, 'accepted (exit 0): %s' % msg
    assert r.returncode == 1, 'exit %d (crash?): %s' % (r.returncode, msg)
    assert 'error' in msg, msg
    for n in needles:
        assert n in msg, 'message does not name %r: %s' % (n, msg.strip())
    assert not os.path.exists(out) or not os.listdir(out), 'output written: %s' % os.listdir(out)
    print('    -> %s' % msg.strip().splitlines()[-1][:200])


def check_coverage(work, src, hf):
    first = sorted(glob.glob(os.path.join(src['bf16'], '*.safetensors')))[0]
    first = os.path.basename(first)

    def unknown():
        d = os.path.join(work, 'cov_unknown')
        copy_modified(src['bf16'], d, lambda n, t: t.__setitem__('model.layers.1.mlp.mystery.weight',
                                                                  torch.zeros(4, 4)) if n == first else 0)
        refused(d, os.path.join(work, 'cov_unknown_out'), BASE, ['model.layers.1.mlp.mystery.weight'])
    check('coverage: an unknown extra tensor is refused, naming it', unknown)

    victim = 'model.layers.2.mlp.experts.5.up_proj.weight'

    def missing():
        d = os.path.join(work, 'cov_missing')
        copy_modified(src['bf16'], d, lambda n, t: t.pop(victim, None))
        assert victim not in read_hf(d)
        refused(d, os.path.join(work, 'cov_missing_out'), BASE, [victim])
    check('coverage: a missing tensor is refused, naming it', missing)


def check_bad_inputs(work, src):
    victim = 'model.layers.1.self_attn.q_a_layernorm.weight'

    def wrong_shape():
        d = os.path.join(work, 'bad_shape')

        def edit(n, t):
            if victim in t:
                t[victim] = t[victim][:-1].clone()
        copy_modified(src['bf16'], d, edit)
        refused(d, os.path.join(work, 'bad_shape_out'), BASE, [victim])
    check('bad input: a tensor of the wrong shape', wrong_shape)

    cases = [
        ('TP 3 does not divide heads / ffn', dict(BASE, tp=3, etp=None), ['--tensor_model_parallel_size 3',
                                                                          'num_attention_heads 4']),
        ('--custom_pipeline_layers not summing to num_layers', dict(BASE, custom=[1, 2]), ['--custom_pipeline_layers']),
        ('--custom_pipeline_layers with the wrong count', dict(BASE, custom=[1, 1, 2]), ['--custom_pipeline_layers']),
        ('EP 3 does not divide the experts', dict(BASE, ep=3), ['--expert_parallel_size']),
        ('--fp8_force_no_requant with TP 4 (blocks cut)', dict(tp=4, pp=1, ep=2, extra=['--fp8_force_no_requant']),
         ['--fp8_force_no_requant']),
    ]
    for i, (what, L, needles) in enumerate(cases):
        check('bad input: ' + what, refused, src['fp8'], os.path.join(work, 'bad_%d' % i), L, needles)

    def occupied():
        out = os.path.join(work, 'occupied')
        os.makedirs(out)
        with open(os.path.join(out, 'keep.txt'), 'w') as f:
            f.write('mine')
        r = convert(src['fp8'], out, BASE, expect_ok=False)
        assert r.returncode == 1 and '--save_ckpt_path' in r.stderr and 'not empty' in r.stderr, r.stderr
        assert os.listdir(out) == ['keep.txt'] and open(os.path.join(out, 'keep.txt')).read() == 'mine'
        print('    -> %s' % r.stderr.strip().splitlines()[-1][:200])
    check('bad input: output directory already holding files', occupied)

    def wrong_layout():
        mc = os.path.join(work, 'fp8_tp2_pp2_ep2_etp1_grouped', 'mcore', 'release')
        assert os.path.isdir(mc), 'needs the first layout converted'
        # the source layout is read from the checkpoint; flags that restate it differently are refused
        # (omitting --moe-grouped-gemm now means "as the checkpoint", so it is no longer an error)
        refused(mc, os.path.join(work, 'bad_layout_tp'), dict(BASE, tp=1),
                ['--tensor_model_parallel_size 1', 'contradicts the checkpoint'], to='huggingface')
        refused(mc, os.path.join(work, 'bad_layout_pp'), dict(BASE, pp=1),
                ['--pipeline_model_parallel_size 1', 'contradicts the checkpoint'], to='huggingface')
        refused(mc, os.path.join(work, 'bad_layout_etp'), dict(BASE, etp=2),
                ['--expert_tensor_parallel_size 2', 'contradicts the checkpoint'], to='huggingface')
        refused(mc, os.path.join(work, 'bad_layout_split'), dict(BASE, custom=[1, 3]),
                ['the pipeline flags', '[1,3]', 'the checkpoint holds [2,2]'], to='huggingface')
    check('bad input: MCore -> HF with flags contradicting the checkpoint (TP, PP, ETP, experts, split)',
          wrong_layout)


def check_dry_run(work, src):
    def dry():
        out = os.path.join(work, 'dry')
        L = dict(BASE, extra=['--dry-run'])
        r = convert(src['fp8'], out, L)
        assert 'plan:' in r.stdout and 'output files' in r.stdout, r.stdout
        assert not os.path.exists(out), 'dry run wrote %s' % out
        n = len(rank_files(BASE))
        assert ('plan: %d output files' % n) in r.stdout, (n, r.stdout)
        print('    -> %s' % r.stdout.strip().splitlines()[0])
        mc = os.path.join(work, 'fp8_tp2_pp2_ep2_etp1_grouped', 'mcore', 'release')
        r = convert(mc, out, L, to='huggingface')
        assert 'plan:' in r.stdout and not os.path.exists(out), r.stdout
        print('    -> %s' % r.stdout.strip().splitlines()[0])
    check('--dry-run prints the plan and writes nothing (both directions)', dry)


def finish():
    print('%d passed, %d failed' % (len(PASSED), len(FAILED)))
    return 1 if FAILED else 0


if __name__ == '__main__':
    sys.exit(main())
