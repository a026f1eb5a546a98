"""Acceptance tests of the second model family, Llama 3 (dense, GQA), against independent expectations.

Drives $CKB_BUILD_DIR/examples/deepseek_v3_make_tiny and ckbridge_convert with --model llama3 on
the tiny model of configs/llama3/llama3_tiny.yaml and checks, without using any of the converter's code:
  1. the generated HF checkpoint: Llama's tensor names and shapes, LlamaForCausalLM config.json;
  2. HF -> MCore (BF16 and FP8 sources; TP 1/2, PP 1/2/4; --convert_to_fp8): every rank file loaded
     with torch.load (TE classes from tests/python/te_stub), its key set (LoongForge's llama3 TE
     names: norms folded into linear_qkv / linear_fc1 as layer_norm_weight, _extra_state entries)
     and every tensor byte for byte against numpy: the linear_qkv shards are computed here as
     per query group [q heads of the group; k_g; v_g] by reshaping HF's q/k/v (FP8 scales on the
     block grid), whole groups per TP rank; SwiGLU [gate_r; up_r]; o_proj/down_proj column splits;
     vocab padding with copies of the last row; quantization against a numpy port of TE's quantizer;
  3. MCore -> HF back to the source: every file byte-identical; MCore -> MCore -> HF too;
     with head_dim 64 (groups and the o_proj cut off the 128 blocks) the FP8 shards are
     re-quantized, checked bit for bit against a numpy port of TE's quantizer;
  4. refusals: TP 4 with 2 query groups (names the flag and the groups), a k_proj of the wrong shape
     (names the tensor), an unknown --model.
Exits non-zero on failure; the last line is "N passed, M failed".
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'te_stub'))
os.environ.setdefault('TE_STUB_VERSION', '2.9')  # the converter's default --te_version

import torch  # noqa: E402

sys.path.insert(0, HERE)
# the numpy references shared with the other converter tests (readers, FP8 numerics)
from ckb_numpy import bf16_to_f32, dequant, is_pow2, quant_te, read_hf, t2np  # noqa: E402

SRC = os.environ.get('CKB_SOURCE_DIR', os.path.join(HERE, '..', '..'))
BUILD = os.environ.get('CKB_BUILD_DIR', os.path.join(SRC, 'build'))
CONVERT = os.path.join(BUILD, 'examples', 'ckbridge_convert')
MAKE_TINY = os.path.join(BUILD, 'examples', 'deepseek_v3_make_tiny')
CFG = os.path.join(SRC, 'configs', 'llama3', 'llama3_tiny.yaml')
CONV = os.path.join(SRC, 'configs', 'llama3', 'ckpt_convert', 'llama3_convert.yaml')

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


with open(CFG) as _f:
    Y = yaml.safe_load(_f)
N, H, F, V = Y['num_layers'], Y['hidden_size'], Y['ffn_hidden_size'], Y['vocab_size']
HEADS, G = Y['num_attention_heads'], Y['num_query_groups']
HD = Y.get('kv_channels') or H // HEADS
R = HEADS // G


# ----------------------------------------------------------------------------------- readers


# ----------------------------------------------------------------------------------- expectations
def grouped_qkv(q, k, v, rows_per_head):
    """MCore linear_qkv from HF q/k/v (rows may be FP8 scale block rows): per group [q_g; k_g; v_g]."""
    cols = q.shape[1]
    return np.concatenate([q.reshape(G, R * rows_per_head, cols), k.reshape(G, rows_per_head, cols),
                           v.reshape(G, rows_per_head, cols)], axis=1).reshape(-1, cols)


def split(a, rule, n, t):
    if rule == 'repl' or n == 1:
        return a
    if rule in ('rows', 'qkv'):  # grouped QKV: whole groups are contiguous rows after grouped_qkv()
        k = a.shape[0] // n
        return a[t * k:(t + 1) * k]
    if rule == 'cols':
        k = a.shape[1] // n
        return a[:, t * k:(t + 1) * k]
    if rule == 'gateup':
        f = a.shape[0] // 2
        k = f // n
        return np.concatenate([a[t * k:(t + 1) * k], a[f + t * k:f + (t + 1) * k]])
    raise AssertionError(rule)


def pad_vocab(a, tp):
    mult = 128 * tp
    vp = (a.shape[0] + mult - 1) // mult * mult
    return np.concatenate([a, np.repeat(a[-1:], vp - a.shape[0], axis=0)])


class Spec:
    def __init__(self, kind, arr=None, scale=None, dtype=None):
        self.kind, self.arr, self.scale, self.dtype = kind, arr, scale, dtype


def full_linear(hf, keys, kind, hd):
    """The full common tensor of a linear, its scale and its float32 values (FP8 sources), by kind."""
    parts = [hf[k] for k in keys]
    dtype = parts[0][0]
    arrs = [p[1] for p in parts]
    scales = [hf[k[:-len('weight')] + 'weight_scale_inv'][1] for k in keys] if dtype == 'F8_E4M3' else None
    f32 = [dequant(a, sc) for a, sc in zip(arrs, scales)] if scales else None
    if kind == 'qkv':
        arr = grouped_qkv(*arrs, hd)
        scale = grouped_qkv(*scales, hd // 128) if scales and hd % 128 == 0 else None
        x = grouped_qkv(*f32, hd) if f32 else None
    else:
        arr = np.concatenate(arrs)
        scale = np.concatenate(scales) if scales else None
        x = np.concatenate(f32) if f32 else None
    return dtype, arr, scale, x, bool(scales) and is_pow2(np.concatenate([sc.ravel() for sc in scales]))


def aligned(kind, shape, n, hd):
    """Do the shard's pieces fall on 128x128 blocks of the source parts (FP8 moves unchanged)?"""
    if kind == 'qkv':
        return hd % 128 == 0  # q runs are multiples of head_dim, k and v are one head_dim each
    if kind == 'cols':
        return (shape[1] // n) % 128 == 0
    return (shape[0] // 2 // n) % 128 == 0  # gateup


def linear_spec(hf, keys, kind, n, t, to_fp8, hd):
    rule = {'qkv': 'qkv', 'gateup': 'gateup', 'cols': 'cols'}[kind]
    dtype, arr, scale, x, pow2 = full_linear(hf, keys, kind, hd)
    if dtype == 'F8_E4M3':
        if aligned(kind, arr.shape, n, hd):  # blocks move unchanged
            return Spec('fp8', split(arr, rule, n, t), split(scale, rule, n, t))
        q, s = quant_te(split(x, rule, n, t), pow2)  # dequantize, re-quantize the shard (scale kind kept)
        return Spec('fp8', q, s)
    if to_fp8:
        q, s = quant_te(split(bf16_to_f32(arr), rule, n, t))
        return Spec('fp8', q, s)
    return Spec('plain', split(arr, rule, n, t), dtype=dtype)


def stage_layers(pp):
    per = N // pp
    return [list(range(p * per, (p + 1) * per)) for p in range(pp)]


def expected_checkpoint(hf, tp, pp, to_fp8=False, hd=HD):
    """{rank dir: {key: Spec}} for an EP-1 layout (LoongForge naming mp_rank_TT[_PPP])."""
    out = {}
    for p, layers in enumerate(stage_layers(pp)):
        for t in range(tp):
            d = 'mp_rank_%02d' % t + ('_%03d' % p if pp > 1 else '')
            e = {}
            if p == 0:
                dt, a = hf['model.embed_tokens.weight']
                e['embedding.word_embeddings.weight'] = Spec('plain', split(pad_vocab(a, tp), 'rows', tp, t), dtype=dt)
            for li, L in enumerate(layers):
                pre, hp = 'decoder.layers.%d.' % li, 'model.layers.%d.' % L

                def plain(key, hk):
                    dt, a = hf[hk]
                    e[pre + key] = Spec('plain', a, dtype=dt)

                plain('self_attention.linear_qkv.layer_norm_weight', hp + 'input_layernorm.weight')
                e[pre + 'self_attention.linear_qkv.weight'] = linear_spec(
                    hf, [hp + 'self_attn.%s_proj.weight' % x for x in 'qkv'], 'qkv', tp, t, to_fp8, hd)
                e[pre + 'self_attention.linear_qkv._extra_state'] = Spec('none')
                e[pre + 'self_attention.linear_proj.weight'] = linear_spec(
                    hf, [hp + 'self_attn.o_proj.weight'], 'cols', tp, t, to_fp8, hd)
                e[pre + 'self_attention.linear_proj._extra_state'] = Spec('none')
                plain('mlp.linear_fc1.layer_norm_weight', hp + 'post_attention_layernorm.weight')
                e[pre + 'mlp.linear_fc1.weight'] = linear_spec(
                    hf, [hp + 'mlp.gate_proj.weight', hp + 'mlp.up_proj.weight'], 'gateup', tp, t, to_fp8, hd)
                e[pre + 'mlp.linear_fc1._extra_state'] = Spec('none')
                e[pre + 'mlp.linear_fc2.weight'] = linear_spec(
                    hf, [hp + 'mlp.down_proj.weight'], 'cols', tp, t, to_fp8, hd)
                e[pre + 'mlp.linear_fc2._extra_state'] = Spec('none')
            if p == pp - 1:
                dt, a = hf['model.norm.weight']
                e['decoder.final_layernorm.weight'] = Spec('plain', a, dtype=dt)
                e['decoder.final_layernorm._extra_state'] = Spec('none')
                dt, a = hf['lm_head.weight']
                e['output_layer.weight'] = Spec('plain', split(pad_vocab(a, tp), 'rows', tp, t), dtype=dt)
            out[d] = e
    return out


# ----------------------------------------------------------------------------------- running
def run(args, expect_ok=True, env=None):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    if expect_ok and r.returncode != 0:
        raise AssertionError('%s failed (%d):\n%s%s' % (' '.join(map(str, args)), r.returncode, r.stdout, r.stderr))
    return r


def convert(src, dst, tp, pp, frm='huggingface', to='mcore', extra=(), expect_ok=True, cfg=CFG, conv=CONV,
            env=None):
    return run([CONVERT, '--model', 'llama3', '--load_platform', frm, '--save_platform', to, '--config_file', cfg,
                '--convert_file', conv, '--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors',
                '--max_workers', 2, '--hf_max_shard_size', '4MB', '-q', '--tensor_model_parallel_size', tp,
                '--pipeline_model_parallel_size', pp] + list(extra), expect_ok, env)


def check_mcore(hf, out, tp, pp, to_fp8=False, hd=HD):
    exp = expected_checkpoint(hf, tp, pp, to_fp8, hd)
    have = sorted(os.listdir(os.path.join(out, 'release')))
    assert have == sorted(exp), 'rank directories %s, expected %s' % (have, sorted(exp))
    n_fp8 = n_plain = 0
    for d, e in exp.items():
        obj = torch.load(os.path.join(out, 'release', d, 'model_optim_rng.pt'), map_location='cpu')
        a = vars(obj['args'])
        for k, v in {'num_layers': N, 'hidden_size': H, 'num_attention_heads': HEADS, 'num_query_groups': G,
                     'kv_channels': hd, 'tensor_model_parallel_size': tp, 'pipeline_model_parallel_size': pp,
                     'vocab_size': V, 'padded_vocab_size': pad_vocab(np.zeros((V, 1)), tp).shape[0]}.items():
            assert a.get(k) == v, '%s: args.%s = %r, expected %r' % (d, k, a.get(k), v)
        model = obj['model']
        assert set(model) == set(e), '%s: keys differ: missing %s, extra %s' % (
            d, sorted(set(e) - set(model)), sorted(set(model) - set(e)))
        for k, s in e.items():
            v = model[k]
            if s.kind == 'none':
                assert v is None, '%s %s: expected None' % (d, k)
            elif s.kind == 'plain':
                dt, arr = t2np(v)
                assert dt == s.dtype and arr.shape == s.arr.shape, (d, k, dt, arr.shape, s.arr.shape)
                assert arr.tobytes() == np.ascontiguousarray(s.arr).tobytes(), '%s %s: values differ' % (d, k)
                n_plain += 1
            else:
                assert hasattr(v, 'quantizer'), '%s %s: expected a TE FP8 tensor, got %r' % (d, k, type(v))
                _, data = t2np(v.data)
                _, scale = t2np(v.scale)
                assert data.shape == s.arr.shape, (d, k, data.shape, s.arr.shape)
                assert data.tobytes() == np.ascontiguousarray(s.arr).tobytes(), '%s %s: FP8 data differs' % (d, k)
                sc = scale[:, :s.scale.shape[1]]
                assert sc.tobytes() == np.ascontiguousarray(s.scale).tobytes(), '%s %s: scale_inv differs' % (d, k)
                assert np.all(scale[:, s.scale.shape[1]:] == 0), '%s %s: scale padding not zero' % (d, k)
                n_fp8 += 1
    print('    %d files: %d plain and %d FP8 tensors byte-identical to numpy' % (len(exp), n_plain, n_fp8))


def same_files(a, b):
    def listing(d):  # every conversion output also has its ckbridge-manifest.json
        return sorted(n for n in os.listdir(d) if n != 'ckbridge-manifest.json')
    names = listing(a)
    assert names == listing(b), (names, listing(b))
    for n in names:
        with open(os.path.join(a, n), 'rb') as fa, open(os.path.join(b, n), 'rb') as fb:
            assert fa.read() == fb.read(), '%s differs' % n
    print('    %d files byte-identical' % len(names))


# ----------------------------------------------------------------------------------- tests
def check_source(d, dtype):
    hf = read_hf(d)
    want = {'model.embed_tokens.weight': [V, H], 'model.norm.weight': [H], 'lm_head.weight': [V, H]}
    for L in range(N):
        p = 'model.layers.%d.' % L
        want.update({p + 'input_layernorm.weight': [H], p + 'post_attention_layernorm.weight': [H],
                     p + 'self_attn.q_proj.weight': [HEADS * HD, H], p + 'self_attn.k_proj.weight': [G * HD, H],
                     p + 'self_attn.v_proj.weight': [G * HD, H], p + 'self_attn.o_proj.weight': [H, HEADS * HD],
                     p + 'mlp.gate_proj.weight': [F, H], p + 'mlp.up_proj.weight': [F, H],
                     p + 'mlp.down_proj.weight': [H, F]})
    if dtype == 'fp8':
        for k in [k for k in want if 'proj' in k]:
            want[k[:-len('weight')] + 'weight_scale_inv'] = [(want[k][0] + 127) // 128, (want[k][1] + 127) // 128]
    assert set(hf) == set(want), 'tensors: missing %s, extra %s' % (sorted(set(want) - set(hf)),
                                                                      sorted(set(hf) - set(want)))
    for k, s in want.items():
        assert list(hf[k][1].shape) == s, (k, hf[k][1].shape, s)
        fp8 = dtype == 'fp8' and k.endswith('proj.weight')
        assert hf[k][0] == ('F8_E4M3' if fp8 else 'F32' if k.endswith('scale_inv') else 'BF16'), (k, hf[k][0])
    with open(os.path.join(d, 'config.json')) as f:
        c = json.load(f)
    for k, v in {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'hidden_size': H,
                 'intermediate_size': F, 'num_attention_heads': HEADS, 'num_key_value_heads': G, 'head_dim': HD,
                 'num_hidden_layers': N, 'vocab_size': V, 'tie_word_embeddings': False,
                 'rope_theta': float(Y['rotary_base']), 'rms_norm_eps': float(Y['norm_epsilon'])}.items():
        assert c.get(k) == v, 'config.json %s = %r, expected %r' % (k, c.get(k), v)
    assert ('quantization_config' in c) == (dtype == 'fp8'), c.get('quantization_config')


LAYOUTS = [  # name, source, tp, pp, extra flags
    ('bf16_tp2_pp2', 'bf16', 2, 2, []),
    ('fp8_tp2_pp2', 'fp8', 2, 2, []),
    ('fp8_tp1_pp1', 'fp8', 1, 1, []),  # the grouped QKV order applies without TP too
    ('bf16_tp1_pp4', 'bf16', 1, 4, []),
    ('bf16_tp2_convert_to_fp8', 'bf16', 2, 1, ['--convert_to_fp8']),
]


def run_all(work):
    src = {k: os.path.join(work, 'hf_' + k) for k in ('bf16', 'fp8')}

    def gen():
        for k, d in src.items():
            run([MAKE_TINY, '--model', 'llama3', '--config_file', CFG, '--convert_file', CONV, '--out', d,
                 '--dtype', k])
            check_source(d, k)
    check('generate tiny Llama 3 HF checkpoints (BF16, FP8): names, shapes, dtypes, config.json', gen)
    if FAILED:
        return
    hf = {k: read_hf(d) for k, d in src.items()}

    for name, s, tp, pp, extra in LAYOUTS:
        out, back = os.path.join(work, name, 'mcore'), os.path.join(work, name, 'hf')

        def fwd(s=s, tp=tp, pp=pp, extra=extra, out=out):
            convert(src[s], out, tp, pp, extra=extra)
            check_mcore(hf[s], out, tp, pp, to_fp8='--convert_to_fp8' in extra)
        check('%s: HF -> MCore, every tensor against numpy (grouped linear_qkv)' % name, fwd)
        if '--convert_to_fp8' in extra:
            continue

        def rev(s=s, tp=tp, pp=pp, out=out, back=back):
            convert(os.path.join(out, 'release'), back, tp, pp, frm='mcore', to='huggingface')
            same_files(src[s], back)
        check('%s: MCore -> HF byte-identical to the source' % name, rev)

    def reshard():
        a = os.path.join(work, 'fp8_tp2_pp2', 'mcore')
        b, c = os.path.join(work, 'reshard', 'tp1pp1'), os.path.join(work, 'reshard', 'hf')
        convert(os.path.join(a, 'release'), b, 1, 1, frm='mcore', to='mcore')
        check_mcore(hf['fp8'], b, 1, 1)
        convert(os.path.join(b, 'release'), c, 1, 1, frm='mcore', to='huggingface')
        same_files(src['fp8'], c)
    check('MCore TP2 PP2 -> MCore TP1 PP1 (checked against numpy) -> HF byte-identical', reshard)

    def refusals():
        out = os.path.join(work, 'bad', 'tp4')
        r = convert(src['bf16'], out, 4, 1, expect_ok=False)
        msg = r.stderr
        assert r.returncode != 0 and '--tensor_model_parallel_size 4' in msg and 'query groups' in msg, msg
        assert 'num_query_groups 2' in msg, msg
        assert not os.path.exists(out), 'output written although refused'
        # k_proj of the wrong shape: copy the BF16 source with one tensor cut short
        bad = os.path.join(work, 'bad', 'hf_short_k')
        shutil.copytree(src['bf16'], bad)
        key = 'model.layers.1.self_attn.k_proj.weight'
        with open(os.path.join(src['bf16'], 'model.safetensors.index.json')) as f:
            fname = json.load(f)['weight_map'][key]
        path = os.path.join(bad, fname)
        with open(path, 'rb') as f:
            buf = bytearray(f.read())
        n = struct.unpack_from('<Q', buf, 0)[0]
        hdr = json.loads(buf[8:8 + n])
        hdr[key]['shape'] = [hdr[key]['shape'][0] // 2, hdr[key]['shape'][1] * 2]  # same bytes, wrong shape
        h = json.dumps(hdr).encode()
        h += b' ' * ((8 - len(h) % 8) % 8)
        with open(path, 'wb') as f:
            f.write(struct.pack('<Q', len(h)) + h + bytes(buf[8 + n:]))
        r = convert(bad, os.path.join(work, 'bad', 'out2'), 2, 1, expect_ok=False)
        assert r.returncode != 0 and 'model.layers.1.self_attn' in r.stderr, r.stderr
        r = run([CONVERT, '--model', 'llama4', '--load_platform', 'huggingface', '--save_platform', 'mcore',
                 '--config_file', CFG, '--convert_file', CONV, '--load_ckpt_path', src['bf16'],
                 '--save_ckpt_path', os.path.join(work, 'bad', 'out3')], expect_ok=False)
        assert r.returncode != 0 and '--model' in (r.stderr + r.stdout), r.stderr
        # the DeepSeek policy on the Llama configs: refused, naming what is missing
        r = run([MAKE_TINY, '--model', 'deepseek_v3', '--config_file', CFG, '--convert_file', CONV,
                 '--out', os.path.join(work, 'bad', 'out4')], expect_ok=False)
        assert r.returncode != 0 and 'error' in r.stderr, r.stderr
    def unaligned():
        # head_dim 64 (hidden / heads, no kv_channels): groups of [3 q heads; k; v] = 320 rows and the
        # o_proj cut at TP 2 (384 columns) leave 128 blocks, so those FP8 shards are re-quantized
        cfg_root = os.path.join(work, 'cfg')
        shutil.copytree(os.path.dirname(CFG), os.path.join(cfg_root, 'llama3'))
        cfg = os.path.join(cfg_root, 'llama3', 'llama3_tiny.yaml')
        conv = os.path.join(cfg_root, 'llama3', 'ckpt_convert', 'llama3_convert.yaml')
        with open(cfg) as f:
            text = f.read()
        with open(cfg, 'w') as f:
            f.write('\n'.join(ln for ln in text.splitlines() if not ln.startswith('kv_channels:')) + '\n')
        env = dict(os.environ, CKBRIDGE_CONFIGS_PATH=cfg_root)
        for k in ('fp8', 'bf16'):
            d, out, back = (os.path.join(work, 'hd64', x + '_' + k) for x in ('hf', 'mcore', 'back'))
            run([MAKE_TINY, '--model', 'llama3', '--config_file', cfg, '--convert_file', conv, '--out', d,
                 '--dtype', k], env=env)
            r = convert(d, out, 2, 2, cfg=cfg, conv=conv, env=env)
            assert k == 'bf16' or 're-quantizing' in r.stderr, r.stderr
            check_mcore(read_hf(d), out, 2, 2, hd=H // HEADS)
            if k == 'bf16':
                convert(os.path.join(out, 'release'), back, 2, 2, frm='mcore', to='huggingface', cfg=cfg, conv=conv,
                        env=env)
                same_files(d, back)
    check('head_dim 64: FP8 QKV and o_proj shards re-quantized (TE bits against numpy); BF16 round trip', unaligned)

    check('refusals: TP 4 over 2 query groups, a k_proj of the wrong shape, unknown --model, wrong policy', refusals)


def main():
    for p in (CONVERT, MAKE_TINY):
        if not os.path.exists(p):
            print('missing %s (build the ckbridge_convert and make_tiny_checkpoint targets)' % p)
            print('0 passed, 1 failed')
            return 1
    work = tempfile.mkdtemp(prefix='ckb_convert_llama3_')
    try:
        run_all(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('%d passed, %d failed' % (len(PASSED), len(FAILED)))
    return 1 if FAILED else 0


if __name__ == '__main__':
    sys.exit(main())
