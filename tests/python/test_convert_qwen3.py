"""Qwen3 dense (q/k norms) through LoongForge's own qwen3_convert.yaml (a byte-identical copy in
configs/qwen3/ckpt_convert/), against independent numpy expectations.

Drives $CKB_BUILD_DIR/examples/deepseek_v3_make_tiny and ckbridge_convert with --model qwen3 on the
tiny model of configs/qwen3/qwen3_tiny.yaml: HF -> MCore at TP 2 PP 2 (BF16 and FP8 sources), every
rank file loaded with torch.load (TE classes from tests/python/te_stub) and every tensor compared byte
for byte with numpy built from the HF files (linear_qkv per query group [q heads; k; v], whole groups
per TP rank; q_layernorm / k_layernorm replicated; SwiGLU [gate_r; up_r]; row-parallel o_proj and
down_proj; vocabulary padded with copies of the last row); then MCore -> HF byte-identical to the source.
The readers and the generic helpers (split, pad_vocab, run) come from test_convert_llama3.
Exits non-zero on failure; the last line is "N passed, M failed".
"""
import os
import shutil
import sys
import tempfile

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_convert_llama3 as L  # noqa: E402  (readers, split, pad_vocab, run, check, Spec)

torch = L.torch
CFG = os.path.join(L.SRC, 'configs', 'qwen3', 'qwen3_tiny.yaml')
CONV = os.path.join(L.SRC, 'configs', 'qwen3', 'ckpt_convert', 'qwen3_convert.yaml')
with open(CFG) as _f:
    Y = yaml.safe_load(_f)
N, H, F, V = Y['num_layers'], Y['hidden_size'], Y['ffn_hidden_size'], Y['vocab_size_in_config_file']
HEADS, G, HD = Y['num_attention_heads'], Y['num_query_groups'], Y['kv_channels']
R = HEADS // G


def grouped(q, k, v, rows):
    """MCore linear_qkv rows from HF q/k/v: per query group [its R query heads; k_g; v_g]."""
    c = q.shape[1]
    return np.concatenate([q.reshape(G, R * rows, c), k.reshape(G, rows, c), v.reshape(G, rows, c)],
                          axis=1).reshape(-1, c)


def linear(hf, keys, rule, tp, t, qkv=False):
    dt = hf[keys[0]][0]
    arrs = [hf[k][1] for k in keys]
    arr = grouped(*arrs, HD) if qkv else np.concatenate(arrs)
    if dt != 'F8_E4M3':
        return L.Spec('plain', L.split(arr, rule, tp, t), dtype=dt)
    sc = [hf[k[:-len('weight')] + 'weight_scale_inv'][1] for k in keys]
    scale = grouped(*sc, HD // 128) if qkv else np.concatenate(sc)
    return L.Spec('fp8', L.split(arr, rule, tp, t), L.split(scale, rule, tp, t))  # every cut on a 128 block


def expected(hf, tp, pp):
    out, per = {}, N // pp
    for p in range(pp):
        for t in range(tp):
            e = {}
            if p == 0:
                dt, a = hf['model.embed_tokens.weight']
                e['embedding.word_embeddings.weight'] = L.Spec('plain', L.split(L.pad_vocab(a, tp), 'rows', tp, t), dtype=dt)
            for li in range(per):
                pre, hp = 'decoder.layers.%d.' % li, 'model.layers.%d.' % (p * per + li)

                def plain(key, hk):
                    e[pre + key] = L.Spec('plain', hf[hk][1], dtype=hf[hk][0])
                plain('self_attention.linear_qkv.layer_norm_weight', hp + 'input_layernorm.weight')
                e[pre + 'self_attention.linear_qkv.weight'] = linear(
                    hf, [hp + 'self_attn.%s_proj.weight' % x for x in 'qkv'], 'rows', tp, t, qkv=True)
                plain('self_attention.q_layernorm.weight', hp + 'self_attn.q_norm.weight')
                plain('self_attention.k_layernorm.weight', hp + 'self_attn.k_norm.weight')
                e[pre + 'self_attention.linear_proj.weight'] = linear(hf, [hp + 'self_attn.o_proj.weight'], 'cols', tp, t)
                plain('mlp.linear_fc1.layer_norm_weight', hp + 'post_attention_layernorm.weight')
                e[pre + 'mlp.linear_fc1.weight'] = linear(
                    hf, [hp + 'mlp.gate_proj.weight', hp + 'mlp.up_proj.weight'], 'gateup', tp, t)
                e[pre + 'mlp.linear_fc2.weight'] = linear(hf, [hp + 'mlp.down_proj.weight'], 'cols', tp, t)
                for m in ('self_attention.linear_qkv', 'self_attention.linear_proj', 'mlp.linear_fc1', 'mlp.linear_fc2'):
                    e[pre + m + '._extra_state'] = L.Spec('none')
            if p == pp - 1:
                e['decoder.final_layernorm.weight'] = L.Spec('plain', hf['model.norm.weight'][1],
                                                             dtype=hf['model.norm.weight'][0])
                e['decoder.final_layernorm._extra_state'] = L.Spec('none')
                dt, a = hf['lm_head.weight']
                e['output_layer.weight'] = L.Spec('plain', L.split(L.pad_vocab(a, tp), 'rows', tp, t), dtype=dt)
            out['mp_rank_%02d' % t + ('_%03d' % p if pp > 1 else '')] = e
    return out


def check_mcore(hf, out, tp, pp):
    exp = expected(hf, tp, pp)
    assert sorted(os.listdir(os.path.join(out, 'release'))) == sorted(exp)
    n = 0
    for d, e in exp.items():
        model = torch.load(os.path.join(out, 'release', d, 'model_optim_rng.pt'), map_location='cpu')['model']
        assert set(model) == set(e), '%s: missing %s, extra %s' % (d, sorted(set(e) - set(model)),
                                                                   sorted(set(model) - set(e)))
        for k, s in e.items():
            v = model[k]
            if s.kind == 'none':
                assert v is None, (d, k)
                continue
            if s.kind == 'plain':
                dt, arr = L.t2np(v)
                assert dt == s.dtype and arr.tobytes() == np.ascontiguousarray(s.arr).tobytes(), (d, k)
            else:
                _, data = L.t2np(v.data)
                _, scale = L.t2np(v.scale)
                assert data.tobytes() == np.ascontiguousarray(s.arr).tobytes(), (d, k, 'FP8 data')
                assert scale[:, :s.scale.shape[1]].tobytes() == np.ascontiguousarray(s.scale).tobytes(), (d, k, 'scale')
            n += 1
    print('    %d files, %d tensors byte-identical to numpy' % (len(exp), n))


def convert(src, dst, frm, to):
    return L.run([L.CONVERT, '--model', 'qwen3', '--load_platform', frm, '--save_platform', to, '--config_file', CFG,
                  '--convert_file', CONV, '--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors',
                  '--max_workers', 2, '--hf_max_shard_size', '4MB', '-q', '--tensor_model_parallel_size', 2,
                  '--pipeline_model_parallel_size', 2])


def run_all(work):
    for dtype in ('bf16', 'fp8'):
        src, out, back = (os.path.join(work, x + '_' + dtype) for x in ('hf', 'mcore', 'back'))

        def fwd(dtype=dtype, src=src, out=out):
            L.run([L.MAKE_TINY, '--model', 'qwen3', '--config_file', CFG, '--convert_file', CONV, '--out', src,
                   '--dtype', dtype])
            hf = L.read_hf(src)
            assert 'model.layers.0.self_attn.q_norm.weight' in hf and 'lm_head.weight' in hf, sorted(hf)[:8]
            assert list(hf['model.layers.0.self_attn.k_norm.weight'][1].shape) == [HD]
            convert(src, out, 'huggingface', 'mcore')
            check_mcore(hf, out, 2, 2)
        L.check('qwen3 %s: HF -> MCore TP2 PP2, every tensor against numpy' % dtype, fwd)

        def rev(src=src, out=out, back=back):
            convert(os.path.join(out, 'release'), back, 'mcore', 'huggingface')
            L.same_files(src, back)
        L.check('qwen3 %s: MCore -> HF byte-identical to the source' % dtype, rev)


def main():
    work = tempfile.mkdtemp(prefix='ckb_convert_qwen3_')
    try:
        run_all(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('%d passed, %d failed' % (len(L.PASSED), len(L.FAILED)))
    return 1 if L.FAILED or not L.PASSED else 0


if __name__ == '__main__':
    sys.exit(main())
