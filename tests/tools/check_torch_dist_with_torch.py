"""Manual cross-check of ckbridge's torch_dist output with real torch (>= 2.4) and, optionally,
real Megatron-Core. NOT run in CI (needs a recent torch / megatron-core; see
make_torch_dist_fixtures.py for the versions used).

  python check_torch_dist_with_torch.py dcp <ckpt_dir> <reference.safetensors>
      torch.distributed.checkpoint: FileSystemReader.read_metadata() and dcp.load (no process
      group) of every tensor into plain tensors; each must equal the reference bit for bit, and
      every bytes item must load with torch.load.
  python check_torch_dist_with_torch.py mcore <ckpt_dir> <reference.safetensors>
      Megatron-Core dist_checkpointing.load of the checkpoint into the tiny GPTModel of
      make_torch_dist_fixtures.py (gpt_tiny; local spec): the loaded model's state dict must equal
      the reference bit for bit (stacked expert tensors unstacked per expert).
  python check_torch_dist_with_torch.py resave <ckpt_dir> <dims.json> <work_dir>
      ckbridge's HF -> torch_dist output of the tests/gpu tiny DeepSeek model (dims.json as
      check_torch_dist_forward.py writes it), loaded into Megatron-Core's GPTModel and saved again
      by Megatron-Core: data files byte-identical, metadata equal.
"""
import io
import os
import sys


def dcp_check(ckpt, ref_path):
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata
    from safetensors.torch import load_file
    ref = load_file(ref_path)
    md = dcp.FileSystemReader(ckpt).read_metadata()
    sd, objs = {}, []
    for k, v in md.state_dict_metadata.items():
        if isinstance(v, TensorStorageMetadata):
            sd[k] = torch.empty(tuple(v.size), dtype=v.properties.dtype)
        else:
            assert isinstance(v, BytesStorageMetadata), (k, v)
            objs.append(k)
    dcp.load(sd, storage_reader=dcp.FileSystemReader(ckpt), no_dist=True)
    bad = [k for k in sd if k not in ref or sd[k].dtype != ref[k].dtype or sd[k].shape != ref[k].shape
           or not torch.equal(sd[k].view(torch.uint8), ref[k].contiguous().view(torch.uint8))]
    missing = sorted(set(ref) - set(sd))
    # bytes items: each storage range is a torch.save archive
    for k in objs:
        idx = [i for i in md.storage_data if i.fqn == k][0]
        info = md.storage_data[idx]
        with open(os.path.join(ckpt, info.relative_path), 'rb') as f:
            f.seek(info.offset)
            obj = torch.load(io.BytesIO(f.read(info.length)), weights_only=False)
        assert obj == [None], (k, obj)
    print(f"dcp: {len(sd)} tensors loaded, {len(bad)} differ {bad[:5]}, {len(missing)} missing {missing[:5]}, "
          f"{len(objs)} bytes items")
    return 0 if not bad and not missing else 1


def mcore_check(ckpt, ref_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_torch_dist_fixtures as mk
    import torch
    from megatron.core import dist_checkpointing
    from safetensors.torch import load_file
    mk.setup()
    model = mk.build_gpt_tiny()
    with torch.no_grad():
        for t in model.state_dict().values():  # parameters and buffers (expert bias)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                t.zero_()
    # Default strict mode: a key the model needs but the checkpoint lacks raises in DCP's load.
    # (The 'raise_all' / 'return_all' modes go through load_tensors_metadata, which in 0.16.1 fails
    # on TensorProperties.strides for any checkpoint, Megatron-Core's own included.) Unexpected
    # keys: the checkpoint's keys against the model's sharded keys, below.
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    import torch.distributed.checkpoint as dcp
    want = {(v.unique_key if isinstance(v, ShardedObject) else v.key) for v in nested_values(model.sharded_state_dict())}
    have = set(dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata)
    loaded = dist_checkpointing.load(model.sharded_state_dict(), ckpt)
    model.load_state_dict(loaded)  # strict: every model key is in what was loaded
    print(f"mcore: {len(want - have)} missing, {len(have - want)} unexpected keys")
    ref = load_file(ref_path)
    got = mk.reference_tensors(model)
    bad = [k for k in ref if k not in got or got[k].dtype != ref[k].dtype
           or not torch.equal(got[k].contiguous().view(torch.uint8), ref[k].contiguous().view(torch.uint8))]
    print(f"mcore: {len(got)} tensors after dist_checkpointing.load , "
          f"{len(bad)} differ {bad[:5]}")
    return 0 if not bad and len(got) == len(ref) and want == have else 1


def resave_check(ckpt, dims_json, work):
    """Loads ckbridge's torch_dist output (HF -> torch_dist of the tests/gpu tiny DeepSeek model) into
    Megatron-Core's GPTModel (local spec, bf16), saves it again with dist_checkpointing.save and
    compares: the data files and metadata.json must be byte-identical to ckbridge's, `.metadata`
    equal as objects (ignoring save_id / checkpoint_id), common.pt aside (Megatron saved no common state here)."""
    import filecmp
    import json
    import pickle
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'gpu'))
    import make_torch_dist_fixtures as mk
    import mcore_forward as mf
    from megatron.core import dist_checkpointing
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec
    import torch.distributed.checkpoint as dcp
    import contextlib
    from megatron.core import tensor_parallel
    mk.setup()
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    d = json.load(open(dims_json))
    config = mf.build_config(d, 1, 1, 1, cpu=True)
    attn_cls = mf.patch_megatron()
    block_spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization='RMSNorm')
    for spec in block_spec.layer_specs:
        spec.submodules.self_attention.submodules.core_attention = attn_cls
    mtp_spec = get_gpt_mtp_block_spec(config, block_spec.layer_specs[-1], use_transformer_engine=False)
    vp = dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata['embedding.word_embeddings.weight'].size[0]
    model = GPTModel(config, transformer_layer_spec=block_spec, vocab_size=vp, max_sequence_length=32,
                     pre_process=True, post_process=True, parallel_output=False,
                     share_embeddings_and_output_weights=False, position_embedding_type='rope',
                     mtp_block_spec=mtp_spec).to(torch.bfloat16)
    for m in model.modules():
        if hasattr(m, 'expert_bias') and isinstance(m.expert_bias, torch.Tensor):
            m.expert_bias.data = m.expert_bias.data.float()
    sd = dist_checkpointing.load(model.sharded_state_dict(), ckpt)
    for k in torch.load(os.path.join(ckpt, 'common.pt'), weights_only=False):
        sd.pop(k, None)
    model.load_state_dict(sd)
    out = os.path.join(work, 'resaved')
    os.makedirs(out)
    dist_checkpointing.save(model.sharded_state_dict(), out)
    names = sorted(f for f in os.listdir(out) if f.endswith('.distcp')) + ['metadata.json']
    same = {f: filecmp.cmp(os.path.join(out, f), os.path.join(ckpt, f), shallow=False) for f in names}
    a = pickle.load(open(os.path.join(out, '.metadata'), 'rb'))
    b = pickle.load(open(os.path.join(ckpt, '.metadata'), 'rb'))
    md_same = (a.state_dict_metadata == b.state_dict_metadata and a.storage_data == b.storage_data
               and list(a.state_dict_metadata) == list(b.state_dict_metadata))
    print(f"resave: Megatron-Core re-saved {len(a.state_dict_metadata)} entries; files identical to ckbridge's: {same}; "
          f".metadata state_dict_metadata + storage_data equal (and in the same order): {md_same}")
    return 0 if all(same.values()) and md_same else 1


if __name__ == "__main__":
    mode, ckpt, ref = sys.argv[1:4]
    if mode == 'resave':
        sys.exit(resave_check(ckpt, ref, sys.argv[4]))
    sys.exit(dcp_check(ckpt, ref) if mode == 'dcp' else mcore_check(ckpt, ref))
