"""Makes the torch_dist fixtures in tests/data/torch_dist/ with real Megatron-Core and torch.

NOT run in CI (it needs megatron-core and a recent torch, several GB). The committed fixtures were
made with megatron-core 0.16.1 and torch 2.15.0 (CPU wheels, Python 3.11), single process (gloo,
world size 1), following the CPU recipe in the reference notes on torch_dist:
    python tests/tools/make_torch_dist_fixtures.py tests/data/torch_dist
    python tests/tools/make_torch_dist_fixtures.py --ds-tiny build tests/data/torch_dist/ds_tiny_megatron
    python tests/tools/make_torch_dist_fixtures.py --family qwen3 build tests/data/torch_dist/qwen3_tiny_megatron

Each fixture directory <name>/ holds what `dist_checkpointing.save` wrote (metadata.json,
common.pt, .metadata, __0_0.distcp, __0_1.distcp), and <name>.ref.safetensors holds every sharded
tensor as torch had it before the save (global tensors, written by the safetensors library): the
independent reference the C++ tests compare ckbridge's reader and writer with.

  simple:   hand-built sharded state dict: bf16 / fp32 / float8_e4m3fn / int64 tensors, a tensor
            saved in two row chunks (the SwiGLU fc1 layout), a stacked expert tensor
            [E, rows, cols] with a prepended expert axis (one chunk per expert), a ShardedObject
            (an `_extra_state` of a local-spec linear) and a common (non-sharded) part.
  gpt_tiny: Megatron-Core GPTModel, local layer spec: MLA + 1 dense layer + 1 MoE layer
            (4 sequential experts, shared expert, router expert bias) + 1 MTP layer, bf16
            (expert_bias fp32), random weights; `model.sharded_state_dict()` saved as is.
"""
import contextlib
import os
import sys


def setup():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29519")
    import torch
    # CPU-only machine: the async writer synchronises CUDA, the failure all-reduce asks for a device
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: 'cpu'
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state
    parallel_state.initialize_model_parallel(1, 1)


def save(sd, out, ref):
    import torch
    from megatron.core import dist_checkpointing
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=False)
    # checkpoint_id in .metadata is the path as given: save from the parent so it is the bare name
    cwd = os.getcwd()
    os.chdir(os.path.dirname(os.path.abspath(out)))
    try:
        dist_checkpointing.save(sd, os.path.basename(out))
    finally:
        os.chdir(cwd)
    save_file({k: v.contiguous() for k, v in ref.items()}, out + '.ref.safetensors')


def simple(out):
    import torch
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor
    g = torch.Generator().manual_seed(17)
    w = torch.randn(6, 8, generator=g).to(torch.bfloat16)
    b = torch.randn(5, generator=g)
    f8 = (torch.randn(4, 4, generator=g) * 8).to(torch.float8_e4m3fn)
    cnt = torch.arange(3, dtype=torch.int64) * 1000003
    fc1 = torch.randn(8, 4, generator=g).to(torch.bfloat16)   # [gate; up], saved in two chunks
    ex = torch.randn(3, 2, 4, generator=g).to(torch.bfloat16)  # 3 experts stacked
    sd = {
        'w': ShardedTensor.from_rank_offsets('layer.w', w),
        'w_extra': ShardedObject('layer.w._extra_state', None, (1,), (0,), replica_id=0),
        'b': ShardedTensor.from_rank_offsets('layer.b', b),
        'f8': ShardedTensor.from_rank_offsets('layer.f8', f8),
        'cnt': ShardedTensor.from_rank_offsets('layer.count', cnt),
        'fc1_gate': ShardedTensor.from_rank_offsets('mlp.linear_fc1.weight', fc1[:4], (0, 0, 2)),
        'fc1_up': ShardedTensor.from_rank_offsets('mlp.linear_fc1.weight', fc1[4:], (0, 1, 2)),
        'iteration': 7,
        'args': {'hidden_size': 8, 'name': 'simple'},
    }
    for e in range(3):
        sd['ex%d' % e] = ShardedTensor.from_rank_offsets('experts.weight', ex[e], (0, e, 3), prepend_axis_num=1)
    save(sd, out, {'layer.w': w, 'layer.b': b, 'layer.f8': f8, 'layer.count': cnt,
                   'mlp.linear_fc1.weight': fc1, 'experts.weight': ex})


def build_gpt_tiny():
    """The gpt_tiny GPTModel (bf16, random weights from seed 17; expert bias fp32)."""
    import torch
    from megatron.core import tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'gpu'))
    import mcore_forward as mf  # the project's no-TE GPTModel config and patches
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    d = dict(num_layers=2, first_k_dense=1, hidden_size=32, ffn_hidden_size=48, num_attention_heads=2,
             num_query_groups=2, q_lora_rank=16, kv_lora_rank=8, qk_head_dim=8, qk_pos_emb_head_dim=4,
             v_head_dim=8, layernorm_epsilon=1e-6, rotary_base=10000, rotary_scaling_factor=40,
             original_max_position_embeddings=64, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0,
             num_experts=4, moe_ffn_hidden_size=16, moe_shared_expert_intermediate_size=16, moe_router_topk=2,
             moe_router_num_groups=1, moe_router_group_topk=1, moe_router_topk_scaling_factor=2.5)
    config = mf.build_config(d, 1, 1, 1, cpu=True)
    attn_cls = mf.patch_megatron()
    block_spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization='RMSNorm')
    for spec in block_spec.layer_specs:
        spec.submodules.self_attention.submodules.core_attention = attn_cls
    mtp_spec = get_gpt_mtp_block_spec(config, block_spec.layer_specs[-1], use_transformer_engine=False)
    torch.manual_seed(17)
    model = GPTModel(config, transformer_layer_spec=block_spec, vocab_size=64, max_sequence_length=32,
                     pre_process=True, post_process=True, parallel_output=False,
                     share_embeddings_and_output_weights=False, position_embedding_type='rope',
                     mtp_block_spec=mtp_spec)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.randn_like(p))
    model = model.to(torch.bfloat16)
    for m in model.modules():  # MCore keeps the router's expert bias in fp32
        if hasattr(m, 'expert_bias') and isinstance(m.expert_bias, torch.Tensor):
            m.expert_bias.data = m.expert_bias.data.float()
    return model


def reference_tensors(model):
    """The model's tensors under their checkpoint keys: sequential experts
    (...experts.local_experts.<e>.linear_fc1.weight) stacked as ...experts.experts.linear_fc1.weight."""
    import torch
    ref = {k: v.detach().clone() for k, v in model.state_dict().items()
           if isinstance(v, torch.Tensor) and not k.endswith('_extra_state')}
    stacked = {}
    for k in list(ref):
        if '.local_experts.' in k:
            pre, rest = k.split('.local_experts.')
            e, name = rest.split('.', 1)
            stacked.setdefault(pre + '.experts.' + name, {})[int(e)] = ref.pop(k)
    for k, per in stacked.items():
        ref[k] = torch.stack([per[e] for e in sorted(per)])
    return ref


def gpt_tiny(out):
    model = build_gpt_tiny()
    save(model.sharded_state_dict(), out, reference_tensors(model))


def ds_tiny(build, dest):
    """Megatron-Core's own save of the tiny DeepSeek-V3 model CI converts: the BF16 HF checkpoint of
    deepseek_v3_make_tiny (configs/deepseek_v3/deepseek_v3_tiny.yaml) is converted HF -> torch_dist
    by ckbridge, loaded into GPTModel (local spec, bf16) and saved again with dist_checkpointing.save.
    Kept: Megatron-Core's .metadata and metadata.json, and the size + sha256 of each data file
    (the data files themselves are 26 MB)."""
    import hashlib
    import json
    import shutil
    import subprocess
    import tempfile
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
    sys.path.insert(0, os.path.join(root, 'tests', 'gpu'))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpu_proof
    import check_torch_dist_with_torch as chk
    cfg = os.path.join(root, 'configs', 'deepseek_v3', 'deepseek_v3_tiny.yaml')
    conv = os.path.join(root, 'configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert_local.yaml')
    work = tempfile.mkdtemp()
    try:
        hf, td = os.path.join(work, 'hf'), os.path.join(work, 'td')
        subprocess.run([os.path.join(build, 'examples', 'deepseek_v3_make_tiny'), '--config_file', cfg, '--convert_file',
                        conv, '--out', hf, '--dtype', 'bf16'], check=True)
        subprocess.run([os.path.join(build, 'examples', 'ckbridge_convert'), '--load_platform', 'huggingface',
                        '--save_platform', 'mcore', '--config_file', cfg, '--convert_file', conv, '--load_ckpt_path', hf,
                        '--save_ckpt_path', td, '--safetensors', '-q', '--ckpt_format', 'torch_dist'], check=True)
        json.dump(gpu_proof.read_dims(cfg), open(os.path.join(work, 'dims.json'), 'w'))
        rc = chk.resave_check(os.path.join(td, 'release'), os.path.join(work, 'dims.json'), work)
        print('resave check rc', rc)
        out = os.path.join(work, 'resaved')
        os.makedirs(dest, exist_ok=False)
        for f in ('.metadata', 'metadata.json'):
            shutil.copy(os.path.join(out, f), os.path.join(dest, f))
        with open(os.path.join(dest, 'data_files.sha256'), 'w') as fh:
            for f in sorted(os.listdir(out)):
                if f.endswith('.distcp'):
                    data = open(os.path.join(out, f), 'rb').read()
                    fh.write('%s %d %s\n' % (hashlib.sha256(data).hexdigest(), len(data), f))
    finally:
        shutil.rmtree(work)


def family_tiny(family, build, dest):
    """Megatron-Core's own save of a family's tiny model as CI converts it (tests/python/ckb_families.py,
    seed 0): ckbridge converts the BF16 HF checkpoint to a LEGACY tp1 checkpoint, Megatron-Core's
    GPTModel (local spec, bf16, built from the HF config.json by tests/gpu/mcore_family_forward.py)
    loads it and saves it with dist_checkpointing.save(model.sharded_state_dict()). For a model whose
    layers are all alike (no moe_layer_freq list), Megatron stacks the decoder layers. Kept:
    .metadata, metadata.json and the size + sha256 of each data file."""
    import hashlib
    import json
    import shutil
    import subprocess
    import tempfile
    import torch
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
    sys.path.insert(0, os.path.join(root, 'tests', 'gpu'))
    sys.path.insert(0, os.path.join(root, 'tests', 'python'))
    import ckb_families as fam
    import mcore_family_forward as mff
    from megatron.core import dist_checkpointing, tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    f = fam.FAMILIES[family]
    work = tempfile.mkdtemp()
    try:
        hf, leg = os.path.join(work, 'hf'), os.path.join(work, 'leg')
        fam.generate(f, hf, 'bf16')
        subprocess.run([os.path.join(build, 'examples', 'ckbridge_convert'), '--model', family, '--load_platform',
                        'huggingface', '--save_platform', 'mcore', '--config_file', f.tiny, '--convert_file', f.convert,
                        '--load_ckpt_path', hf, '--save_ckpt_path', leg, '--safetensors', '-q'], check=True)
        setup()
        tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
        c = json.load(open(os.path.join(hf, 'config.json')))
        config = mff.build_config(c, 1, 1, cpu=True)
        mff.patch_megatron()
        spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization='RMSNorm')
        sd = torch.load(os.path.join(leg, 'release', 'mp_rank_00', 'model_optim_rng.pt'), weights_only=False)['model']
        vp = sd['embedding.word_embeddings.weight'].shape[0]
        model = GPTModel(config, transformer_layer_spec=spec, vocab_size=vp, max_sequence_length=32, pre_process=True,
                         post_process=True, parallel_output=False,
                         share_embeddings_and_output_weights=bool(c.get('tie_word_embeddings')),
                         position_embedding_type='rope').to(torch.bfloat16)
        own = model.state_dict()
        sd = {mff.to_local(k): v for k, v in sd.items() if not (v is None and mff.to_local(k) not in own)}
        res = model.load_state_dict(sd, strict=False)
        assert not res.missing_keys and not res.unexpected_keys, res
        out = os.path.join(work, 'saved')
        os.makedirs(out)
        dist_checkpointing.save(model.sharded_state_dict(), out)
        os.makedirs(dest, exist_ok=False)
        for name in ('.metadata', 'metadata.json'):
            shutil.copy(os.path.join(out, name), os.path.join(dest, name))
        with open(os.path.join(dest, 'data_files.sha256'), 'w') as fh:
            for name in sorted(os.listdir(out)):
                if name.endswith('.distcp'):
                    data = open(os.path.join(out, name), 'rb').read()
                    fh.write('%s %d %s\n' % (hashlib.sha256(data).hexdigest(), len(data), name))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    if sys.argv[1] == '--family':  # --family NAME BUILD_DIR DEST_DIR (needs the built converter)
        family_tiny(sys.argv[2], sys.argv[3], sys.argv[4])
        sys.exit(0)
    if sys.argv[1] == '--ds-tiny':  # --ds-tiny BUILD_DIR DEST_DIR (needs the built converter)
        ds_tiny(sys.argv[2], sys.argv[3])
        sys.exit(0)
    dest = sys.argv[1]
    setup()
    simple(os.path.join(dest, 'simple'))
    gpt_tiny(os.path.join(dest, 'gpt_tiny'))
