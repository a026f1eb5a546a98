"""Runs a ckbridge-converted Megatron-Core checkpoint of any family in Megatron-Core's own GPTModel.

Started by families_gpu.py through torchrun, one process per model-parallel rank:
    torchrun --nproc_per_node=W mcore_family_forward.py --ckpt DIR --hf-config config.json
        --inputs ids.pt --out result.pt [--tp T --ep E]
The model is built from the SOURCE HF config.json (not from anything ckbridge wrote), with
Megatron-Core's LOCAL layer spec (no TransformerEngine): GQA (+ q/k norms, + q/k/v bias, + MoE
with a softmax router) or MLA (DeepSeek V2 style: optional q LoRA, softmax router, shared experts,
first dense layers, YaRN). One forward pass in fp32; rank 0 saves the logits and every missing /
unexpected key.

ckbridge writes LoongForge's names, which are TransformerEngine's: TE fuses a norm into the
linear after it. The local spec keeps those norms as modules, so four names are mapped before
loading (the same weights under the local spec's name), and `_extra_state` entries that hold None
where the local module has no extra state are dropped; both are counted in the result:
    self_attention.linear_qkv.layer_norm_weight       -> input_layernorm.weight
    mlp.linear_fc1.layer_norm_weight                  -> pre_mlp_layernorm.weight
    self_attention.linear_q_up_proj.layer_norm_weight -> self_attention.q_layernorm.weight
    self_attention.linear_kv_up_proj.layer_norm_weight -> self_attention.kv_layernorm.weight
A `torch_dist` checkpoint (release/metadata.json) is loaded through dist_checkpointing.load; the
local spec's sharded keys are TE names already, except an MoE layer's pre-MLP norm and MLA's q norm
(see SHARDED_LOCAL_TO_TE).
"""
import argparse
import contextlib
import json
import os
import sys

import torch
import torch.nn.functional as F

TE_TO_LOCAL = [('self_attention.linear_qkv.layer_norm_weight', 'input_layernorm.weight'),
               ('mlp.linear_fc1.layer_norm_weight', 'pre_mlp_layernorm.weight'),
               ('self_attention.linear_q_up_proj.layer_norm_weight', 'self_attention.q_layernorm.weight'),
               ('self_attention.linear_kv_up_proj.layer_norm_weight', 'self_attention.kv_layernorm.weight')]


def to_local(k):
    for te, loc in TE_TO_LOCAL:
        if k.endswith(te):
            return k[:-len(te)] + loc
    return k


# torch_dist: the local spec's sharded keys already use the TE names (its layers'
# sharded_state_dict_keys_map), also for an MoE layer's pre-MLP norm, which the TE spec (and so
# LoongForge's names, which ckbridge writes) keeps as a module of its own: that one key is looked up
# under the TE spec's name.
SHARDED_LOCAL_TO_TE = [('mlp.linear_fc1.layer_norm_weight', 'pre_mlp_layernorm.weight'),
                       # MLA (DeepSeek V2 / V3): the local spec's keys map leaves the q / kv norms
                       # under their module names; the TE spec fuses them into linear_q/kv_up_proj
                       ('self_attention.q_layernorm.weight', 'self_attention.linear_q_up_proj.layer_norm_weight'),
                       ('self_attention.kv_layernorm.weight', 'self_attention.linear_kv_up_proj.layer_norm_weight')]


def sharded_key(k, names):
    if k in names:
        return k
    for loc, te in SHARDED_LOCAL_TO_TE:
        if k.endswith(loc) and k[:-len(loc)] + te in names:
            return k[:-len(loc)] + te
    return k


def use_v2_group_limited_topk():
    """DeepSeek V2's group-limited greedy routing (transformers' DeepseekV2: a group scores the MAX of
    its experts' softmax scores; the top `topk_group` groups are kept, then the top-k experts of
    those) in place of Megatron-Core's group_limited_topk, which scores a group by the SUM of its
    top-(topk / group_topk) experts (DeepSeek V3's node-limited rule; equal to V2's only when
    topk == group_topk). The routing rule is the model's, not the checkpoint's: this check is about
    the converted weights, so the Megatron model is made to route as the HF model does."""
    from megatron.core.transformer.moe import moe_utils

    def v2_group_limited_topk(scores, topk, num_tokens, num_experts, num_groups, group_topk):
        group_scores = scores.view(num_tokens, num_groups, -1).max(dim=-1).values
        group_idx = torch.topk(group_scores, k=group_topk, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(num_tokens, num_groups, num_experts // num_groups)
        masked = scores.masked_fill(~score_mask.reshape(num_tokens, -1).bool(), float('-inf'))
        return torch.topk(masked, k=topk, dim=-1)

    moe_utils.group_limited_topk = v2_group_limited_topk


def build_config(c, tp, ep, cpu):
    """Megatron-Core TransformerConfig from an HF config.json dict."""
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig
    mla = 'kv_lora_rank' in c
    L, H = c['num_hidden_layers'], c['hidden_size']
    kw = dict(num_layers=L, hidden_size=H, ffn_hidden_size=c['intermediate_size'],
              num_attention_heads=c['num_attention_heads'],
              normalization='RMSNorm', layernorm_epsilon=c['rms_norm_eps'], gated_linear_unit=True,
              activation_func=F.silu, add_bias_linear=False, tensor_model_parallel_size=tp,
              expert_model_parallel_size=ep, expert_tensor_parallel_size=tp, sequence_parallel=False,
              transformer_impl='local', apply_rope_fusion=False, masked_softmax_fusion=False,
              bias_dropout_fusion=False, bias_activation_fusion=False, gradient_accumulation_fusion=False,
              persist_layer_norm=False, params_dtype=torch.float32, bf16=False, fp16=False, attention_dropout=0.0,
              hidden_dropout=0.0, perform_initialization=False, use_cpu_initialization=cpu)
    experts = c.get('num_experts') or c.get('n_routed_experts') or 0
    if experts:
        kw.update(num_moe_experts=experts, moe_ffn_hidden_size=c['moe_intermediate_size'],
                  moe_router_topk=c['num_experts_per_tok'], moe_router_score_function='softmax',
                  moe_router_load_balancing_type='none', moe_aux_loss_coeff=0.0, moe_router_dtype='fp32',
                  moe_token_dispatcher_type='alltoall' if ep > 1 else 'allgather', moe_grouped_gemm=False)
        if mla:  # DeepSeek V2: softmax over all experts, top-k, no renormalisation, scaled
            if c.get('topk_method', 'greedy') == 'group_limited_greedy' and c.get('n_group', 1) > 1:
                kw.update(moe_router_num_groups=c['n_group'], moe_router_group_topk=c['topk_group'])
                use_v2_group_limited_topk()
            else:
                assert c.get('topk_method', 'greedy') == 'greedy' or c.get('n_group', 1) == 1, c.get('topk_method')
            assert not c.get('norm_topk_prob'), 'V2 with norm_topk_prob'
            first = c.get('first_k_dense_replace', 0)
            kw.update(moe_router_pre_softmax=True, moe_router_topk_scaling_factor=c.get('routed_scaling_factor', 1.0),
                      moe_layer_freq=[0] * first + [1] * (L - first),
                      moe_shared_expert_intermediate_size=c['moe_intermediate_size'] * c.get('n_shared_experts', 0))
        else:  # Qwen3-MoE: top-k of the logits, softmax over those = renormalised softmax (norm_topk_prob)
            assert c.get('norm_topk_prob', True), 'Qwen3-MoE without norm_topk_prob'
            kw.update(moe_router_pre_softmax=False)
    if not mla:
        hd = c.get('head_dim') or H // c['num_attention_heads']
        bias = c.get('attention_bias', c['model_type'] in ('qwen2', 'mimo'))  # Qwen2's q/k/v always have a bias
        return TransformerConfig(num_query_groups=c['num_key_value_heads'], kv_channels=hd,
                                 qk_layernorm=c['model_type'].startswith('qwen3'), add_qkv_bias=bias, **kw)
    rs = c.get('rope_scaling') or {}
    yarn = rs.get('type', rs.get('rope_type')) == 'yarn'
    extra = dict(rope_type='yarn', rotary_scaling_factor=rs['factor'],
                 original_max_position_embeddings=rs['original_max_position_embeddings'], beta_fast=rs['beta_fast'],
                 beta_slow=rs['beta_slow'], mscale=rs['mscale'], mscale_all_dim=rs['mscale_all_dim']) if yarn else \
        dict(rope_type='rope')
    return MLATransformerConfig(num_query_groups=c['num_attention_heads'], kv_channels=c['v_head_dim'],
                                q_lora_rank=c.get('q_lora_rank'), kv_lora_rank=c['kv_lora_rank'],
                                qk_head_dim=c['qk_nope_head_dim'], qk_pos_emb_head_dim=c['qk_rope_head_dim'],
                                v_head_dim=c['v_head_dim'], qk_layernorm=True, rotary_base=c['rope_theta'],
                                **extra, **kw)


def patch_megatron():
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class MLADotProductAttention(DotProductAttention):
        def __init__(self, *args, k_channels=None, v_channels=None, **kw):
            super().__init__(*args, **kw)

    from megatron.core.transformer import multi_latent_attention as mla_mod
    if not isinstance(getattr(mla_mod, 'TELinear', None), type):
        mla_mod.HAVE_TE = False
    from megatron.core.transformer.moe import moe_utils
    if not hasattr(moe_utils, 'te_general_gemm'):
        moe_utils.te_general_gemm = None
    return MLADotProductAttention


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--ckpt', required=True)
    ap.add_argument('--hf-config', required=True)
    ap.add_argument('--tp', type=int, default=1)
    ap.add_argument('--ep', type=int, default=1)
    ap.add_argument('--inputs', required=True)
    ap.add_argument('--out', required=True)
    a = ap.parse_args()
    c = json.load(open(a.hf_config))
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev == 'cuda':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.cuda.current_device = lambda: 'cpu'
    torch.distributed.init_process_group('nccl' if dev == 'cuda' else 'gloo')
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    parallel_state.initialize_model_parallel(a.tp, 1, expert_model_parallel_size=a.ep, expert_tensor_parallel_size=a.tp)
    if dev == 'cuda':
        tensor_parallel.random.model_parallel_cuda_manual_seed(1234)
    else:
        tensor_parallel.get_cuda_rng_tracker().fork = lambda *x, **k: contextlib.nullcontext()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    ep_rank = parallel_state.get_expert_model_parallel_rank()
    config = build_config(c, a.tp, a.ep, dev == 'cpu')
    mla = 'kv_lora_rank' in c
    attn_cls = patch_megatron()
    block_spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization='RMSNorm')
    if mla:
        for spec in block_spec.layer_specs:
            spec.submodules.self_attention.submodules.core_attention = attn_cls
    tied = bool(c.get('tie_word_embeddings', False))

    rel = os.path.join(a.ckpt, 'release')
    torch_dist = os.path.exists(os.path.join(rel, 'metadata.json'))
    adapted = dropped = 0
    if torch_dist:
        import torch.distributed.checkpoint as dcp
        meta = dcp.FileSystemReader(rel).read_metadata().state_dict_metadata
        vp = meta['embedding.word_embeddings.weight'].size[0]
    else:
        name = 'mp_rank_%02d' % tp_rank + ('_%03d' % ep_rank if a.ep > 1 else '')
        path = os.path.join(rel, name, 'model_optim_rng.pt')
        sd = torch.load(path, map_location='cpu', weights_only=False)['model']
        vp = sd['embedding.word_embeddings.weight'].shape[0] * a.tp
    ids = torch.load(a.inputs)
    b, s = ids.shape
    model = GPTModel(config, transformer_layer_spec=block_spec, vocab_size=vp, max_sequence_length=s,
                     pre_process=True, post_process=True, parallel_output=False,
                     share_embeddings_and_output_weights=tied, position_embedding_type='rope',
                     rotary_base=int(c['rope_theta']) if not mla else 10000).to(dev)
    own = model.state_dict()
    if torch_dist:
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing.dict_utils import nested_values
        from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
        if dev == 'cpu':
            torch.cuda.synchronize = lambda *x, **k: None
        ssd = model.sharded_state_dict()
        for v in nested_values(ssd):
            if isinstance(v, ShardedTensor):
                k = sharded_key(v.key, meta)
                if k != v.key:
                    v.key, adapted = k, adapted + 1
        want = {(v.unique_key if isinstance(v, ShardedObject) else v.key) for v in nested_values(ssd)}
        have = set(meta)
        sd = dist_checkpointing.load(ssd, rel)
        for k in torch.load(os.path.join(rel, 'common.pt'), weights_only=False):
            sd.pop(k, None)
        res = model.load_state_dict(sd, strict=False)
        res = type(res)(sorted(set(res.missing_keys) | (want - have)), sorted(set(res.unexpected_keys) | (have - want)))
        file = os.path.relpath(rel, a.ckpt)
    else:
        out = {}
        for k, v in sd.items():
            k2 = to_local(k)
            adapted += k2 != k
            if k2.endswith('._extra_state') and k2 not in own and v is None:
                dropped += 1
                continue
            out[k2] = v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        sd = out
        res = model.load_state_dict(sd, strict=False)
        file = os.path.relpath(path, a.ckpt)
    model.eval()
    outs = []
    model.output_layer.register_forward_hook(lambda m, i, o: outs.append(o[0].detach().clone()))
    ids_c = ids.to(dev)
    pos = torch.arange(s, device=dev).unsqueeze(0).expand(b, s)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool, device=dev), diagonal=1)[None, None]
    with torch.no_grad():
        model(ids_c, pos, mask)
    logits = outs[-1].transpose(0, 1).float().cpu()
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, {'rank': torch.distributed.get_rank(), 'file': file,
                                                   'missing': list(res.missing_keys),
                                                   'unexpected': list(res.unexpected_keys), 'loaded': len(sd),
                                                   'adapted': adapted, 'dropped_none_extra_state': dropped})
    if torch.distributed.get_rank() == 0:
        torch.save({'main': logits, 'ranks': gathered, 'vp': vp}, a.out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
