"""End-to-end proof of ckbridge's DeepSeek-V3 conversion against the real libraries.

Run by tests/gpu/run_convert_gpu.sh (which finds the converter and Megatron-Core); on its own:
    python tests/gpu/gpu_proof.py --bin DIR --work DIR
Steps (each check is one row of the closing table, with its measured value):
 1. Build a tiny random DeepseekV3ForCausalLM with transformers from
    configs/deepseek_v3/deepseek_v3_gpu_tiny.yaml (2 dense + 2 MoE layers, 8 experts), add an MTP
    layer's tensors as layer num_hidden_layers, save HF BF16 with save_pretrained, and write an HF
    FP8 copy by hand in DeepSeek's format (128x128 blocks, weight_scale_inv = amax / 448).
 2. Convert with ckbridge HF -> MCore -> HF (FP8: TP1 and TP2/EP2 grouped experts; BF16: the same,
    plus the local-spec layouts) and compare the HF safetensors bytes with the inputs.
 3. torch.load the MCore files (TransformerEngine FP8 classes from tests/python/te_stub), reassemble
    and dequantize every tensor and compare with transformers' weights and the FP8 input.
 4. Load the local-spec MCore checkpoints into Megatron-Core's GPTModel (tests/gpu/mcore_forward.py,
    torchrun) at TP1, TP2, EP2 and TP2+EP2 and compare main and MTP logits with transformers (fp32).
 5. --device cuda quantization: MCore / HF FP8 bytes equal the CPU path's.
Exits non-zero if any check fails; checks that cannot run here (no GPU, too few GPUs, no
Megatron-Core) are listed as NOT RUN and also make the exit code non-zero unless --allow-not-run.
With no GPU, --mcore-cpu dry-runs the TP1/TP2 Megatron checks on CPU processes (gloo).
"""
import argparse
import filecmp
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL_YAML = os.path.join('configs', 'deepseek_v3', 'deepseek_v3_gpu_tiny.yaml')
CONVERT_LF = os.path.join('configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert.yaml')
CONVERT_LOCAL = os.path.join('configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert_local.yaml')
FP8_MODULES = ('q_a_proj', 'q_b_proj', 'kv_a_proj_with_mqa', 'kv_b_proj', 'o_proj', 'gate_proj', 'up_proj',
               'down_proj')
LOGIT_TOL = 1e-5
MCORE_ON_CPU = False  # --mcore-cpu: dry-run the Megatron checks on the CPU (gloo) where no GPU is visible

ROWS = []  # (check, measured, bar, status)


def record(check, measured, bar, ok):
    status = 'NOT RUN' if ok is None else ('PASS' if ok else 'FAIL')
    ROWS.append((check, measured, bar, status))
    print('  [%s] %s: %s' % (status, check, measured), flush=True)


# ---------------------------------------------------------------------------------------------
# 1. the tiny model


def read_dims(path):
    """The model YAML's dims (flat keys; the moe_layer_freq resolver string gives first_k_dense)."""
    import yaml
    y = yaml.safe_load(open(path))
    m = re.search(r'\[0\]\*(\d+)\+\[1\]\*(\d+)', str(y['moe_layer_freq']))
    if not m or int(m.group(1)) + int(m.group(2)) != y['num_layers']:
        raise ValueError('%s: moe_layer_freq must read "[0]*K+[1]*N" with K+N = num_layers' % path)
    keys = ['num_layers', 'hidden_size', 'ffn_hidden_size', 'num_attention_heads', 'num_query_groups',
            'num_experts', 'moe_ffn_hidden_size', 'moe_shared_expert_intermediate_size', 'q_lora_rank',
            'kv_lora_rank', 'qk_head_dim', 'qk_pos_emb_head_dim', 'v_head_dim', 'moe_router_topk',
            'moe_router_num_groups', 'moe_router_group_topk', 'moe_router_topk_scaling_factor', 'rotary_base',
            'rotary_scaling_factor', 'original_max_position_embeddings', 'beta_fast', 'beta_slow', 'mscale',
            'mscale_all_dim', 'max_position_embeddings', 'layernorm_epsilon', 'mtp_num_layers']
    d = {k: y[k] for k in keys}
    d['first_k_dense'] = int(m.group(1))
    d['vocab_size'] = y['vocab_size_in_config_file']
    return d


def hf_config(d):
    from transformers import DeepseekV3Config
    return DeepseekV3Config(
        vocab_size=d['vocab_size'], hidden_size=d['hidden_size'], intermediate_size=d['ffn_hidden_size'],
        moe_intermediate_size=d['moe_ffn_hidden_size'], num_hidden_layers=d['num_layers'],
        first_k_dense_replace=d['first_k_dense'], num_attention_heads=d['num_attention_heads'],
        num_key_value_heads=d['num_query_groups'], q_lora_rank=d['q_lora_rank'], kv_lora_rank=d['kv_lora_rank'],
        qk_nope_head_dim=d['qk_head_dim'], qk_rope_head_dim=d['qk_pos_emb_head_dim'], v_head_dim=d['v_head_dim'],
        n_routed_experts=d['num_experts'],
        n_shared_experts=d['moe_shared_expert_intermediate_size'] // d['moe_ffn_hidden_size'],
        num_experts_per_tok=d['moe_router_topk'], n_group=d['moe_router_num_groups'],
        topk_group=d['moe_router_group_topk'], routed_scaling_factor=d['moe_router_topk_scaling_factor'],
        norm_topk_prob=True, rms_norm_eps=d['layernorm_epsilon'], max_position_embeddings=d['max_position_embeddings'],
        tie_word_embeddings=False, num_nextn_predict_layers=d['mtp_num_layers'], attention_bias=False,
        rope_parameters={'rope_type': 'yarn', 'factor': float(d['rotary_scaling_factor']),
                         'original_max_position_embeddings': d['original_max_position_embeddings'],
                         'beta_fast': float(d['beta_fast']), 'beta_slow': float(d['beta_slow']),
                         'mscale': float(d['mscale']), 'mscale_all_dim': float(d['mscale_all_dim']),
                         'rope_theta': float(d['rotary_base'])})


def randomize_(module, gen):
    """Weights N(0, 0.02); norms 1 + 0.1 N(0,1); router bias 0.05 U(0,1) (default init leaves norms
    at 1 and the bias at 0, which would hide misplaced norms / biases). Then round everything but the
    bias to BF16 so the BF16 checkpoint holds exactly the fp32 reference weights."""
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith('e_score_correction_bias'):
                t.copy_(0.05 * torch.rand(t.shape, generator=gen))
                continue
            if 'norm' in name and t.dim() == 1:
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=gen))
            elif t.dim() >= 2:
                t.copy_(0.02 * torch.randn(t.shape, generator=gen))
            t.copy_(t.bfloat16().float())


def on_disk(sd):
    """transformers' in-memory fused experts -> the per-expert names save_pretrained writes."""
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r'(.*\.mlp\.experts)\.(gate_up_proj|down_proj)', k)
        if not m:
            out[k] = v
            continue
        for e in range(v.shape[0]):
            if m.group(2) == 'gate_up_proj':
                half = v.shape[1] // 2
                out['%s.%d.gate_proj.weight' % (m.group(1), e)] = v[e, :half]
                out['%s.%d.up_proj.weight' % (m.group(1), e)] = v[e, half:]
            else:
                out['%s.%d.down_proj.weight' % (m.group(1), e)] = v[e]
    return out


class MtpRef(torch.nn.Module):
    """The MTP layer transformers does not build (DeepSeek's layer num_hidden_layers)."""

    def __init__(self, cfg, layer_idx):
        super().__init__()
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm
        h = cfg.hidden_size
        self.enorm = DeepseekV3RMSNorm(h, eps=cfg.rms_norm_eps)
        self.hnorm = DeepseekV3RMSNorm(h, eps=cfg.rms_norm_eps)
        self.eh_proj = torch.nn.Linear(2 * h, h, bias=False)
        self.layer = DeepseekV3DecoderLayer(cfg, layer_idx=layer_idx)
        self.shared_head_norm = DeepseekV3RMSNorm(h, eps=cfg.rms_norm_eps)

    def hf_tensors(self, prefix):
        out = {}
        for k, v in self.state_dict().items():
            if k.startswith('layer.'):
                out[prefix + k[len('layer.'):]] = v
            else:
                out[prefix + k.replace('shared_head_norm', 'shared_head.norm')] = v
        return on_disk(out)


def block_quant(w):
    """DeepSeek's recipe: zero-padded 128x128 blocks, s = amax / 448 (1 for an all-zero block),
    codes = e4m3(clamp(w / s)); returns (uint8 codes viewed as float8_e4m3fn, f32 scale_inv)."""
    m, n = w.shape
    bm, bn = -(-m // 128), -(-n // 128)
    wp = torch.zeros(bm * 128, bn * 128, dtype=torch.float32)
    wp[:m, :n] = w.float()
    blocks = wp.view(bm, 128, bn, 128)
    amax = blocks.abs().amax(dim=(1, 3))
    s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    q = (blocks / s[:, None, :, None]).clamp(-448, 448).view(bm * 128, bn * 128)[:m, :n]
    return q.to(torch.float8_e4m3fn), s.contiguous()


def dequant_hf(q, s):
    m, n = q.shape
    full = s.repeat_interleave(128, 0)[:m].repeat_interleave(128, 1)[:, :n]
    return q.float() * full


def is_fp8_name(name):
    parts = name.split('.')
    return len(parts) >= 2 and parts[-1] == 'weight' and parts[-2] in FP8_MODULES


def build_hf(work, d, seed):
    from safetensors.torch import load_file, save_file
    from transformers import DeepseekV3ForCausalLM
    cfg = hf_config(d)
    gen = torch.Generator().manual_seed(seed)
    model = DeepseekV3ForCausalLM._from_config(cfg, attn_implementation='eager', dtype=torch.float32)
    randomize_(model, gen)
    mtp = MtpRef(cfg, d['num_layers'])
    randomize_(mtp, gen)
    L = d['num_layers']

    bf16_dir = os.path.join(work, 'hf_bf16')
    tmp = os.path.join(work, 'hf_bf16_tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    m16 = DeepseekV3ForCausalLM._from_config(cfg, attn_implementation='eager', dtype=torch.float32)
    m16.load_state_dict(model.state_dict())
    m16.to(torch.bfloat16)
    for layer in m16.model.layers:  # transformers keeps this buffer fp32 (_keep_in_fp32_modules_strict)
        if hasattr(layer.mlp, 'gate') and hasattr(layer.mlp.gate, 'e_score_correction_bias'):
            layer.mlp.gate.e_score_correction_bias.data = layer.mlp.gate.e_score_correction_bias.data.float()
    m16.save_pretrained(tmp)
    files = sorted(f for f in os.listdir(tmp) if f.endswith('.safetensors'))
    if files != ['model.safetensors']:
        raise RuntimeError('expected save_pretrained to write one model.safetensors, got %s' % files)
    sd = load_file(os.path.join(tmp, 'model.safetensors'))
    mtp_sd = mtp.hf_tensors('model.layers.%d.' % L)
    mtp_sd['model.layers.%d.embed_tokens.weight' % L] = sd['model.embed_tokens.weight'].float()
    mtp_sd['model.layers.%d.shared_head.head.weight' % L] = sd['lm_head.weight'].float()
    for k, v in mtp_sd.items():
        sd[k] = v.contiguous().float() if k.endswith('e_score_correction_bias') else v.contiguous().to(torch.bfloat16)
    os.makedirs(bf16_dir, exist_ok=True)
    save_file(sd, os.path.join(bf16_dir, 'model.safetensors'), metadata={'format': 'pt'})
    shutil.copy(os.path.join(tmp, 'config.json'), os.path.join(bf16_dir, 'config.json'))
    shutil.rmtree(tmp)

    fp8_dir = os.path.join(work, 'hf_fp8')
    os.makedirs(fp8_dir, exist_ok=True)
    sd8 = {}
    for k, v in sd.items():
        if is_fp8_name(k):
            q, s = block_quant(v.float())
            sd8[k] = q
            sd8[k + '_scale_inv'] = s
        else:
            sd8[k] = v
    save_file(sd8, os.path.join(fp8_dir, 'model.safetensors'), metadata={'format': 'pt'})
    cj = json.load(open(os.path.join(bf16_dir, 'config.json')))
    cj['quantization_config'] = {'activation_scheme': 'dynamic', 'fmt': 'e4m3', 'quant_method': 'fp8',
                                 'weight_block_size': [128, 128]}
    json.dump(cj, open(os.path.join(fp8_dir, 'config.json'), 'w'), indent=2, sort_keys=True)
    n8 = sum(1 for k in sd if is_fp8_name(k))
    print('built HF BF16 (%d tensors) and HF FP8 (%d FP8 weights + scales) under %s' % (len(sd), n8, work))
    return cfg, model, mtp, sd, sd8


# ---------------------------------------------------------------------------------------------
# 2. conversions


class Converter:
    def __init__(self, bindir, work, device_ok):
        self.bin = None
        for name in ('ckbridge_convert_cuda', 'ckbridge_convert'):
            p = os.path.join(bindir, name)
            if os.access(p, os.X_OK):
                self.bin = p
                break
        if not self.bin:
            raise RuntimeError('no ckbridge_convert[_cuda] in %s' % bindir)
        self.cuda_capable = self.bin.endswith('_cuda') and device_ok
        self.work = work
        self.seconds = 0.0

    def __call__(self, src, dst, load, save, convert_file, flags, device='cpu'):
        cmd = [self.bin, '--load_platform', load, '--save_platform', save, '--config_file', MODEL_YAML,
               '--convert_file', convert_file, '--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors',
               '--max_workers', '4', '--hf_max_shard_size', '1GB', '--device', device, '-q'] + flags
        shutil.rmtree(dst, ignore_errors=True)
        t0 = time.time()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        self.seconds += time.time() - t0
        if r.returncode != 0:
            raise RuntimeError('converter failed (%d): %s\n%s%s' % (r.returncode, ' '.join(cmd), r.stdout, r.stderr))
        return r.stdout + r.stderr


MANIFEST = 'ckbridge-manifest.json'  # records the run's arguments (--device differs): not compared


def same_tree(a, b):
    """(identical, files compared, first difference) for every file under a and b but the manifest."""
    fa = sorted(os.path.relpath(os.path.join(p, f), a) for p, _, fs in os.walk(a) for f in fs if f != MANIFEST)
    fb = sorted(os.path.relpath(os.path.join(p, f), b) for p, _, fs in os.walk(b) for f in fs if f != MANIFEST)
    if fa != fb:
        return False, len(fa), 'file lists differ: %s' % sorted(set(fa) ^ set(fb))[:4]
    for f in fa:
        if not filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False):
            return False, len(fa), 'differs: %s' % f
    return True, len(fa), ''


LAYOUTS = {
    # name: (convert yaml, flags, tp, ep, etp)
    'tp1_grouped': (CONVERT_LF, ['--moe-grouped-gemm'], 1, 1, 1),
    'tp2_ep2_grouped': (CONVERT_LF, ['--tensor_model_parallel_size', '2', '--expert_parallel_size', '2',
                                     '--expert_tensor_parallel_size', '1', '--moe-grouped-gemm'], 2, 2, 1),
    'local_tp1': (CONVERT_LOCAL, [], 1, 1, 1),
    'local_tp2': (CONVERT_LOCAL, ['--tensor_model_parallel_size', '2'], 2, 1, 2),
    'local_ep2': (CONVERT_LOCAL, ['--expert_parallel_size', '2'], 1, 2, 1),
    'local_tp2_ep2': (CONVERT_LOCAL, ['--tensor_model_parallel_size', '2', '--expert_parallel_size', '2',
                                      '--expert_tensor_parallel_size', '1'], 2, 2, 1),
    # torch_dist: layout-free; Megatron-Core loads it with dist_checkpointing.load at any TP / EP
    'local_torch_dist': (CONVERT_LOCAL, ['--ckpt_format', 'torch_dist'], 1, 1, 1),
}


def round_trips(conv, work, kind, layouts):
    src = os.path.join(work, 'hf_' + kind)
    for name in layouts:
        yaml_, flags, *_ = LAYOUTS[name]
        mdir = os.path.join(work, 'mcore_%s_%s' % (kind, name))
        hdir = os.path.join(work, 'hf_%s_%s_back' % (kind, name))
        conv(src, mdir, 'huggingface', 'mcore', yaml_, flags)
        back_flags = [x for i, x in enumerate(flags) if x != '--ckpt_format' and (i == 0 or flags[i - 1] != '--ckpt_format')]
        conv(os.path.join(mdir, 'release'), hdir, 'mcore', 'huggingface', yaml_, back_flags)
        nfiles = sum(len(fs) for _, _, fs in os.walk(os.path.join(mdir, 'release')))
        ok = filecmp.cmp(os.path.join(src, 'model.safetensors'), os.path.join(hdir, 'model.safetensors'),
                         shallow=False)
        extra = sorted(set(os.listdir(hdir)) - {'model.safetensors', 'config.json', MANIFEST})
        record('%s HF -> MCore %s (%d rank files) -> HF: model.safetensors bytes' % (kind.upper(), name, nfiles),
               'identical (%d bytes)' % os.path.getsize(os.path.join(hdir, 'model.safetensors')) if ok and not extra
               else 'DIFFERENT' + (' extra files %s' % extra if extra else ''), 'byte-equal', ok and not extra)


# ---------------------------------------------------------------------------------------------
# 3. torch.load of the MCore files, reassembled into HF tensors


def te_stub_import():
    sys.path.insert(0, os.path.join(ROOT, 'tests', 'python', 'te_stub'))
    os.environ.setdefault('TE_STUB_VERSION', '2.9')
    from transformer_engine.pytorch.tensor import float8_blockwise_tensor as fbt
    return fbt.Float8BlockwiseQTensor


class McoreCkpt:
    def __init__(self, ckpt, tp, ep, etp, grouped, local):
        self.qt = te_stub_import()
        self.tp, self.ep, self.etp, self.grouped, self.local = tp, ep, etp, grouped, local
        self.files = {}
        rel = os.path.join(ckpt, 'release')
        for name in sorted(os.listdir(rel)):
            m = re.fullmatch(r'mp_rank_(\d\d)(?:_(\d\d\d))?', name)
            if not m:
                raise RuntimeError('unexpected entry %s in %s' % (name, rel))
            obj = torch.load(os.path.join(rel, name, 'model_optim_rng.pt'), map_location='cpu', weights_only=False)
            self.files[(int(m.group(1)), int(m.group(2) or 0))] = obj['model']
        self.used = {k: set() for k in self.files}
        self.n_fp8 = 0

    def get(self, rank, key):
        sd = self.files[rank]
        if key not in sd:
            raise KeyError('%s not in rank file %s' % (key, rank))
        self.used[rank].add(key)
        v = sd[key]
        if isinstance(v, self.qt):
            self.n_fp8 += 1
            m, n = v.shape
            s = v.scale[:-(-m // 128), :-(-n // 128)]
            return dequant_hf(v.data.view(torch.float8_e4m3fn), s), True
        return v.float(), False

    def gather(self, key, shape, mode, ep_rank=0, expert=False):
        """Full tensor from the TP (or expert-TP) shards; `mode` rows | cols | fc1 (per-rank
        [gate_r; up_r]); shards with the full shape are replicas and must agree. Rank files are
        named as Megatron's processes save them (mp_rank_TT_EEE of each process), so a non-expert
        shard r is in any file with TP index r, an expert shard in a file with its EP index."""
        if expert and self.etp == 1:
            groups = [[k for k in sorted(self.files) if k[1] == ep_rank]]
        elif expert:
            groups = [[(r, ep_rank)] for r in range(self.etp)]
        else:
            groups = [[k for k in sorted(self.files) if k[0] == r] for r in range(self.tp)]
        parts, fp8 = [], False
        for g in groups:
            if not g:
                raise RuntimeError('%s: no rank file for this shard' % key)
            got = [self.get(k, key) for k in g]
            for other in got[1:]:  # the same shard in several files (replicated across EP or TP)
                if not torch.equal(other[0], got[0][0]):
                    raise RuntimeError('%s: copies differ between rank files %s' % (key, g))
            parts.append(got[0][0])
            fp8 = got[0][1]
        t = len(parts)
        if shape is not None and mode != 'fc1' and all(tuple(p.shape) == tuple(shape) for p in parts):
            for p in parts[1:]:
                if not torch.equal(p, parts[0]):
                    raise RuntimeError('%s: replicas differ between rank files' % key)
            return parts[0], fp8
        if mode == 'rows':
            return torch.cat(parts, 0), fp8
        if mode == 'cols':
            return torch.cat(parts, 1), fp8
        if mode == 'fc1':
            parts = parts[:t]
            h = [p.shape[0] // 2 for p in parts]
            return torch.cat([p[:k] for p, k in zip(parts, h)] + [p[k:] for p, k in zip(parts, h)], 0), fp8
        raise ValueError(mode)

    def hf_tensor(self, name, shape, d):
        """The HF tensor `name` rebuilt from the MCore files (dequantized to f32)."""
        L, E, V = d['num_layers'], d['num_experts'], d['vocab_size']
        if name == 'model.embed_tokens.weight' or re.fullmatch(r'model\.layers\.%d\.embed_tokens\.weight' % L, name):
            w, f = self.gather('embedding.word_embeddings.weight', None, 'rows')
            return w[:V], f
        if name == 'lm_head.weight' or re.fullmatch(r'model\.layers\.%d\.shared_head\.head\.weight' % L, name):
            w, f = self.gather('output_layer.weight', None, 'rows')
            return w[:V], f
        if name == 'model.norm.weight':
            return self.gather('decoder.final_layernorm.weight', shape, 'rows')
        m = re.fullmatch(r'model\.layers\.(\d+)\.(.*)', name)
        layer, rest = int(m.group(1)), m.group(2)
        if layer < L:
            pre = 'decoder.layers.%d.' % layer
        else:
            mtp = {'enorm.weight': ('enorm.weight', 'rows'), 'hnorm.weight': ('hnorm.weight', 'rows'),
                   'eh_proj.weight': ('eh_proj.weight', 'rows'),
                   'shared_head.norm.weight': ('final_layernorm.weight', 'rows')}
            if rest in mtp:
                return self.gather('mtp.layers.0.' + mtp[rest][0], shape, mtp[rest][1])
            pre = 'mtp.layers.0.transformer_layer.'
        ln = ('self_attention.q_layernorm.weight', 'self_attention.kv_layernorm.weight') if self.local else \
             ('self_attention.linear_q_up_proj.layer_norm_weight', 'self_attention.linear_kv_up_proj.layer_norm_weight')
        simple = {
            'input_layernorm.weight': ('input_layernorm.weight', 'rows'),
            'self_attn.q_a_proj.weight': ('self_attention.linear_q_down_proj.weight', 'rows'),
            'self_attn.q_a_layernorm.weight': (ln[0], 'rows'),
            'self_attn.q_b_proj.weight': ('self_attention.linear_q_up_proj.weight', 'rows'),
            'self_attn.kv_a_proj_with_mqa.weight': ('self_attention.linear_kv_down_proj.weight', 'rows'),
            'self_attn.kv_a_layernorm.weight': (ln[1], 'rows'),
            'self_attn.kv_b_proj.weight': ('self_attention.linear_kv_up_proj.weight', 'rows'),
            'self_attn.o_proj.weight': ('self_attention.linear_proj.weight', 'cols'),
            'post_attention_layernorm.weight': ('pre_mlp_layernorm.weight', 'rows'),
            'mlp.down_proj.weight': ('mlp.linear_fc2.weight', 'cols'),
            'mlp.gate.weight': ('mlp.router.weight', 'rows'),
            'mlp.gate.e_score_correction_bias': ('mlp.router.expert_bias', 'rows'),
            'mlp.shared_experts.down_proj.weight': ('mlp.shared_experts.linear_fc2.weight', 'cols'),
        }
        if rest in simple:
            return self.gather(pre + simple[rest][0], shape, simple[rest][1])
        fc1 = {'mlp.gate_proj.weight': ('mlp.linear_fc1.weight', 0), 'mlp.up_proj.weight': ('mlp.linear_fc1.weight', 1),
               'mlp.shared_experts.gate_proj.weight': ('mlp.shared_experts.linear_fc1.weight', 0),
               'mlp.shared_experts.up_proj.weight': ('mlp.shared_experts.linear_fc1.weight', 1)}
        if rest in fc1:
            w, f = self.gather(pre + fc1[rest][0], None, 'fc1')
            half = w.shape[0] // 2
            return (w[:half] if fc1[rest][1] == 0 else w[half:]), f
        m = re.fullmatch(r'mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight', rest)
        if m:
            g, per = int(m.group(1)), E // self.ep
            e, j = g // per, g % per
            which = 'linear_fc2' if m.group(2) == 'down_proj' else 'linear_fc1'
            key = pre + ('mlp.experts.%s.weight%d' % (which, j) if self.grouped
                         else 'mlp.experts.local_experts.%d.%s.weight' % (j, which))
            if which == 'linear_fc2':
                return self.gather(key, shape, 'cols', ep_rank=e, expert=True)
            w, f = self.gather(key, None, 'fc1', ep_rank=e, expert=True)
            half = w.shape[0] // 2
            return (w[:half] if m.group(2) == 'gate_proj' else w[half:]), f
        raise KeyError('no MCore mapping for HF tensor %s' % name)

    def unused(self):
        """Tensor keys of the rank files this check never read (besides _extra_state)."""
        out = []
        for r, sd in self.files.items():
            for k, v in sd.items():
                if k.endswith('_extra_state') or k in self.used[r]:
                    continue
                out.append('%s:%s' % (r, k))
        return out


def check_torch_load(work, kind, name, d, tf_weights, hf_fp8):
    yaml_, flags, tp, ep, etp = LAYOUTS[name]
    ck = McoreCkpt(os.path.join(work, 'mcore_%s_%s' % (kind, name)), tp, ep, etp, '--moe-grouped-gemm' in flags,
                   yaml_ == CONVERT_LOCAL)
    n = exact_input = 0
    worst_rel, worst_name, bound_ok, exact_tf = 0.0, '', True, True
    for hf_name, ref in sorted(tf_weights.items()):
        got, fp8 = ck.hf_tensor(hf_name, tuple(ref.shape), d)
        if tuple(got.shape) != tuple(ref.shape):
            raise RuntimeError('%s: shape %s from MCore vs %s' % (hf_name, tuple(got.shape), tuple(ref.shape)))
        n += 1
        if kind == 'fp8':
            # the FP8 input, dequantized by hand, is what ckbridge must have moved bit for bit
            src = dequant_hf(hf_fp8[hf_name], hf_fp8[hf_name + '_scale_inv']) if is_fp8_name(hf_name) \
                else hf_fp8[hf_name].float()
            exact_input += int(torch.equal(got, src))
            if is_fp8_name(hf_name):
                # transformers' weight vs its FP8 block quantization: e4m3 keeps 3 mantissa bits
                # (relative error <= 2^-4) down to the subnormal step 2^-9 x scale.
                s = hf_fp8[hf_name + '_scale_inv']
                step = s.repeat_interleave(128, 0)[:ref.shape[0]].repeat_interleave(128, 1)[:, :ref.shape[1]]
                err = (got - ref).abs()
                bound_ok &= bool((err <= ref.abs() * 2 ** -4 + step * 2 ** -9).all())
                rel = float((err.max() / ref.abs().max()).item())
                if rel > worst_rel:
                    worst_rel, worst_name = rel, hf_name
            else:
                exact_tf &= torch.equal(got, ref)
        else:
            exact_tf &= torch.equal(got, ref)
            exact_input += int(torch.equal(got, ref))
    unused = ck.unused()
    label = '%s MCore %s via torch.load (%d rank files, %d TE FP8 tensors)' % (kind.upper(), name, len(ck.files),
                                                                                ck.n_fp8)
    record(label + ': HF tensors rebuilt == input', '%d/%d exact' % (exact_input, n), 'all exact',
           exact_input == n and not unused)
    if unused:
        record(label + ': keys never mapped', ', '.join(unused[:4]), 'none', False)
    if kind == 'fp8':
        record(label + ': dequantized vs transformers weights', 'max rel err %.3g (%s); non-FP8 %s' % (
            worst_rel, worst_name.replace('model.layers.', 'L'), 'exact' if exact_tf else 'DIFFER'),
            'within e4m3 rounding; rest exact', bound_ok and exact_tf)
    else:
        record(label + ': vs transformers weights', 'exact' if exact_tf else 'DIFFER', 'exact', exact_tf)


# ---------------------------------------------------------------------------------------------
# 4. logits


def hf_logits(model, mtp, ids, dev):
    """Main logits from transformers; MTP logits by DeepSeek's recipe on transformers modules:
    h = final hidden (after model.norm); x = eh_proj([enorm(emb(ids shifted left, 0 filled)) ;
    hnorm(h)]); y = MTP decoder layer (positions 0..s-1, causal); logits = lm_head(norm(y))."""
    model = model.to(dev).eval()
    mtp = mtp.to(dev).eval()
    ids = ids.to(dev)
    b, s = ids.shape
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        main = out.logits.float()
        h = out.hidden_states[-1]
        nxt = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], 1)
        x = mtp.eh_proj(torch.cat([mtp.enorm(model.model.embed_tokens(nxt)), mtp.hnorm(h)], -1))
        pos = torch.arange(s, device=dev).unsqueeze(0).expand(b, s)
        pe = model.model.rotary_emb(x, pos)
        mask = torch.full((s, s), torch.finfo(x.dtype).min, device=dev).triu(1)[None, None].expand(b, 1, s, s)
        y = mtp.layer(x, attention_mask=mask, position_ids=pos, position_embeddings=pe)
        y = y[0] if isinstance(y, tuple) else y
        mtp_logits = model.lm_head(mtp.shared_head_norm(y)).float()
    return main.cpu(), mtp_logits.cpu()


def check_hf_reload(work, cfg_model, ids, ref_main, dev):
    """transformers loads ckbridge's HF output (its own config.json) and gives identical logits."""
    from transformers import DeepseekV3ForCausalLM
    path = os.path.join(work, 'hf_bf16_local_tp2_back')
    m = DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation='eager').to(dev).eval()
    with torch.no_grad():
        got = m(ids.to(dev)).logits.float().cpu()
    diff = float((got - ref_main).abs().max())
    record('transformers from_pretrained(ckbridge HF output, its config.json): logits vs original', 'max abs %.3g' % diff,
           '== 0', diff == 0.0)


def run_megatron(work, name, d, ids, ref_main, ref_mtp, ngpu, megatron_ok):
    yaml_, flags, tp, ep, etp = LAYOUTS[name]
    world = max(tp, ep * etp)  # processes: TP group and expert (EP x ETP) group span all of them
    label = 'Megatron-Core GPTModel (local spec) %s [TP%d EP%d ETP%d, %d GPU]' % (name, tp, ep, etp, world)
    if not megatron_ok:
        record(label, 'megatron.core not importable', '<= %g' % LOGIT_TOL, None)
        return
    if ngpu < world and not (ngpu == 0 and MCORE_ON_CPU and ep == 1):  # alltoall (EP) makes CUDA streams
        record(label, 'needs %d GPUs, %d visible' % (world, ngpu), '<= %g' % LOGIT_TOL, None)
        return
    if ngpu == 0:
        label = label.replace('GPU]', 'CPU process(es), gloo: dry run]')
    out = os.path.join(work, 'mcore_out_%s.pt' % name)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(world),
           os.path.join(HERE, 'mcore_forward.py'), '--ckpt', os.path.join(work, 'mcore_bf16_' + name), '--tp', str(tp),
           '--ep', str(ep), '--etp', str(etp), '--dims', os.path.join(work, 'dims.json'), '--inputs',
           os.path.join(work, 'ids.pt'), '--out', out]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out):
        tail = (r.stdout + r.stderr)[-3000:]
        print(tail)
        record(label, 'torchrun failed (rc %d)' % r.returncode, '<= %g' % LOGIT_TOL, False)
        return
    res = torch.load(out, weights_only=False)
    V = d['vocab_size']
    main = res['main'][..., :V]
    mtp = res['mtp'][..., :V]
    dm = float((main - ref_main).abs().max())
    dt = float((mtp[:, :-1] - ref_mtp[:, :-1]).abs().max())  # the last position has no next token
    pad_ok = res['vp'] >= V
    missing = sorted({k for rk in res['ranks'] for k in rk['missing']})
    unexpected = sorted({k for rk in res['ranks'] for k in rk['unexpected']})
    record(label + ': main logits', 'max abs %.3g (|ref| max %.3g)' % (dm, float(ref_main.abs().max())),
           '<= %g' % LOGIT_TOL, dm <= LOGIT_TOL and pad_ok)
    record(label + ': MTP logits', 'max abs %.3g (|ref| max %.3g)' % (dt, float(ref_mtp.abs().max())),
           '<= %g' % LOGIT_TOL, dt <= LOGIT_TOL)
    record(label + ': missing / unexpected keys', '%d / %d (%s)' % (len(missing), len(unexpected), ', '.join(
        '%s: %d keys' % (rk['file'], rk['loaded']) for rk in res['ranks'])), '0 / 0',
        not missing and not unexpected)
    if missing or unexpected:
        print('    missing:', missing[:8], '\n    unexpected:', unexpected[:8])


# ---------------------------------------------------------------------------------------------
# 5. CUDA vs CPU quantization


def check_device(conv, work):
    cases = [
        ('BF16 HF -> MCore TP1 --convert_to_fp8 (quantize)', os.path.join(work, 'hf_bf16'), 'huggingface', 'mcore',
         CONVERT_LF, ['--convert_to_fp8', '--moe-grouped-gemm']),
        ('FP8 HF -> MCore TP4 EP2 (re-quantize off-block cuts)', os.path.join(work, 'hf_fp8'), 'huggingface', 'mcore',
         CONVERT_LF, ['--tensor_model_parallel_size', '4', '--expert_parallel_size', '2', '--moe-grouped-gemm']),
        ('BF16 MCore local TP2 -> HF --convert_to_fp8 (quantize)', os.path.join(work, 'mcore_bf16_local_tp2', 'release'),
         'mcore', 'huggingface', CONVERT_LOCAL, ['--tensor_model_parallel_size', '2', '--convert_to_fp8']),
        ('BF16 HF -> MCore TP2 --convert_to_fp8 --quant_method pt', os.path.join(work, 'hf_bf16'), 'huggingface',
         'mcore', CONVERT_LF, ['--tensor_model_parallel_size', '2', '--convert_to_fp8', '--quant_method', 'pt']),
    ]
    for i, (label, src, load, save, yaml_, flags) in enumerate(cases):
        label = '--device cuda vs cpu: ' + label
        if not conv.cuda_capable:
            record(label, 'no CUDA converter / GPU', 'byte-equal', None)
            continue
        a, b = os.path.join(work, 'dev%d_cpu' % i), os.path.join(work, 'dev%d_cuda' % i)
        conv(src, a, load, save, yaml_, flags, device='cpu')
        log = conv(src, b, load, save, yaml_, flags, device='cuda')
        m = re.search(r'(\d+) quantized, (\d+) re-quantized', log)
        ok, nf, why = same_tree(a, b)
        record(label, ('identical, %d files; %s tensors quantized, %s re-quantized on the GPU' % (
            nf, m.group(1), m.group(2)) if m else 'identical, %d files' % nf) if ok else why, 'byte-equal', ok)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--bin', required=True, help='directory with ckbridge_convert_cuda or ckbridge_convert')
    ap.add_argument('--work', required=True, help='scratch directory (replaced)')
    ap.add_argument('--seed', type=int, default=1234)
    ap.add_argument('--allow-not-run', action='store_true', help='NOT RUN rows do not fail the run')
    ap.add_argument('--mcore-cpu', action='store_true', help='no GPU: run the Megatron checks on the CPU (dry run)')
    a = ap.parse_args()
    global MCORE_ON_CPU
    MCORE_ON_CPU = a.mcore_cpu
    os.chdir(ROOT)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    ngpu = torch.cuda.device_count()
    try:
        import megatron.core  # noqa: F401
        megatron_ok = True
        mver = getattr(megatron.core, '__version__', '?')
    except Exception as e:  # noqa: BLE001
        megatron_ok, mver = False, 'unavailable (%s)' % e
    import transformers
    transformers.logging.set_verbosity_error()  # the MTP keys are UNEXPECTED to transformers by design
    print('torch %s, transformers %s, megatron-core %s, %d GPU(s)%s' % (
        torch.__version__, transformers.__version__, mver, ngpu,
        (': ' + torch.cuda.get_device_name(0)) if ngpu else ''))

    d = read_dims(MODEL_YAML)
    json.dump(d, open(os.path.join(a.work, 'dims.json'), 'w'))
    print('== 1. tiny DeepseekV3ForCausalLM + MTP layer, HF BF16 and hand-written HF FP8')
    cfg, model, mtp, sd16, sd8 = build_hf(a.work, d, a.seed)
    conv = Converter(a.bin, a.work, dev == 'cuda')
    print('converter: %s' % os.path.relpath(conv.bin, ROOT))

    print('== 2. HF -> MCore -> HF byte equality')
    round_trips(conv, a.work, 'fp8', ['tp1_grouped', 'tp2_ep2_grouped'])
    round_trips(conv, a.work, 'bf16', ['tp1_grouped', 'tp2_ep2_grouped', 'local_tp1', 'local_tp2', 'local_ep2',
                                       'local_tp2_ep2', 'local_torch_dist'])

    print('== 3. torch.load of the MCore files vs transformers weights')
    from transformers import DeepseekV3ForCausalLM
    tf = DeepseekV3ForCausalLM.from_pretrained(os.path.join(a.work, 'hf_bf16'), dtype=torch.float32,
                                               attn_implementation='eager')
    tf_sd = on_disk({k: v for k, v in tf.state_dict().items()})
    mtp_sd = mtp.hf_tensors('model.layers.%d.' % d['num_layers'])
    L = d['num_layers']
    mtp_sd['model.layers.%d.embed_tokens.weight' % L] = tf_sd['model.embed_tokens.weight']
    mtp_sd['model.layers.%d.shared_head.head.weight' % L] = tf_sd['lm_head.weight']
    tf_weights = {**tf_sd, **mtp_sd}
    missing_in_tf = sorted(set(sd16) - set(tf_weights))
    record('transformers loads HF BF16 (+ hand-made MTP tensors): names vs file', '%d tensors, %d unmatched' % (
        len(tf_weights), len(missing_in_tf) + len(set(tf_weights) - set(sd16))), '0 unmatched',
        not missing_in_tf and set(tf_weights) == set(sd16))
    same_vals = all(torch.equal(tf_weights[k].float(), sd16[k].float()) for k in sd16 if k in tf_weights)
    record('transformers weights == HF BF16 file values', 'exact' if same_vals else 'DIFFER', 'exact', same_vals)
    for kind, name in (('fp8', 'tp1_grouped'), ('fp8', 'tp2_ep2_grouped'), ('bf16', 'tp1_grouped'),
                       ('bf16', 'local_tp2_ep2')):
        check_torch_load(a.work, kind, name, d, tf_weights, sd8)

    print('== 4. Megatron-Core logits vs transformers (fp32)')
    gen = torch.Generator().manual_seed(a.seed + 1)
    ids = torch.randint(0, d['vocab_size'], (2, 24), generator=gen)
    torch.save(ids, os.path.join(a.work, 'ids.pt'))
    ref_main, ref_mtp = hf_logits(tf, mtp, ids, dev)
    check_hf_reload(a.work, cfg, ids, ref_main, dev)
    for name in ('local_tp1', 'local_tp2', 'local_ep2', 'local_tp2_ep2', 'local_torch_dist'):
        run_megatron(a.work, name, d, ids, ref_main, ref_mtp, ngpu, megatron_ok)

    print('== 5. GPU quantization path')
    check_device(conv, a.work)

    w = max(len(r[0]) for r in ROWS)
    wm = max(len(r[1]) for r in ROWS)
    print('\n%-*s | %-*s | %-16s | %s' % (w, 'check', wm, 'measured', 'bar', 'result'))
    print('-' * (w + wm + 34))
    for r in ROWS:
        print('%-*s | %-*s | %-16s | %s' % (w, r[0], wm, r[1], r[2], r[3]))
    npass = sum(r[3] == 'PASS' for r in ROWS)
    nfail = sum(r[3] == 'FAIL' for r in ROWS)
    nnot = sum(r[3] == 'NOT RUN' for r in ROWS)
    print('converter wall time %.1f s over all conversions' % conv.seconds)
    print('%d passed, %d failed, %d skipped' % (npass, nfail, nnot))
    return 1 if nfail or (nnot and not a.allow_not_run) else 0


if __name__ == '__main__':
    sys.exit(main())
