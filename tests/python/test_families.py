"""Family matrix of the converter: for one LLM family (argument; every family without one) and every
layout that applies to it, against expectations computed without any of the converter's code.

    python tests/python/test_families.py [family]      (families: tests/python/ckb_families.py)

Per family:
  1. tests/python/ckb_families.py writes the tiny HF checkpoint (numpy + safetensors, random values,
     the architecture's config.json) from configs/<group>/<family>_tiny.yaml;
  2. HF -> MCore with `--model <family>` and the family's LoongForge convert YAML (unchanged), per
     layout (TP / PP / VPP; EP / ETP, grouped and sequential experts for MoE; FP8 sources where the
     family ships FP8 weights): the rank-file set, every file's keys, args, and every tensor byte for
     byte against ckb_families.expected_mcore (numpy over the HF tensors, LoongForge's rules);
  3. MCore -> HF: every tensor byte-identical to the source, no tensor missing or extra, and the
     config.json keys the architecture needs equal to the source's (docs/families.md);
  4. MCore -> MCore (resharding to another layout), checked against that layout's expectation.
A family the converter does not know yet is reported as skipped (exit 77: ctest "Not Run"), naming
the reason, never as a pass. The last line is "N passed, M failed".
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, 'te_stub'))
os.environ.setdefault('TE_STUB_VERSION', '2.9')  # the converter's default --te_version

import numpy as np  # noqa: E402

import ckb_families as fam  # noqa: E402
import ckb_harness as h  # noqa: E402
import ckb_numpy as cn  # noqa: E402

SKIP = 77
MANIFEST = 'ckbridge-manifest.json'
L = fam.Layout

DENSE = [L('tp1_pp1'), L('tp2_pp2', tp=2, pp=2), L('tp1_pp2_vpp2', pp=2, vpp=2)]
MOE = [L('tp1_pp1_ep1'), L('tp2_pp2_ep2_etp1_grouped', tp=2, pp=2, ep=2, etp=1, grouped=True),
       L('tp1_pp2_ep4_seq', pp=2, ep=4), L('tp2_ep2_etp2_grouped', tp=2, ep=2, etp=2, grouped=True),
       L('tp1_pp2_vpp2_ep2_grouped', pp=2, vpp=2, ep=2, grouped=True)]
EXTRA = {  # FP8 sources (families that ship block-FP8 weights) and YAML variants
    'llama3': [L('fp8_tp2_pp2', tp=2, pp=2, src='fp8')],
    'qwen3': [L('fp8_tp2_pp2', tp=2, pp=2, src='fp8'), L('fp8_tp1_pp1', src='fp8')],
    'qwen3_moe': [L('fp8_tp2_ep2_etp1_grouped', tp=2, ep=2, etp=1, grouped=True, src='fp8'),
                  L('fp8_tp2_pp2_ep2', tp=2, pp=2, ep=2, src='fp8')],
    'deepseek_v3': [L('fp8_tp2_pp2_ep2_etp1_grouped', tp=2, pp=2, ep=2, etp=1, grouped=True, src='fp8')],
    'kimi_k2': [L('fp8_training_yaml_tp2_ep2_etp1_grouped', tp=2, ep=2, etp=1, grouped=True,
                  convert='fp8_training')],
}
RESHARD = {False: ('tp2_pp2', 'tp1_pp1'), True: ('tp2_pp2_ep2_etp1_grouped', 'tp1_pp1_ep1')}

# config.json keys the written HF config must carry with the source's values, per feature
CFG_KEYS = ['architectures', 'model_type', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size',
            'tie_word_embeddings', 'rms_norm_eps', 'rope_theta']
CFG_GQA = ['intermediate_size', 'num_key_value_heads']
CFG_HEAD_DIM = ['head_dim']
CFG_QWEN3_MOE = ['moe_intermediate_size', 'num_experts', 'num_experts_per_tok', 'decoder_sparse_step',
                 'norm_topk_prob', 'mlp_only_layers']
CFG_MLA = ['intermediate_size', 'q_lora_rank', 'kv_lora_rank', 'qk_nope_head_dim', 'qk_rope_head_dim', 'v_head_dim',
           'moe_intermediate_size', 'n_routed_experts', 'n_shared_experts', 'num_experts_per_tok',
           'first_k_dense_replace', 'topk_method', 'n_group', 'topk_group', 'routed_scaling_factor', 'scoring_func',
           'norm_topk_prob', 'rope_scaling']


def config_keys(f):
    k = list(CFG_KEYS)
    if f.attn == 'gqa':
        k += CFG_GQA
    if f.name.startswith('qwen3') or f.name.startswith('llama3'):
        k += CFG_HEAD_DIM
    if f.name == 'llama3_1':
        k += ['rope_scaling']
    if f.dtype == 'F16':  # Llama 2: config.json keeps float16 (the tensors' dtype is checked anyway)
        k += ['torch_dtype']
    if f.name in ('qwen2', 'qwen2_5', 'mimo'):
        k += ['attention_bias'] if f.name == 'mimo' else []
    if f.name == 'qwen3_moe':
        k += CFG_QWEN3_MOE
    if f.attn == 'mla':
        k += CFG_MLA
    if f.mtp:
        k += ['num_nextn_predict_layers']
    return k


def layouts(f):
    return (MOE if f.moe else DENSE) + EXTRA.get(f.name, [])


# ----------------------------------------------------------------------------------- running
class Unsupported(Exception):
    pass


def run(args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True)


def convert(f, lay, src, dst, frm, to):
    conv = f.extra_converts[lay.convert] if lay.convert else f.convert
    args = [h.CONVERT, '--model', f.name, '--load_platform', frm, '--save_platform', to, '--config_file', f.tiny,
            '--convert_file', conv, '--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors',
            '--max_workers', 2, '--hf_max_shard_size', '4MB', '-q'] + lay.converter_flags(f.moe)
    r = run(args)
    if r.returncode != 0:
        msg = r.stderr + r.stdout
        raise AssertionError('%s failed (%d):\n%s' % (' '.join(map(str, args)), r.returncode, msg[-3000:]))
    return r


# ----------------------------------------------------------------------------------- checks
def check_args(f, lay, d, a):
    tp = lay.tp
    want = {'num_layers': f.N, 'hidden_size': f.H, 'num_attention_heads': f.heads,
            'tensor_model_parallel_size': tp, 'pipeline_model_parallel_size': lay.pp, 'vocab_size': f.V,
            'padded_vocab_size': cn.padded_vocab(f.V, tp, f.divisible_by)}
    if f.attn == 'gqa':
        want.update({'num_query_groups': f.G, 'kv_channels': f.HD})
    if f.moe:
        want.update({'num_experts': f.E, 'expert_model_parallel_size': lay.ep,
                     'expert_tensor_parallel_size': lay.etp or tp, 'moe_grouped_gemm': lay.grouped})
    if f.mtp:
        want['mtp_num_layers'] = f.MTP
    for k, v in want.items():
        assert a.get(k, '<missing>') == v, '%s: args.%s = %r, expected %r' % (d, k, a.get(k, '<missing>'), v)


def check_entry(where, k, s, v, counts):
    if s.kind == 'none':
        assert v is None, '%s %s: expected None, got %r' % (where, k, type(v))
        return
    if s.kind == 'plain':
        assert isinstance(v, torch.Tensor), '%s %s: expected a tensor, got %r' % (where, k, type(v))
        dt, arr = cn.t2np(v)
        assert dt == s.dtype and arr.shape == s.arr.shape, '%s %s: %s %s, expected %s %s' % (
            where, k, dt, arr.shape, s.dtype, s.arr.shape)
        assert arr.tobytes() == np.ascontiguousarray(s.arr).tobytes(), '%s %s: values differ' % (where, k)
        counts['plain'] = counts.get('plain', 0) + 1
        return
    assert not isinstance(v, torch.Tensor) and hasattr(v, 'quantizer'), '%s %s: expected a TE FP8 tensor, got %r' % (
        where, k, type(v))
    _, data = cn.t2np(v.data)
    _, scale = cn.t2np(v.scale)
    assert data.shape == s.arr.shape, (where, k, data.shape, s.arr.shape)
    want_scale = cn.pad4(s.scale)
    assert scale.shape == want_scale.shape, '%s %s: scale shape %s, expected %s' % (where, k, scale.shape,
                                                                                     want_scale.shape)
    assert scale.tobytes() == want_scale.tobytes(), '%s %s: scale_inv differs (%s)' % (where, k, s.how)
    assert data.tobytes() == np.ascontiguousarray(s.arr).tobytes(), '%s %s: FP8 data differs (%s)' % (where, k, s.how)
    counts['fp8 ' + s.how] = counts.get('fp8 ' + s.how, 0) + 1


def check_mcore(f, hf, lay, out):
    exp = fam.expected_mcore(f, hf, lay)
    rel = os.path.join(out, 'release')
    have = sorted(os.listdir(rel))
    assert have == sorted(exp), 'rank directories %s, expected %s' % (have, sorted(exp))
    counts = {}
    for d, models in exp.items():
        obj = torch.load(os.path.join(rel, d, 'model_optim_rng.pt'), map_location='cpu')
        assert set(obj) >= {'args', 'checkpoint_version', 'iteration'}, sorted(obj)
        got = sorted(k for k in obj if k.startswith('model'))
        assert got == sorted(models), '%s: state dicts %s, expected %s' % (d, got, sorted(models))
        check_args(f, lay, d, vars(obj['args']))
        for mk, e in models.items():
            m = obj[mk]
            assert set(m) == set(e), '%s %s: keys differ: missing %s; extra %s' % (
                d, mk, sorted(set(e) - set(m))[:8], sorted(set(m) - set(e))[:8])
            for k, s in e.items():
                check_entry('%s %s' % (d, mk), k, s, m[k], counts)
    print('    %d files; %s' % (len(exp), ', '.join('%d %s' % (n, k) for k, n in sorted(counts.items()))))


def check_back(f, lay, src, back):
    a, b = cn.read_hf(src), cn.read_hf(back)
    assert set(a) == set(b), 'HF tensors: missing %s; extra %s' % (sorted(set(a) - set(b))[:8],
                                                                    sorted(set(b) - set(a))[:8])
    if lay.convert == 'fp8_training':
        # Kimi's FP8-training YAML: q_a_proj / kv_a_proj_with_mqa are FP8 in MCore (quantized from the
        # BF16 source) and BF16 in HF (`dtype: bf16`): back as bf16(dequant(quant(source))), RNE
        for k in [k for k in a if k.endswith(('self_attn.q_a_proj.weight', 'self_attn.kv_a_proj_with_mqa.weight'))]:
            q, sc = cn.quant_te(cn.bf16_to_f32(a[k][1]), True)
            a[k] = ('BF16', cn.f32_to_bf16(cn.dequant(q, sc)))
    for k in a:
        assert a[k][0] == b[k][0] and a[k][1].shape == b[k][1].shape, (k, a[k][0], b[k][0], a[k][1].shape,
                                                                       b[k][1].shape)
        assert a[k][1].tobytes() == b[k][1].tobytes(), '%s: values differ' % k
    with open(os.path.join(src, 'config.json')) as fh:
        ca = json.load(fh)
    cfg = os.path.join(back, 'config.json')
    assert os.path.exists(cfg), 'no config.json written'
    with open(cfg) as fh:
        cb = json.load(fh)
    bad = ['%s: %r, expected %r' % (k, cb.get(k, '<missing>'), ca.get(k)) for k in config_keys(f)
           if cb.get(k, '<missing>') != ca.get(k)]
    assert not bad, 'config.json: ' + '; '.join(bad)
    print('    %d tensors byte-identical; config.json: %d keys as the source' % (len(a), len(config_keys(f))))


# ----------------------------------------------------------------------------------- driver
def supported(f, work):
    """Does the converter know --model f? Asked before anything is generated: the converter checks
    --model while parsing its flags, before it reads any path."""
    r = run([h.CONVERT, '--model', f.name, '--load_platform', 'huggingface', '--save_platform', 'mcore',
             '--config_file', f.tiny, '--convert_file', f.convert, '--load_ckpt_path', os.path.join(work, 'none'),
             '--save_ckpt_path', os.path.join(work, 'none_out'), '--dry-run'])
    msg = r.stderr + r.stdout
    lines = [ln.strip() for ln in msg.splitlines() if '--model' in ln and f.name in ln]
    if r.returncode != 0 and lines and not f.supported_today:
        raise Unsupported(lines[0])


def check_yamls_unchanged(f):
    import hashlib
    n = 0
    for rel in fam.convert_yamls(f):
        want = fam.LOONGFORGE_SHA256.get(rel)
        if want is None:
            continue  # ckbridge's own edited copy (llama3, deepseek_v3)
        with open(os.path.join(fam.CONFIGS, rel), 'rb') as fh:
            got = hashlib.sha256(fh.read()).hexdigest()
        assert got == want, 'configs/%s is no longer byte-identical to LoongForge\'s (sha256 %s)' % (rel, got)
        n += 1
    print('    %d convert YAML(s) byte-identical to LoongForge\'s' % n)


torch = None  # imported once a family runs (a Not Run family needs no torch start-up)


def run_family(f, work):
    global torch
    h.check('%s: convert YAML(s) are LoongForge\'s, unchanged' % f.name, check_yamls_unchanged, f)
    supported(f, work)
    import torch
    srcs = {}

    def gen():
        for dt in sorted({lay.src for lay in layouts(f)}):
            srcs[dt] = os.path.join(work, 'hf_' + dt)
            fam.generate(f, srcs[dt], dt)
    h.check('%s: generate the tiny HF checkpoint(s)' % f.name, gen)
    if h.FAILED:
        return
    hf = {k: cn.read_hf(d) for k, d in srcs.items()}
    done = set()
    for lay in layouts(f):
        out, back = os.path.join(work, lay.name, 'mcore'), os.path.join(work, lay.name, 'hf')

        def fwd(lay=lay, out=out):
            convert(f, lay, srcs[lay.src], out, 'huggingface', 'mcore')
            check_mcore(f, hf[lay.src], lay, out)
            done.add(lay.name)
        h.check('%s %s: HF -> MCore, every tensor against numpy' % (f.name, lay.name), fwd)
        if lay.name not in done:
            continue

        def rev(lay=lay, out=out, back=back):
            convert(f, lay, os.path.join(out, 'release'), back, 'mcore', 'huggingface')
            check_back(f, lay, srcs[lay.src], back)
        h.check('%s %s: MCore -> HF byte-identical tensors, config.json' % (f.name, lay.name), rev)

    def refusals():
        # a checkpoint that does not match the family: refused before anything is written, naming
        # the first offending tensor (issue 11)
        for what, kw, key in (
                ('missing', {'drop': fam.distinguishing_tensor(f)}, fam.distinguishing_tensor(f)),
                ('extra', {'extra': (f.prefix + 'model.layers.1.self_attn.unknown_proj.weight', [8, f.H])},
                 f.prefix + 'model.layers.1.self_attn.unknown_proj.weight')):
            bad, out = os.path.join(work, 'bad_' + what), os.path.join(work, 'bad_' + what + '_out')
            fam.generate(f, bad, **kw)
            lay = layouts(f)[1]
            try:
                convert(f, lay, bad, out, 'huggingface', 'mcore')
            except AssertionError as e:
                msg = str(e)
            else:
                raise AssertionError('a source with a %s tensor %s was converted' % (what, key))
            assert key in msg, 'the refusal does not name %s:\n%s' % (key, msg[-1500:])
            assert not os.path.exists(out) or not os.listdir(out), 'output written although refused: %s' % (
                os.listdir(out))
        print('    missing %s and extra tensor refused, named, nothing written' % fam.distinguishing_tensor(f))
    h.check('%s: a missing / an extra tensor refused before writing, naming it' % f.name, refusals)

    a_name, b_name = RESHARD[f.moe]
    if a_name in done:
        lay_b = [x for x in layouts(f) if x.name == b_name][0]

        def reshard():
            out = os.path.join(work, 'reshard')
            conv = [h.CONVERT, '--model', f.name, '--load_platform', 'mcore', '--save_platform', 'mcore',
                    '--config_file', f.tiny, '--convert_file', f.convert,
                    '--load_ckpt_path', os.path.join(work, a_name, 'mcore', 'release'), '--save_ckpt_path', out,
                    '-q', '--max_workers', 2] + lay_b.converter_flags(f.moe)
            r = run(conv)
            assert r.returncode == 0, '%s failed:\n%s%s' % (' '.join(map(str, conv)), r.stdout, r.stderr[-3000:])
            check_mcore(f, hf['bf16'], lay_b, out)
        h.check('%s: MCore %s -> MCore %s, against numpy' % (f.name, a_name, b_name), reshard)


def main():
    names = sys.argv[1:] or sorted(fam.FAMILIES)
    unknown = [n for n in names if n not in fam.FAMILIES]
    if unknown:
        print('unknown family %s (known: %s)' % (unknown, ', '.join(sorted(fam.FAMILIES))))
        print('0 passed, 1 failed')
        return 1
    skipped = []

    def body(work):
        for n in names:
            f = fam.FAMILIES[n]
            try:
                run_family(f, os.path.join(work, n))
            except Unsupported as e:
                skipped.append((n, str(e)))
                print('SKIP %s: the converter does not support --model %s yet (%s)' % (n, n, e), flush=True)
    rc = h.main(body, [h.CONVERT], 'ckb_families_')
    if skipped:  # reported as not run (ctest: skipped), never as a pass
        print('NOT RUN: %s' % '; '.join('%s (%s)' % s for s in skipped))
        if rc == 0:
            return SKIP
    return rc


if __name__ == '__main__':
    sys.exit(main())
