"""The LLM families ckbridge converts (or is to convert), as the tests see them: their YAMLs, a tiny
HF checkpoint generator (numpy + ml_dtypes + safetensors only; random values; the config.json of
the architecture) and an independent numpy expectation of every MCore tensor in a given layout,
following LoongForge's rules (reference loongforge-converter.md §3-§6 and the family's convert YAML).

    python tests/python/ckb_families.py --family qwen3_moe --out DIR [--dtype bf16|fp8] [--seed N]

writes the tiny checkpoint of a family (docs/families.md lists the families and what the library
must provide for each)."""
import argparse
import json
import os
import re
import sys

import ml_dtypes
import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckb_numpy as cn  # noqa: E402

SRC = os.environ.get('CKB_SOURCE_DIR', os.path.join(HERE, '..', '..'))
CONFIGS = os.path.join(SRC, 'configs')


# ----------------------------------------------------------------------------------- families
class Family:
    """One family: where its YAMLs are and the architecture features the tests exercise.
    group: the config-group directory under configs/ (= LoongForge's group name, which its convert
    YAML's defaults list `<group>@module` requires); attn: 'gqa' (fused linear_qkv) or 'mla';
    norms: 'fused' (TE: input norm -> linear_qkv.layer_norm_weight, post-attention norm ->
    mlp.linear_fc1.layer_norm_weight), 'qkv_fused' (input norm fused, pre_mlp_layernorm separate:
    Qwen3-MoE), 'separate' (input_layernorm / pre_mlp_layernorm: DeepSeek-style);
    moe: routed experts (all layers from first_k_dense on); shared / router_bias: DeepSeek-style
    shared experts and e_score_correction_bias; mtp: None, 'deepseek' (HF model.layers.N) or
    'mimo' (HF model.mtp_layers.i); prefix: the `language_model.` of Kimi's YAMLs (HF and MCore)."""

    def __init__(self, name, group, tiny, convert, arch, model_type, attn='gqa', norms='fused', qkv_bias=False,
                 qk_norm=False, moe=False, shared=False, router_bias=False, mtp=None, prefix='', dtype='BF16',
                 fp8=False, extra_converts=None, divisible_by=None, supported_today=False):
        self.name, self.group, self.arch, self.model_type = name, group, arch, model_type
        self.tiny = os.path.join(CONFIGS, group, tiny)
        self.convert = os.path.join(CONFIGS, group, 'ckpt_convert', convert)
        self.extra_converts = {k: os.path.join(CONFIGS, group, 'ckpt_convert', v)
                               for k, v in (extra_converts or {}).items()}
        self.attn, self.norms, self.qkv_bias, self.qk_norm = attn, norms, qkv_bias, qk_norm
        self.moe, self.shared, self.router_bias, self.mtp, self.prefix = moe, shared, router_bias, mtp, prefix
        self.dtype, self.fp8 = dtype, fp8
        self.supported_today = supported_today
        with open(self.tiny) as f:
            y = yaml.safe_load(f)
        self.y = y
        self.N, self.H, self.F = y['num_layers'], y['hidden_size'], y['ffn_hidden_size']
        self.heads = y['num_attention_heads']
        self.G = y.get('num_query_groups') or self.heads
        self.HD = y.get('kv_channels') or self.H // self.heads
        self.V = y.get('vocab_size_in_config_file') or y.get('vocab_size')
        self.tied = not y.get('untie_embeddings_and_output_weights', True)
        self.divisible_by = divisible_by or 128
        self.MTP = y.get('mtp_num_layers') or 0
        self.E = y.get('num_experts') or 0
        self.Fm = y.get('moe_ffn_hidden_size') or 0
        self.Fs = y.get('moe_shared_expert_intermediate_size') or 0
        self.q_lora = y.get('q_lora_rank')
        self.kv_lora, self.qk = y.get('kv_lora_rank'), y.get('qk_head_dim')
        self.pe, self.v = y.get('qk_pos_emb_head_dim'), y.get('v_head_dim')
        self.first_k_dense = 0
        if moe and 'moe_layer_freq' in y:
            m = re.fullmatch(r'\$\{moe_freq:"\[0\]\*(\d+)\+\[1\]\*(\d+)"\}', str(y['moe_layer_freq']))
            assert m and int(m.group(1)) + int(m.group(2)) == self.N, y['moe_layer_freq']
            self.first_k_dense = int(m.group(1))

    def is_moe(self, layer):  # HF layer id (a DeepSeek MTP layer N is MoE)
        return self.moe and layer >= self.first_k_dense


def _families():
    F = Family
    return {f.name: f for f in [
        F('llama3', 'llama3', 'llama3_tiny.yaml', 'llama3_convert.yaml', 'LlamaForCausalLM', 'llama', fp8=True,
          supported_today=True),
        F('llama3_1', 'llama3', 'llama3_1_tiny.yaml', 'llama3_1_convert.yaml', 'LlamaForCausalLM', 'llama',
          supported_today=True),
        F('llama2', 'llama2', 'llama2_tiny.yaml', 'llama2_convert.yaml', 'LlamaForCausalLM', 'llama', dtype='F16',
          supported_today=True),
        F('qwen2', 'qwen2', 'qwen2_tiny.yaml', 'qwen2_convert.yaml', 'Qwen2ForCausalLM', 'qwen2', qkv_bias=True,
          supported_today=True),
        F('qwen2_5', 'qwen2.5', 'qwen2_5_tiny.yaml', 'qwen2_5_convert_llm.yaml', 'Qwen2ForCausalLM', 'qwen2',
          qkv_bias=True, extra_converts={'vl_language_model': 'qwen2_5_convert.yaml'},  # not in the matrix
          supported_today=True),
        F('qwen3', 'qwen3', 'qwen3_tiny.yaml', 'qwen3_convert.yaml', 'Qwen3ForCausalLM', 'qwen3', qk_norm=True,
          fp8=True),
        F('qwen3_moe', 'qwen3', 'qwen3_moe_tiny.yaml', 'qwen3_moe_convert.yaml', 'Qwen3MoeForCausalLM', 'qwen3_moe',
          qk_norm=True, norms='qkv_fused', moe=True, fp8=True, supported_today=True),
        F('mimo', 'mimo', 'mimo_tiny.yaml', 'mimo_convert.yaml', 'MiMoForCausalLM', 'mimo', qkv_bias=True,
          mtp='mimo', supported_today=True),
        F('deepseek_v2', 'deepseek2', 'deepseek_v2_tiny.yaml', 'deepseek_v2_convert.yaml', 'DeepseekV2ForCausalLM',
          'deepseek_v2', attn='mla', norms='separate', moe=True, shared=True, supported_today=True),
        F('deepseek_v2_lite', 'deepseek2', 'deepseek_v2_lite_tiny.yaml', 'deepseek_v2_lite_convert.yaml',
          'DeepseekV2ForCausalLM', 'deepseek_v2', attn='mla', norms='separate', moe=True, shared=True,
          supported_today=True),
        F('deepseek_v3', 'deepseek_v3', 'deepseek_v3_tiny.yaml', 'deepseek_v3_convert.yaml', 'DeepseekV3ForCausalLM',
          'deepseek_v3', attn='mla', norms='separate', moe=True, shared=True, router_bias=True, mtp='deepseek',
          fp8=True, supported_today=True),
        F('kimi_k2', 'kimi_k2', 'kimi_k2_tiny.yaml', 'kimi_k2_convert_bf16.yaml', 'DeepseekV3ForCausalLM', 'kimi_k2',
          attn='mla', norms='separate', moe=True, shared=True, router_bias=True, prefix='language_model.',
          extra_converts={'fp8_training': 'kimi_k2_convert.yaml'}, divisible_by=1280, supported_today=True),
    ]}


FAMILIES = _families()

# sha256 of LoongForge's convert YAMLs at commit c6275661 (configs/models/<group>/ckpt_convert/):
# the copies under configs/<group>/ckpt_convert/ must stay byte-identical (issue 11). llama3 and
# deepseek_v3 use ckbridge's edited copies (their headers say what differs).
LOONGFORGE_SHA256 = {
    'deepseek2/ckpt_convert/deepseek_v2_convert.yaml':
        '42d01fbfe3a0923923f2bf356a0bbeb4ebee2598c20986835e773e39257e0dd7',
    'deepseek2/ckpt_convert/deepseek_v2_lite_convert.yaml':
        'dde83e064e7c350ca56f476859a18ea76716db248886fdc9b863cbefabe81653',
    'kimi_k2/ckpt_convert/kimi_k2_convert.yaml': 'bdf95905881625d05d2f1a0b662d003a9ad6887ac8b92d32543bc59908984079',
    'kimi_k2/ckpt_convert/kimi_k2_convert_bf16.yaml':
        '1bac2f4084773a9f112a1836042f72989096ec64f621cd0aa141fcefb4e70440',
    'llama2/ckpt_convert/llama2_convert.yaml': '65c32190ce38730cd921f9d70c66af5760621d8713756ed32a6a6d917cfb5583',
    'llama3/ckpt_convert/llama3_1_convert.yaml': '0c1f786d4e1e77c4cf1a42fc4248c7cecbb39ae0c6167cf1275eda6cc96f3efa',
    'mimo/ckpt_convert/mimo_convert.yaml': '8ae58a1452db452c2322a2e50d58cd446bd77a01e78c319dbb7e47df2a38b1a1',
    'qwen2.5/ckpt_convert/qwen2_5_convert.yaml': '28db830307aa63f5ac979a6ab74372bdb139ec39f2b54f11fdb0761a2e7c10bf',
    'qwen2.5/ckpt_convert/qwen2_5_convert_llm.yaml': '096fdb67b9c55015bb604986eaf6285b6dfffb7bd2224e57efcc721ee143ddf1',
    'qwen2/ckpt_convert/qwen2_convert.yaml': 'f1d6643e0596a8c8a53125eed6ed565f2ae3c09d5624d6f02d37c7bd540716ec',
    'qwen3/ckpt_convert/qwen3_convert.yaml': '3ff75dfe4643e29501116468ddf0b6b4e894a641b3295c1c9b4943cb46cb807c',
    'qwen3/ckpt_convert/qwen3_moe_convert.yaml': '3108eb76508fe6e805b980cbe567cca162d40a0244022f2b3bd35656d0749501',
}


def convert_yamls(f):
    """The family's convert YAML paths relative to configs/ (default first)."""
    return [os.path.relpath(p, CONFIGS) for p in [f.convert] + list(f.extra_converts.values())]


# ----------------------------------------------------------------------------------- HF tensors
def hf_layer_tensors(f, L, hp):
    """[(key, shape, kind)] of one decoder layer under HF prefix hp; kind: norm | linear | bias |
    router | rbias."""
    H = f.H
    t = [(hp + 'input_layernorm.weight', [H], 'norm')]
    a = hp + 'self_attn.'
    if f.attn == 'gqa':
        t += [(a + 'q_proj.weight', [f.heads * f.HD, H], 'linear'), (a + 'k_proj.weight', [f.G * f.HD, H], 'linear'),
              (a + 'v_proj.weight', [f.G * f.HD, H], 'linear')]
        if f.qkv_bias:
            t += [(a + 'q_proj.bias', [f.heads * f.HD], 'bias'), (a + 'k_proj.bias', [f.G * f.HD], 'bias'),
                  (a + 'v_proj.bias', [f.G * f.HD], 'bias')]
        if f.qk_norm:
            t += [(a + 'q_norm.weight', [f.HD], 'norm'), (a + 'k_norm.weight', [f.HD], 'norm')]
        t += [(a + 'o_proj.weight', [H, f.heads * f.HD], 'linear')]
    else:
        qh = f.qk + f.pe
        if f.q_lora:
            t += [(a + 'q_a_proj.weight', [f.q_lora, H], 'linear'), (a + 'q_a_layernorm.weight', [f.q_lora], 'norm'),
                  (a + 'q_b_proj.weight', [f.heads * qh, f.q_lora], 'linear')]
        else:
            t += [(a + 'q_proj.weight', [f.heads * qh, H], 'linear')]
        t += [(a + 'kv_a_proj_with_mqa.weight', [f.kv_lora + f.pe, H], 'linear'),
              (a + 'kv_a_layernorm.weight', [f.kv_lora], 'norm'),
              (a + 'kv_b_proj.weight', [f.heads * (f.qk + f.v), f.kv_lora], 'linear'),
              (a + 'o_proj.weight', [H, f.heads * f.v], 'linear')]
    t += [(hp + 'post_attention_layernorm.weight', [H], 'norm')]
    m = hp + 'mlp.'
    if not f.is_moe(L):
        t += [(m + 'gate_proj.weight', [f.F, H], 'linear'), (m + 'up_proj.weight', [f.F, H], 'linear'),
              (m + 'down_proj.weight', [H, f.F], 'linear')]
        return t
    t += [(m + 'gate.weight', [f.E, H], 'router')]
    if f.router_bias:
        t += [(m + 'gate.e_score_correction_bias', [f.E], 'rbias')]
    for e in range(f.E):
        x = m + 'experts.%d.' % e
        t += [(x + 'gate_proj.weight', [f.Fm, H], 'linear'), (x + 'up_proj.weight', [f.Fm, H], 'linear'),
              (x + 'down_proj.weight', [H, f.Fm], 'linear')]
    if f.shared:
        s = m + 'shared_experts.'
        t += [(s + 'gate_proj.weight', [f.Fs, H], 'linear'), (s + 'up_proj.weight', [f.Fs, H], 'linear'),
              (s + 'down_proj.weight', [H, f.Fs], 'linear')]
    return t


def hf_tensors(f):
    """Every HF tensor of the family's tiny model: [(key, shape, kind)] in file order (kind
    'copy:<key>': the same values as that tensor, as DeepSeek-V3's MTP copies of the embedding and
    the output head)."""
    P, H, V = f.prefix, f.H, f.V
    t = [(P + 'model.embed_tokens.weight', [V, H], 'embed')]
    for L in range(f.N):
        t += hf_layer_tensors(f, L, P + 'model.layers.%d.' % L)
    t += [(P + 'model.norm.weight', [H], 'norm')]
    if not f.tied:
        t += [(P + 'lm_head.weight', [V, H], 'embed')]
    for i in range(f.MTP):
        if f.mtp == 'deepseek':
            L = f.N + i
            hp = P + 'model.layers.%d.' % L
            t += [(hp + 'enorm.weight', [H], 'norm'), (hp + 'hnorm.weight', [H], 'norm'),
                  (hp + 'eh_proj.weight', [H, 2 * H], 'mtp_linear'), (hp + 'shared_head.norm.weight', [H], 'norm'),
                  (hp + 'shared_head.head.weight', [V, H], 'copy:' + P + 'lm_head.weight'),
                  (hp + 'embed_tokens.weight', [V, H], 'copy:' + P + 'model.embed_tokens.weight')]
            t += hf_layer_tensors(f, L, hp)
        elif f.mtp == 'mimo':
            hp = P + 'model.mtp_layers.%d.' % i
            t += [(hp + 'token_layernorm.weight', [H], 'norm'), (hp + 'hidden_layernorm.weight', [H], 'norm'),
                  (hp + 'input_proj.weight', [H, 2 * H], 'mtp_linear'), (hp + 'final_layernorm.weight', [H], 'norm')]
            t += hf_layer_tensors(f, 0, hp)
    return t


def config_json(f, dtype):
    """The HF config.json of the tiny model, with the keys the published checkpoints of the
    architecture carry (rope_theta / rope_scaling spelling of the hub files; transformers 5 reads them)."""
    y = f.y
    torch_dtype = {'BF16': 'bfloat16', 'F16': 'float16'}[f.dtype]
    c = {'architectures': [f.arch], 'model_type': f.model_type, 'hidden_act': 'silu', 'hidden_size': f.H,
         'initializer_range': 0.02, 'num_attention_heads': f.heads, 'num_hidden_layers': f.N,
         'vocab_size': f.V, 'tie_word_embeddings': f.tied, 'torch_dtype': torch_dtype, 'use_cache': True,
         'attention_dropout': 0.0}
    eps = y.get('norm_epsilon', y.get('layernorm_epsilon', 1e-6))
    c['rms_norm_eps'] = float(eps)
    c['rope_theta'] = float(y.get('rotary_base', 10000))
    c['max_position_embeddings'] = int(y.get('max_position_embeddings', 4096))
    if f.attn == 'gqa':
        c['intermediate_size'] = f.F
        c['num_key_value_heads'] = f.G
    if f.name.startswith('llama'):
        c.update({'attention_bias': False, 'mlp_bias': False, 'head_dim': f.HD, 'pretraining_tp': 1,
                  'bos_token_id': 1, 'eos_token_id': 2})
        c['rope_scaling'] = None
        if y.get('rope_type') == 'llama3':
            c['rope_scaling'] = {'factor': float(y['rotary_scaling_factor']),
                                 'low_freq_factor': float(y['low_freq_factor']),
                                 'high_freq_factor': float(y['high_freq_factor']),
                                 'original_max_position_embeddings': int(y['original_max_position_embeddings']),
                                 'rope_type': 'llama3'}
    if f.name in ('qwen2', 'qwen2_5', 'mimo'):
        c.update({'max_window_layers': f.N, 'sliding_window': c['max_position_embeddings'],
                  'use_sliding_window': False, 'rope_scaling': None})
        if f.name == 'mimo':
            c.update({'attention_bias': True, 'num_nextn_predict_layers': f.MTP,
                      'auto_map': {'AutoConfig': 'configuration_mimo.MiMoConfig',
                                   'AutoModel': 'modeling_mimo.MiMoModel',
                                   'AutoModelForCausalLM': 'modeling_mimo.MiMoForCausalLM'}})
    if f.name.startswith('qwen3'):
        c.update({'head_dim': f.HD, 'attention_bias': False, 'max_window_layers': f.N, 'sliding_window': None,
                  'use_sliding_window': False, 'rope_scaling': None})
        if f.moe:
            c.update({'decoder_sparse_step': 1, 'mlp_only_layers': [], 'moe_intermediate_size': f.Fm,
                      'num_experts': f.E, 'num_experts_per_tok': int(y.get('moe_router_topk', 2)),
                      'norm_topk_prob': True, 'output_router_logits': False, 'router_aux_loss_coef': 0.001})
    if f.attn == 'mla':
        c.update({'intermediate_size': f.F, 'num_key_value_heads': f.heads, 'q_lora_rank': f.q_lora,
                  'kv_lora_rank': f.kv_lora, 'qk_nope_head_dim': f.qk, 'qk_rope_head_dim': f.pe,
                  'v_head_dim': f.v, 'moe_intermediate_size': f.Fm, 'n_routed_experts': f.E,
                  'n_shared_experts': f.Fs // f.Fm, 'num_experts_per_tok': int(y.get('moe_router_topk', 2)),
                  'first_k_dense_replace': f.first_k_dense, 'moe_layer_freq': 1,
                  'routed_scaling_factor': float(y.get('moe_router_topk_scaling_factor', 1.0)),
                  'scoring_func': y.get('moe_router_score_function', 'softmax'), 'attention_bias': False,
                  'bos_token_id': 0, 'eos_token_id': 1})
        if y.get('rope_type') == 'yarn':
            c['rope_scaling'] = {'type': 'yarn', 'factor': float(y['rotary_scaling_factor']),
                                 'original_max_position_embeddings': int(y['original_max_position_embeddings']),
                                 'beta_fast': float(y['beta_fast']), 'beta_slow': float(y['beta_slow']),
                                 'mscale': float(y['mscale']), 'mscale_all_dim': float(y['mscale_all_dim'])}
        if f.router_bias:  # V3 / Kimi K2: sigmoid, grouped top-k with the correction bias
            c.update({'topk_method': 'noaux_tc', 'n_group': int(y.get('moe_router_num_groups', 1)),
                      'topk_group': int(y.get('moe_router_group_topk', 1)), 'norm_topk_prob': True,
                      'num_nextn_predict_layers': f.MTP})
        else:  # V2: softmax; group-limited greedy (V2) or greedy (V2-Lite)
            groups = y.get('moe_router_num_groups')
            c.update({'topk_method': 'group_limited_greedy' if groups else 'greedy', 'n_group': groups or 1,
                      'topk_group': y.get('moe_router_group_topk') or 1, 'norm_topk_prob': False,
                      'aux_loss_alpha': 0.001, 'seq_aux': True})
    if dtype == 'fp8':
        c['quantization_config'] = {'activation_scheme': 'dynamic', 'fmt': 'e4m3', 'quant_method': 'fp8',
                                    'weight_block_size': [128, 128]}
    return c


def is_fp8_weight(key, kind):
    """Which tensors an FP8 checkpoint stores as 128x128 block FP8 (+ weight_scale_inv): every
    projection weight of the decoder layers (DeepSeek-V3 / Qwen3-FP8 convention); embeddings, norms,
    routers, router bias and the MTP eh_proj stay BF16."""
    return kind == 'linear'


def distinguishing_tensor(f):
    """An HF tensor only this family's policy expects (a refusal test drops it)."""
    P, h = f.prefix, f.prefix + 'model.layers.1.'
    if f.mtp == 'mimo':
        return P + 'model.mtp_layers.0.input_proj.weight'
    if f.qk_norm:
        return h + 'self_attn.q_norm.weight'
    if f.qkv_bias:
        return h + 'self_attn.k_proj.bias'
    if f.router_bias:
        return h + 'mlp.gate.e_score_correction_bias'
    if f.attn == 'mla':
        return h + ('self_attn.q_a_layernorm.weight' if f.q_lora else 'self_attn.q_proj.weight')
    return h + 'self_attn.k_proj.weight'


def generate(f, out, dtype='bf16', seed=0, shards=2, drop=None, extra=None):
    """Writes the family's tiny HF checkpoint: `shards` safetensors files + index, config.json.
    drop: a key left out; extra: (key, shape) of an additional BF16 tensor (refusal tests)."""
    from safetensors.numpy import save_file
    assert dtype in ('bf16', 'fp8') and (dtype == 'bf16' or f.fp8), (f.name, dtype)
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    tensors = []
    np_dt = {'BF16': ml_dtypes.bfloat16, 'F16': np.float16}[f.dtype]
    for key, shape, kind in hf_tensors(f):
        if kind.startswith('copy:'):  # DeepSeek's MTP embed_tokens / shared_head.head: the main tensors' data
            tensors.append((key, dict(tensors)[kind[5:]].copy()))
            continue
        if kind == 'norm':
            x = 1.0 + 0.1 * rng.standard_normal(shape, np.float32)
        elif kind == 'rbias':
            tensors.append((key, (0.01 * rng.standard_normal(shape, np.float32)).astype(np.float32)))
            continue
        else:  # linear, bias, router, embed, mtp_linear
            x = 0.05 * rng.standard_normal(shape, np.float32)
        if dtype == 'fp8' and is_fp8_weight(key, kind):
            q, s = cn.quant_te(x, pow2=False)  # linear (amax/448) scales, as DeepSeek-V3 / Qwen3-FP8
            tensors.append((key, q.view(ml_dtypes.float8_e4m3fn)))
            tensors.append((key[:-len('weight')] + 'weight_scale_inv', s))
        else:
            tensors.append((key, x.astype(np_dt)))
    if drop:
        assert drop in dict(tensors), drop
        tensors = [(k, a) for k, a in tensors if k != drop]
    if extra:
        tensors.append((extra[0], (0.05 * rng.standard_normal(extra[1], np.float32)).astype(np_dt)))
    per = (len(tensors) + shards - 1) // shards
    weight_map, total = {}, 0
    for i in range(shards):
        part = tensors[i * per:(i + 1) * per]
        name = 'model-%05d-of-%05d.safetensors' % (i + 1, shards)
        save_file(dict(part), os.path.join(out, name), metadata={'format': 'pt'})
        for k, a in part:
            weight_map[k] = name
            total += a.nbytes
    with open(os.path.join(out, 'model.safetensors.index.json'), 'w') as fh:
        json.dump({'metadata': {'total_size': total}, 'weight_map': dict(sorted(weight_map.items()))}, fh, indent=2)
    with open(os.path.join(out, 'config.json'), 'w') as fh:
        json.dump(config_json(f, dtype), fh, indent=2, sort_keys=True)
        fh.write('\n')


# ----------------------------------------------------------------------------------- expectation
class Spec:
    """Expected value of one MCore entry: kind none (an _extra_state None), plain (dtype, raw
    array) or fp8 (TE tensor: data, unpadded scale_inv, pow2 kind, how it came about)."""

    def __init__(self, kind, dtype=None, arr=None, scale=None, pow2=None, how=''):
        self.kind, self.dtype, self.arr, self.scale, self.pow2, self.how = kind, dtype, arr, scale, pow2, how


NONE = Spec('none')


class Logical:
    """One full (common) tensor built from HF tensors: plain, or FP8 data + unpadded scales."""

    def __init__(self, hf, keys, combine='cat', groups=None, rows_per_block_ok=True):
        parts = [hf[k] for k in keys]
        self.dtype = parts[0][0]
        arrs = [p[1] for p in parts]
        self.scale = None
        scales = None
        if self.dtype == 'F8_E4M3':
            scales = [hf[k[:-len('weight')] + 'weight_scale_inv'][1] for k in keys]
        if combine == 'qkv':
            self.arr = cn.grouped_qkv(*arrs, groups)
            self.f32_parts = (arrs, scales, groups)
            if scales is not None:
                hd = arrs[1].shape[0] // groups
                self.scale = cn.grouped_qkv(*scales, groups) if hd % 128 == 0 else None
                self.pow2 = cn.is_pow2(np.concatenate([s.ravel() for s in scales]))
        else:
            self.arr = np.concatenate(arrs) if len(arrs) > 1 else arrs[0]
            self.f32_parts = None
            if scales is not None:
                self.scale = np.concatenate(scales) if len(scales) > 1 else scales[0]
                self.pow2 = cn.is_pow2(self.scale)
        self.combine = combine

    def f32(self):
        if self.dtype == 'F8_E4M3':
            if self.combine == 'qkv':
                arrs, scales, groups = self.f32_parts
                return cn.grouped_qkv(*[cn.dequant(a, s) for a, s in zip(arrs, scales)], groups)
            return cn.dequant(self.arr, self.scale)
        if self.dtype == 'BF16':
            return cn.bf16_to_f32(self.arr)
        if self.dtype == 'F16':
            return self.arr.view(np.float16).astype(np.float32)
        return self.arr.astype(np.float32)


def shard_spec(lt, rule, n, t, quantize_to_fp8=False, ignore_tp_if_fp8=False):
    """Expectation for shard t of n of logical tensor lt (LoongForge get_chunked_weight §9.3 with
    ckbridge's choices: an FP8 source keeps its scale kind; a BF16 source quantized to FP8 gets
    power-of-two scales; shards off the 128 grid are re-quantized)."""
    if lt.dtype == 'F8_E4M3':
        if ignore_tp_if_fp8:
            rule = 'repl'
        if lt.scale is not None and cn.aligned(lt.arr.shape, rule, n):
            return Spec('fp8', arr=cn.split(lt.arr, rule, n, t), scale=cn.split(lt.scale, rule, n, t),
                        pow2=lt.pow2, how='direct')
        q, s = cn.quant_te(cn.split(lt.f32(), rule, n, t), lt.pow2)
        return Spec('fp8', arr=q, scale=s, pow2=lt.pow2, how='requant')
    if quantize_to_fp8:
        if ignore_tp_if_fp8:
            rule = 'repl'
        q, s = cn.quant_te(cn.split(lt.f32(), rule, n, t), True)
        return Spec('fp8', arr=q, scale=s, pow2=True, how='quantize')
    return Spec('plain', dtype=lt.dtype, arr=cn.split(lt.arr, rule, n, t))


class Layout:
    """A parallel layout: tp, pp, vpp, ep, etp (None = experts use tp), grouped experts, custom
    pipeline split, extra converter flags, the convert YAML variant, the HF source dtype."""

    def __init__(self, name, tp=1, pp=1, vpp=1, ep=1, etp=None, grouped=False, custom=None, src='bf16',
                 convert=None, flags=()):
        self.name, self.tp, self.pp, self.vpp, self.ep, self.etp = name, tp, pp, vpp, ep, etp
        self.grouped, self.custom, self.src, self.convert, self.flags = grouped, custom, src, convert, list(flags)

    def converter_flags(self, moe):
        f = ['--tensor_model_parallel_size', self.tp, '--pipeline_model_parallel_size', self.pp]
        if moe:
            f += ['--expert_parallel_size', self.ep]
            if self.etp is not None:
                f += ['--expert_tensor_parallel_size', self.etp]
            if self.grouped:
                f += ['--moe-grouped-gemm']
        if self.vpp > 1:
            f += ['--num-virtual-stages-per-pipeline-rank', self.vpp]
        if self.custom:
            f += ['--custom_pipeline_layers', ','.join(map(str, self.custom))]
        return f + self.flags


def expected_mcore(f, hf, L):
    """{rank dir: {'model' | 'model<s>': {key: Spec}}} of family f in layout L from HF tensors hf."""
    tp, ep = L.tp, (L.ep if f.moe else 1)
    etp = L.etp or tp
    fp8_training = L.convert == 'fp8_training'  # Kimi's kimi_k2_convert.yaml: q/kv down FP8, replicated
    P = f.prefix
    per_ep = f.E // ep if f.moe else 0
    stages = cn.stage_layers(f.N, f.MTP, L.pp, L.vpp, L.custom)
    cache = {}

    def lt(keys, combine='cat'):
        keys = tuple(keys)
        if (keys, combine) not in cache:
            cache[(keys, combine)] = Logical(hf, list(keys), combine, f.G)
        return cache[(keys, combine)]

    def plain(d, key, hk):
        d[key] = shard_spec(lt([hk]), 'repl', 1, 0)

    def lin(d, mod, keys, rule, t, n=tp, combine='cat', extra=True, down=None):
        down = down or {}
        d[mod + '.weight'] = shard_spec(lt(keys, combine), rule, n, t, quantize_to_fp8=down.get('quantize', False),
                                        ignore_tp_if_fp8=down.get('ignore', False))
        if extra:
            d[mod + '._extra_state'] = NONE

    def mlp(d, mp, h, t, e, et, hl):
        if not f.is_moe(hl):
            fc1 = mp + 'mlp.linear_fc1'
            if f.norms == 'fused':
                plain(d, fc1 + '.layer_norm_weight', h + 'post_attention_layernorm.weight')
            else:
                plain(d, mp + 'pre_mlp_layernorm.weight', h + 'post_attention_layernorm.weight')
            lin(d, fc1, [h + 'mlp.gate_proj.weight', h + 'mlp.up_proj.weight'], 'gateup', t)
            lin(d, mp + 'mlp.linear_fc2', [h + 'mlp.down_proj.weight'], 'cols', t)
            return
        plain(d, mp + 'pre_mlp_layernorm.weight', h + 'post_attention_layernorm.weight')
        plain(d, mp + 'mlp.router.weight', h + 'mlp.gate.weight')
        if f.router_bias:
            plain(d, mp + 'mlp.router.expert_bias', h + 'mlp.gate.e_score_correction_bias')
        if f.shared:
            s = h + 'mlp.shared_experts.'
            lin(d, mp + 'mlp.shared_experts.linear_fc1', [s + 'gate_proj.weight', s + 'up_proj.weight'], 'gateup', t)
            lin(d, mp + 'mlp.shared_experts.linear_fc2', [s + 'down_proj.weight'], 'cols', t)
        for i in range(per_ep):
            x = h + 'mlp.experts.%d.' % (e * per_ep + i)
            for fc, keys, rule in (('linear_fc1', [x + 'gate_proj.weight', x + 'up_proj.weight'], 'gateup'),
                                   ('linear_fc2', [x + 'down_proj.weight'], 'cols')):
                if L.grouped:
                    mod = mp + 'mlp.experts.' + fc
                    d[mod + '.weight%d' % i] = shard_spec(lt(keys), rule, etp, et)
                    d[mod + '._extra_state'] = NONE
                else:
                    lin(d, mp + 'mlp.experts.local_experts.%d.%s' % (i, fc), keys, rule, et, n=etp)

    def attention(d, mp, h, t):
        a = mp + 'self_attention.'
        s = h + 'self_attn.'
        if f.attn == 'gqa':
            qkv = a + 'linear_qkv'
            if f.norms in ('fused', 'qkv_fused'):
                plain(d, qkv + '.layer_norm_weight', h + 'input_layernorm.weight')
            else:
                plain(d, mp + 'input_layernorm.weight', h + 'input_layernorm.weight')
            lin(d, qkv, [s + 'q_proj.weight', s + 'k_proj.weight', s + 'v_proj.weight'], 'rows', t, combine='qkv')
            if f.qkv_bias:
                d[qkv + '.bias'] = shard_spec(lt([s + 'q_proj.bias', s + 'k_proj.bias', s + 'v_proj.bias'], 'qkv'),
                                              'rows', tp, t)
            if f.qk_norm:
                plain(d, a + 'q_layernorm.weight', s + 'q_norm.weight')
                plain(d, a + 'k_layernorm.weight', s + 'k_norm.weight')
            lin(d, a + 'linear_proj', [s + 'o_proj.weight'], 'cols', t)
            return
        plain(d, mp + 'input_layernorm.weight', h + 'input_layernorm.weight')
        # q_a_proj / kv_a_proj_with_mqa: BF16 rows over TP; FP8 replicated where the YAML says
        # fp8_ignore_tp (DeepSeek-V3's and Kimi's FP8-training YAML); Kimi's FP8-training YAML also
        # has `dtype: fp8` on them: quantized to FP8 from a BF16 source.
        down = dict(quantize=fp8_training, ignore=fp8_training or f.name == 'deepseek_v3')
        if f.q_lora:
            lin(d, a + 'linear_q_down_proj', [s + 'q_a_proj.weight'], 'rows', t, down=down)
            plain(d, a + 'linear_q_up_proj.layer_norm_weight', s + 'q_a_layernorm.weight')
            lin(d, a + 'linear_q_up_proj', [s + 'q_b_proj.weight'], 'rows', t)
        else:
            lin(d, a + 'linear_q_proj', [s + 'q_proj.weight'], 'rows', t)
        lin(d, a + 'linear_kv_down_proj', [s + 'kv_a_proj_with_mqa.weight'], 'rows', t, down=down)
        plain(d, a + 'linear_kv_up_proj.layer_norm_weight', s + 'kv_a_layernorm.weight')
        lin(d, a + 'linear_kv_up_proj', [s + 'kv_b_proj.weight'], 'rows', t)
        lin(d, a + 'linear_proj', [s + 'o_proj.weight'], 'cols', t)

    def layer(d, mp, h, hl, t, e, et):
        attention(d, mp, h, t)
        mlp(d, mp, h, t, e, et, hl)

    vpad = cn.padded_vocab(f.V, tp, f.divisible_by)

    def emb(key, t):
        dt, arr = hf[key]
        return Spec('plain', dtype=dt, arr=cn.split(cn.pad_rows(arr, vpad), 'rows', tp, t))

    out = {}
    for d_name, t, p, e, et in cn.rank_files(tp, L.pp, ep, L.etp if f.moe else None):
        models = {}
        for s_idx, stage in enumerate(stages[p]):
            d = {}
            if p == 0 and s_idx == 0:
                d[P + 'embedding.word_embeddings.weight'] = emb(P + 'model.embed_tokens.weight', t)
            for g, loc in stage:
                if g < f.N:
                    layer(d, P + 'decoder.layers.%d.' % loc, P + 'model.layers.%d.' % g, g, t, e, et)
            if any(g == f.N - 1 for g, _ in stage):
                plain(d, P + 'decoder.final_layernorm.weight', P + 'model.norm.weight')
                d[P + 'decoder.final_layernorm._extra_state'] = NONE
                if not f.tied:
                    d[P + 'output_layer.weight'] = emb(P + 'lm_head.weight', t)
                elif L.pp > 1:
                    # tied: the last stage's output_layer is a copy of the (padded) embedding
                    # (Megatron keeps one there and syncs it with the first stage's)
                    d[P + 'output_layer.weight'] = emb(P + 'model.embed_tokens.weight', t)
            for g, loc in stage:
                if g < f.N:
                    continue
                mp = 'mtp.layers.%d.' % loc
                d[P + 'embedding.word_embeddings.weight'] = emb(P + 'model.embed_tokens.weight', t)
                if f.mtp == 'deepseek':
                    h = P + 'model.layers.%d.' % g
                    names = ('enorm', 'hnorm', 'eh_proj', 'shared_head.norm')
                else:
                    h = P + 'model.mtp_layers.%d.' % loc
                    names = ('token_layernorm', 'hidden_layernorm', 'input_proj', 'final_layernorm')
                plain(d, mp + 'enorm.weight', h + names[0] + '.weight')
                plain(d, mp + 'hnorm.weight', h + names[1] + '.weight')
                # eh_proj: rows over TP, no _extra_state; ckbridge keeps it BF16 (LoongForge's
                # DeepSeek-V3 YAML asks for FP8 even from BF16: see docs/loongforge-deviations.md)
                lin(d, mp + 'eh_proj', [h + names[2] + '.weight'], 'rows', t, extra=False)
                plain(d, mp + 'final_layernorm.weight', h + names[3] + '.weight')
                d[mp + 'final_layernorm._extra_state'] = NONE
                layer(d, mp + 'transformer_layer.', h, g, t, e, et)
            if d:  # a virtual stage without tensors gets no key (§6.4)
                models['model%d' % s_idx if L.vpp > 1 else 'model'] = d
        out[d_name] = models
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--family', required=True, choices=sorted(FAMILIES))
    ap.add_argument('--out', required=True)
    ap.add_argument('--dtype', default='bf16', choices=['bf16', 'fp8'])
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    generate(FAMILIES[a.family], a.out, a.dtype, a.seed)


if __name__ == '__main__':
    main()
