#!/usr/bin/env python3
"""Writes a full-size HF checkpoint of a DeepSeek-V3-architecture model as sparse files.

Every safetensors header and model.safetensors.index.json is exact (the real tensor names, shapes,
dtypes and data offsets); the tensor data is left as holes (the file is extended with truncate),
so DeepSeek-V3 671B (688.6 GB of tensor data) costs a few MB of disk. Holes read as zeros, so every
MTP copy (layer N's embed_tokens / shared_head.head) equals its original, and every FP8 scale is
0 (not a power of two: the source counts as "linear scales", like DeepSeek-V3's).
`--scale_value V` writes real bytes into every weight_scale_inv (all equal to V, e.g. 1.0 for
power-of-two scales as in V3.1): about 166 MB for DeepSeek-V3.

Models (the HF config.json values of the published checkpoints):
  deepseek_v3  DeepSeek-V3 / R1 / V3.1: 61 layers (3 dense), 256 experts, 1 MTP layer, vocab 129280
  kimi_k2      Kimi K2: 61 layers (1 dense), 384 experts, 64 heads, no MTP layer, vocab 163840
Qwen3 MoE is not covered (ckbridge has no Qwen3 model family yet).

Usage: make_sparse_checkpoint.py --model deepseek_v3 --out DIR [--max_shard_size 5GB] [--scale_value V]
Prints one line: tensors, files and tensor-data bytes. Needs only the Python standard library.
"""
import argparse
import json
import os
import struct
import sys

MODELS = {
    'deepseek_v3': dict(
        hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61,
        first_k_dense_replace=3, n_routed_experts=256, n_shared_experts=1, num_attention_heads=128,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        vocab_size=129280, num_nextn_predict_layers=1, num_experts_per_tok=8, n_group=8, topk_group=4,
        routed_scaling_factor=2.5, rope_theta=10000, max_position_embeddings=163840,
        rope_scaling={'type': 'yarn', 'factor': 40, 'original_max_position_embeddings': 4096, 'beta_fast': 32,
                      'beta_slow': 1, 'mscale': 1.0, 'mscale_all_dim': 1.0}),
    'kimi_k2': dict(
        hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61,
        first_k_dense_replace=1, n_routed_experts=384, n_shared_experts=1, num_attention_heads=64,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        vocab_size=163840, num_nextn_predict_layers=0, num_experts_per_tok=8, n_group=1, topk_group=1,
        routed_scaling_factor=2.827, rope_theta=50000, max_position_embeddings=131072,
        rope_scaling={'type': 'yarn', 'factor': 32.0, 'original_max_position_embeddings': 4096, 'beta_fast': 1.0,
                      'beta_slow': 1.0, 'mscale': 1.0, 'mscale_all_dim': 1.0}),
}

DTYPE_SIZE = {'BF16': 2, 'F32': 4, 'F8_E4M3': 1}
BLOCK = 128


def cdiv(a, b):
    return -(-a // b)


def catalogue(c):
    """(name, dtype, shape) of every tensor, in the order of the published checkpoint's layers."""
    H, V = c['hidden_size'], c['vocab_size']
    heads = c['num_attention_heads']
    qk = c['qk_nope_head_dim'] + c['qk_rope_head_dim']
    out = []

    def fp8(name, rows, cols):
        out.append((name, 'F8_E4M3', [rows, cols]))
        out.append((name + '_scale_inv', 'F32', [cdiv(rows, BLOCK), cdiv(cols, BLOCK)]))

    def bf16(name, *shape):
        out.append((name, 'BF16', list(shape)))

    out.append(('model.embed_tokens.weight', 'BF16', [V, H]))
    n_layers = c['num_hidden_layers'] + c['num_nextn_predict_layers']
    for L in range(n_layers):
        p = 'model.layers.%d.' % L
        bf16(p + 'input_layernorm.weight', H)
        fp8(p + 'self_attn.q_a_proj.weight', c['q_lora_rank'], H)
        bf16(p + 'self_attn.q_a_layernorm.weight', c['q_lora_rank'])
        fp8(p + 'self_attn.q_b_proj.weight', heads * qk, c['q_lora_rank'])
        fp8(p + 'self_attn.kv_a_proj_with_mqa.weight', c['kv_lora_rank'] + c['qk_rope_head_dim'], H)
        bf16(p + 'self_attn.kv_a_layernorm.weight', c['kv_lora_rank'])
        fp8(p + 'self_attn.kv_b_proj.weight', heads * (c['qk_nope_head_dim'] + c['v_head_dim']), c['kv_lora_rank'])
        fp8(p + 'self_attn.o_proj.weight', H, heads * c['v_head_dim'])
        bf16(p + 'post_attention_layernorm.weight', H)
        if L < c['first_k_dense_replace']:
            F = c['intermediate_size']
            fp8(p + 'mlp.gate_proj.weight', F, H)
            fp8(p + 'mlp.up_proj.weight', F, H)
            fp8(p + 'mlp.down_proj.weight', H, F)
        else:
            E, F = c['n_routed_experts'], c['moe_intermediate_size']
            bf16(p + 'mlp.gate.weight', E, H)
            out.append((p + 'mlp.gate.e_score_correction_bias', 'F32', [E]))
            for e in range(E):
                x = p + 'mlp.experts.%d.' % e
                fp8(x + 'gate_proj.weight', F, H)
                fp8(x + 'up_proj.weight', F, H)
                fp8(x + 'down_proj.weight', H, F)
            Fs = F * c['n_shared_experts']
            fp8(p + 'mlp.shared_experts.gate_proj.weight', Fs, H)
            fp8(p + 'mlp.shared_experts.up_proj.weight', Fs, H)
            fp8(p + 'mlp.shared_experts.down_proj.weight', H, Fs)
        if L >= c['num_hidden_layers']:  # MTP extras
            bf16(p + 'embed_tokens.weight', V, H)
            bf16(p + 'enorm.weight', H)
            bf16(p + 'hnorm.weight', H)
            bf16(p + 'eh_proj.weight', H, 2 * H)
            bf16(p + 'shared_head.norm.weight', H)
            bf16(p + 'shared_head.head.weight', V, H)
    out.append(('model.norm.weight', 'BF16', [H]))
    out.append(('lm_head.weight', 'BF16', [V, H]))
    return out


def nbytes(dtype, shape):
    n = DTYPE_SIZE[dtype]
    for d in shape:
        n *= d
    return n


def parse_size(s):
    units = {'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'B': 1}
    for u, m in units.items():
        if s.endswith(u):
            return int(float(s[:-len(u)]) * m)
    return int(s)


def config_json(c):
    cfg = {k: v for k, v in c.items()}
    cfg.update(architectures=['DeepseekV3ForCausalLM'], model_type='deepseek_v3', num_key_value_heads=c['num_attention_heads'],
               moe_layer_freq=1, scoring_func='sigmoid', topk_method='noaux_tc', norm_topk_prob=True,
               hidden_act='silu', rms_norm_eps=1e-6, tie_word_embeddings=False, torch_dtype='bfloat16',
               quantization_config={'activation_scheme': 'dynamic', 'fmt': 'e4m3', 'quant_method': 'fp8',
                                    'weight_block_size': [BLOCK, BLOCK]})
    return cfg


def write(model, out, max_shard, scale_value=None):
    c = MODELS[model]
    tensors = catalogue(c)
    # Shards: tensors in catalogue order, a new file when the next tensor would pass max_shard.
    shards, cur, size = [], [], 0
    for t in tensors:
        b = nbytes(t[1], t[2])
        if cur and size + b > max_shard:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += b
    shards.append(cur)
    os.makedirs(out, exist_ok=True)
    n = len(shards)
    weight_map, total = {}, 0
    scale_bytes = struct.pack('<f', scale_value) if scale_value is not None else None
    for i, shard in enumerate(shards):
        fname = 'model-%05d-of-%06d.safetensors' % (i + 1, n)
        header, off = {'__metadata__': {'format': 'pt'}}, 0
        for name, dt, shape in shard:
            b = nbytes(dt, shape)
            header[name] = {'dtype': dt, 'shape': shape, 'data_offsets': [off, off + b]}
            off += b
            weight_map[name] = fname
        h = json.dumps(header, separators=(',', ':')).encode()
        h += b' ' * (-len(h) % 8)
        base = 8 + len(h)
        with open(os.path.join(out, fname), 'wb') as f:
            f.write(struct.pack('<Q', len(h)))
            f.write(h)
            f.truncate(base + off)  # the data: one hole
            if scale_bytes is not None:
                for name, dt, shape in shard:
                    if name.endswith('_scale_inv'):
                        s, e = header[name]['data_offsets']
                        f.seek(base + s)
                        f.write(scale_bytes * ((e - s) // 4))
        total += off
    index = {'metadata': {'total_size': total}, 'weight_map': weight_map}
    with open(os.path.join(out, 'model.safetensors.index.json'), 'w') as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(config_json(c), f, indent=2)
    return len(tensors), n, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', required=True, choices=sorted(MODELS))
    ap.add_argument('--out', required=True)
    ap.add_argument('--max_shard_size', default='5GB')
    ap.add_argument('--scale_value', type=float, default=None)
    a = ap.parse_args()
    if os.path.exists(a.out) and os.listdir(a.out):
        sys.exit('make_sparse_checkpoint: --out %s exists and is not empty' % a.out)
    n, files, total = write(a.model, a.out, parse_size(a.max_shard_size), a.scale_value)
    print('%s: %d tensors in %d files, %d bytes of tensor data (sparse)' % (a.model, n, files, total))


if __name__ == '__main__':
    main()
