"""Runs a ckbridge-converted Megatron-Core checkpoint in Megatron-Core's own GPTModel.

Started by gpu_proof.py through torchrun, one process per model-parallel rank:
    torchrun --nproc_per_node=W mcore_forward.py --ckpt DIR --tp T --ep E --etp X --dims dims.json
        --inputs ids.pt --out result.pt
Builds the DeepSeek-V3-style model (MLA + dense + MoE with shared expert and expert bias + YaRN +
MTP) from Megatron-Core's LOCAL layer spec (no TransformerEngine), loads each rank's
release/mp_rank_TT[_EEE]/model_optim_rng.pt written by ckbridge (converted with
configs/deepseek_v3/ckpt_convert/deepseek_v3_convert_local.yaml), runs one forward pass in fp32
and saves, from rank 0, the main and MTP logits plus every missing / unexpected key.

Two patches make the local spec build MLA + MTP (see the reference notes on Megatron-Core without
TE): the local DotProductAttention rejects MLA's k_channels / v_channels (Megatron-LM issue 1589),
newer releases' MTP asks is_inference_column_parallel_linear, which fails without TE, and 0.16's
MLA tests isinstance(linear_proj, TELinear) with a placeholder TELinear and its router
reads an undefined te_general_gemm.
"""
import argparse
import contextlib
import json
import os
import sys

import torch
import torch.nn.functional as F


def build_config(d, tp, ep, etp, cpu=False):
    from megatron.core.transformer.transformer_config import MLATransformerConfig
    moe_freq = [0] * d['first_k_dense'] + [1] * (d['num_layers'] - d['first_k_dense'])
    return MLATransformerConfig(
        num_layers=d['num_layers'], hidden_size=d['hidden_size'], ffn_hidden_size=d['ffn_hidden_size'],
        num_attention_heads=d['num_attention_heads'], num_query_groups=d['num_query_groups'],
        kv_channels=d['v_head_dim'],  # local attention sizes its output from kv_channels
        q_lora_rank=d['q_lora_rank'], kv_lora_rank=d['kv_lora_rank'], qk_head_dim=d['qk_head_dim'],
        qk_pos_emb_head_dim=d['qk_pos_emb_head_dim'], v_head_dim=d['v_head_dim'],
        normalization='RMSNorm', layernorm_epsilon=d['layernorm_epsilon'], qk_layernorm=True,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        rope_type='yarn', rotary_base=d['rotary_base'], rotary_scaling_factor=d['rotary_scaling_factor'],
        original_max_position_embeddings=d['original_max_position_embeddings'], beta_fast=d['beta_fast'],
        beta_slow=d['beta_slow'], mscale=d['mscale'], mscale_all_dim=d['mscale_all_dim'],  # MCore default 0.0
        num_moe_experts=d['num_experts'], moe_layer_freq=moe_freq, moe_ffn_hidden_size=d['moe_ffn_hidden_size'],
        moe_shared_expert_intermediate_size=d['moe_shared_expert_intermediate_size'],
        moe_router_topk=d['moe_router_topk'], moe_router_num_groups=d['moe_router_num_groups'],
        moe_router_group_topk=d['moe_router_group_topk'],
        moe_router_topk_scaling_factor=d['moe_router_topk_scaling_factor'],
        moe_router_score_function='sigmoid', moe_router_enable_expert_bias=True, moe_router_dtype='fp32',
        moe_router_load_balancing_type='none', moe_aux_loss_coeff=0.0,
        moe_token_dispatcher_type='alltoall' if ep > 1 else 'allgather', moe_grouped_gemm=False,
        tensor_model_parallel_size=tp, expert_model_parallel_size=ep, expert_tensor_parallel_size=etp,
        sequence_parallel=False, transformer_impl='local', apply_rope_fusion=False, masked_softmax_fusion=False,
        bias_dropout_fusion=False, bias_activation_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False, params_dtype=torch.float32, bf16=False, fp16=False,
        attention_dropout=0.0, hidden_dropout=0.0, mtp_num_layers=1, perform_initialization=False,
        use_cpu_initialization=cpu)


def patch_megatron():
    from megatron.core.transformer import multi_token_prediction as mtp_mod
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class MLADotProductAttention(DotProductAttention):
        """Local attention that accepts (and ignores) MLA's k_channels / v_channels: with
        kv_channels = v_head_dim its output width is already v_head_dim x heads per partition."""

        def __init__(self, *args, k_channels=None, v_channels=None, **kw):
            super().__init__(*args, **kw)

    if hasattr(mtp_mod, 'is_inference_column_parallel_linear'):
        mtp_mod.is_inference_column_parallel_linear = lambda *a, **k: False
    # 0.16: without TE, extensions.transformer_engine still imports (with placeholder classes), so
    # MLA believes TE is there and calls isinstance(linear_proj, <placeholder>)
    from megatron.core.transformer import multi_latent_attention as mla_mod
    if not isinstance(getattr(mla_mod, 'TELinear', None), type):
        mla_mod.HAVE_TE = False
    # 0.16: moe_utils names te_general_gemm only when TE imports (NameError in the router otherwise)
    from megatron.core.transformer.moe import moe_utils
    if not hasattr(moe_utils, 'te_general_gemm'):
        moe_utils.te_general_gemm = None
    return MLADotProductAttention


def rank_file(ckpt, tp, ep, tp_rank, ep_rank):
    name = 'mp_rank_%02d' % tp_rank + ('_%03d' % ep_rank if ep > 1 else '')
    return os.path.join(ckpt, 'release', name, 'model_optim_rng.pt')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--ckpt', required=True)
    ap.add_argument('--tp', type=int, default=1)
    ap.add_argument('--ep', type=int, default=1)
    ap.add_argument('--etp', type=int, default=None)
    ap.add_argument('--dims', required=True)
    ap.add_argument('--inputs', required=True)
    ap.add_argument('--out', required=True)
    a = ap.parse_args()
    etp = a.etp if a.etp is not None else a.tp
    d = json.load(open(a.dims))

    # CPU (gloo) only serves to dry-run this script where no GPU is visible
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev == 'cuda':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:  # dry run: Megatron asks torch.cuda.current_device() for buffers it could put on the CPU
        torch.cuda.current_device = lambda: 'cpu'
    torch.distributed.init_process_group('nccl' if dev == 'cuda' else 'gloo')
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec

    parallel_state.initialize_model_parallel(a.tp, 1, expert_model_parallel_size=a.ep,
                                             expert_tensor_parallel_size=etp)
    if dev == 'cuda':  # weights come from the checkpoint; the RNG tracker only has to exist
        tensor_parallel.random.model_parallel_cuda_manual_seed(1234)
    else:
        tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    ep_rank = parallel_state.get_expert_model_parallel_rank()

    config = build_config(d, a.tp, a.ep, etp, cpu=dev == 'cpu')
    attn_cls = patch_megatron()
    block_spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization='RMSNorm')
    for spec in block_spec.layer_specs:
        spec.submodules.self_attention.submodules.core_attention = attn_cls
    mtp_spec = get_gpt_mtp_block_spec(config, block_spec.layer_specs[-1], use_transformer_engine=False)

    torch_dist = os.path.exists(os.path.join(a.ckpt, 'release', 'metadata.json'))
    if torch_dist:  # distributed checkpoint: layout-free, loaded through Megatron-Core's own loader
        path = os.path.join(a.ckpt, 'release')
        import torch.distributed.checkpoint as dcp
        vp = dcp.FileSystemReader(path).read_metadata().state_dict_metadata['embedding.word_embeddings.weight'].size[0]
    else:
        path = rank_file(a.ckpt, a.tp, a.ep, tp_rank, ep_rank)
        sd = torch.load(path, map_location='cpu', weights_only=False)['model']
        vp = sd['embedding.word_embeddings.weight'].shape[0] * a.tp
    ids = torch.load(a.inputs)
    b, s = ids.shape
    model = GPTModel(config, transformer_layer_spec=block_spec, vocab_size=vp, max_sequence_length=s,
                     pre_process=True, post_process=True, parallel_output=False,
                     share_embeddings_and_output_weights=False, position_embedding_type='rope',
                     mtp_block_spec=mtp_spec).to(dev)
    if torch_dist:
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing.dict_utils import nested_values
        from megatron.core.dist_checkpointing.mapping import ShardedObject
        if dev == 'cpu':
            torch.cuda.synchronize = lambda *a, **k: None
        ssd = model.sharded_state_dict()
        want = {(v.unique_key if isinstance(v, ShardedObject) else v.key) for v in nested_values(ssd)}
        have = set(dcp.FileSystemReader(path).read_metadata().state_dict_metadata)
        sd = dist_checkpointing.load(ssd, path)  # bf16 checkpoint into the fp32 model's tensors
        for k in torch.load(os.path.join(path, 'common.pt'), weights_only=False):  # merged common.pt state
            sd.pop(k, None)
        res = model.load_state_dict(sd, strict=False)
        res = type(res)(sorted(set(res.missing_keys) | (want - have)), sorted(set(res.unexpected_keys) | (have - want)))
    else:
        # fp32 model: cast the BF16 checkpoint up (exact); expert_bias is already fp32; _extra_state stays.
        sd = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in sd.items()}
        res = model.load_state_dict(sd, strict=False)
    model.eval()

    # output_layer runs twice: first on the MTP hidden states, then on the main ones. Clone: the
    # loss (vocab-parallel cross entropy) works on the logits in place.
    outs = []
    model.output_layer.register_forward_hook(lambda m, i, o: outs.append(o[0].detach().clone()))
    ids_c = ids.to(dev)
    pos = torch.arange(s, device=dev).unsqueeze(0).expand(b, s)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool, device=dev), diagonal=1)[None, None]
    with torch.no_grad():
        model(ids_c, pos, mask, labels=ids_c)  # labels: 0.16's MTP path needs them (loss is discarded)
    if len(outs) != 2:
        raise RuntimeError('expected output_layer to run twice (MTP + main), ran %d times' % len(outs))
    mtp_logits, main_logits = [o.transpose(0, 1).float().cpu() for o in outs]  # [s,b,V] -> [b,s,V]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, {'rank': torch.distributed.get_rank(), 'file': os.path.relpath(path, a.ckpt),
                                                   'missing': list(res.missing_keys),
                                                   'unexpected': list(res.unexpected_keys),
                                                   'loaded': len(sd)})
    if torch.distributed.get_rank() == 0:
        torch.save({'main': main_logits, 'mtp': mtp_logits, 'ranks': gathered, 'vp': vp}, a.out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
