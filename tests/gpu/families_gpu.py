"""Every family against the real libraries (issue 11's GPU checks; torch_dist's logits, issue 17).

    python tests/gpu/families_gpu.py --bin DIR --work DIR [--families a,b] [--mcore a,b] [--allow-not-run]

For each family of tests/python/ckb_families.py (tiny random checkpoint with the real tensor names;
its config.json is the architecture's):
 1. ckbridge HF -> MCore (legacy, TP1) -> HF; transformers loads the source and ckbridge's HF output
    (ckbridge's own config.json) in fp32 and the logits must be bit-identical.
 2. For the --mcore families (default qwen3_moe, qwen2_5, deepseek_v2_lite, qwen3): Megatron-Core's
    GPTModel (local spec, tests/gpu/mcore_family_forward.py) loads ckbridge's legacy output and its
    `torch_dist` output (HF -> torch_dist directly); logits within 1e-5 of transformers (fp32, the
    unpadded vocabulary), 0 missing / 0 unexpected keys.
MiMo and Kimi K2, which transformers cannot load by itself, are built as Qwen2 / DeepSeek V3 from
their config.json, with no missing key (ADAPTED below).
A family the converter or transformers does not know is NOT RUN (with the reason); NOT RUN fails
the run unless --allow-not-run. Prints a table; exits non-zero on any FAIL.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'python'))
import ckb_families as fam  # noqa: E402

LOGIT_TOL = 1e-5
ROWS = []


def record(check, measured, bar, ok):
    status = 'NOT RUN' if ok is None else ('PASS' if ok else 'FAIL')
    ROWS.append((check, measured, bar, status))
    print('  [%s] %s: %s' % (status, check, measured), flush=True)


def converter(bin_dir):
    for n in ('ckbridge_convert_cuda', 'ckbridge_convert', 'deepseek_v3_convert'):
        p = os.path.join(bin_dir, n)
        if os.path.exists(p):
            return p
    raise SystemExit('no converter in %s' % bin_dir)


def convert(exe, f, src, dst, frm, to, extra=()):
    args = [exe, '--model', f.name, '--load_platform', frm, '--save_platform', to, '--config_file', f.tiny,
            '--convert_file', f.convert, '--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors', '-q']
    r = subprocess.run(args + list(extra), capture_output=True, text=True)
    return r.returncode, (r.stderr + r.stdout)[-2000:]


# Families whose HF checkpoints transformers cannot load by itself: MiMo (its model code is remote:
# Qwen2 plus model.mtp_layers, which the logits do not use) and Kimi K2 (DeepSeek V3's architecture
# under model_type kimi_k2, unknown to transformers; LoongForge's YAMLs put its HF names under
# `language_model.`). transformers loads them as the architecture they are (Qwen2ForCausalLM,
# DeepseekV3ForCausalLM), configured from their config.json, Kimi's prefix taken off by key_mapping;
# nothing may be missing, and the only unexpected tensors are MiMo's MTP layers.
ADAPTED = {'mimo': ('Qwen2', None, 'model.mtp_layers.'), 'kimi_k2': ('DeepseekV3', r'^language_model\.', None)}


def adapted_model(path, name):
    import transformers
    arch, prefix, aside = ADAPTED[name]
    with open(os.path.join(path, 'config.json')) as fh:
        cfg = {k: v for k, v in json.load(fh).items() if k not in ('model_type', 'architectures', 'auto_map')}
    config = getattr(transformers, arch + 'Config')(**cfg)
    model, info = getattr(transformers, arch + 'ForCausalLM').from_pretrained(
        path, config=config, dtype=torch.float32, key_mapping={prefix: ''} if prefix else None,
        output_loading_info=True)
    unexpected = sorted(info['unexpected_keys'])
    assert not info['missing_keys'], 'missing %s' % sorted(info['missing_keys'])[:4]
    assert all(aside and k.startswith(aside) for k in unexpected), 'unexpected %s' % unexpected[:4]
    assert not aside or unexpected, 'no %s tensors in %s' % (aside, path)
    assert not info.get('mismatched_keys'), 'mismatched %s' % info['mismatched_keys'][:4]
    return model


def hf_logits(path, ids, dev, name=None):
    from transformers import AutoModelForCausalLM
    if name in ADAPTED:
        m = adapted_model(path, name).to(dev).eval()
    else:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(dev).eval()
    with torch.no_grad():
        return m(ids.to(dev)).logits.float().cpu()


def mcore_run(args, f, ckpt, src, ids_path, out, ref, label):
    if not args.have_mcore:
        record('%s Megatron-Core %s' % (f.name, label), 'megatron.core not importable', '', None)
        return
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1', '--master_port=29517',
           os.path.join(HERE, 'mcore_family_forward.py'), '--ckpt', ckpt, '--hf-config',
           os.path.join(src, 'config.json'), '--inputs', ids_path, '--out', out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        out_err = r.stdout + r.stderr
        errs = [ln for ln in out_err.splitlines() if 'Error' in ln and 'ChildFailedError' not in ln]
        record('%s Megatron-Core %s' % (f.name, label), 'forward failed: ' + (errs[-1] if errs else out_err[-1500:]), '', False)
        return
    res = torch.load(out, weights_only=False)
    rk = res['ranks'][0]
    got = res['main'][..., :ref.shape[-1]]
    diff = (got - ref).abs().max().item()
    keys_ok = not rk['missing'] and not rk['unexpected']
    record('%s Megatron-Core %s keys' % (f.name, label),
           '%d missing, %d unexpected (%d loaded; %d TE-fused norm names mapped, %d None _extra_state dropped)%s' % (
               len(rk['missing']), len(rk['unexpected']), rk['loaded'], rk['adapted'], rk['dropped_none_extra_state'],
               (' missing %s unexpected %s' % (rk['missing'][:4], rk['unexpected'][:4])) if not keys_ok else ''),
           '0 / 0', keys_ok)
    record('%s Megatron-Core %s logits vs transformers' % (f.name, label), 'max |diff| %.3g (max |logit| %.3g)' % (
        diff, ref.abs().max().item()), '<= %g' % LOGIT_TOL, diff <= LOGIT_TOL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--bin', required=True)
    ap.add_argument('--work', required=True)
    ap.add_argument('--families', default=','.join(fam.FAMILIES))
    ap.add_argument('--mcore', default='qwen3_moe,qwen2_5,deepseek_v2_lite,qwen3')
    ap.add_argument('--allow-not-run', action='store_true')
    args = ap.parse_args()
    exe = converter(args.bin)
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        import megatron.core  # noqa: F401
        args.have_mcore = True
    except Exception:
        args.have_mcore = False
    mcore = set(filter(None, args.mcore.split(',')))
    os.makedirs(args.work, exist_ok=True)
    torch.manual_seed(0)
    for name in args.families.split(','):
        f = fam.FAMILIES[name]
        w = os.path.join(args.work, name)
        shutil.rmtree(w, ignore_errors=True)
        src, mc, td, back = (os.path.join(w, d) for d in ('hf', 'mcore', 'torch_dist', 'hf_back'))
        fam.generate(f, src, 'bf16')
        rc, msg = convert(exe, f, src, mc, 'huggingface', 'mcore')
        if rc != 0:
            unknown = 'unknown model' in msg
            record('%s HF -> MCore' % name, msg.strip().splitlines()[-1] if msg.strip() else 'rc %d' % rc, '',
                   None if unknown else False)
            continue
        rc, msg = convert(exe, f, mc, back, 'mcore', 'huggingface')
        if rc != 0:
            record('%s MCore -> HF' % name, msg.strip().splitlines()[-1], '', False)
            continue
        ids = torch.randint(0, f.V, (2, 16), generator=torch.Generator().manual_seed(1))
        ids_path = os.path.join(w, 'ids.pt')
        torch.save(ids, ids_path)
        try:
            ref = hf_logits(src, ids, dev, name)
        except Exception as e:  # an architecture transformers does not ship and ADAPTED does not cover
            record('%s transformers load' % name, '%s: %s' % (type(e).__name__, str(e).splitlines()[0][:200]), '', None)
            continue
        got = hf_logits(back, ids, dev, name)
        same = got.shape == ref.shape and torch.equal(got, ref) and bool(torch.isfinite(ref).all())
        how = ' (as %sForCausalLM)' % ADAPTED[name][0] if name in ADAPTED else ''
        record('%s transformers logits%s, ckbridge HF output vs source' % (name, how),
               'bit-identical' if same else 'max |diff| %.3g' % (got - ref).abs().max().item(), 'exact', same)
        if name in mcore:
            mcore_run(args, f, mc, src, ids_path, os.path.join(w, 'mcore_logits.pt'), ref, 'legacy TP1')
            rc, msg = convert(exe, f, src, td, 'huggingface', 'mcore', ['--ckpt_format', 'torch_dist'])
            if rc != 0:
                record('%s HF -> torch_dist' % name, msg.strip().splitlines()[-1], '', False)
            else:
                mcore_run(args, f, td, src, ids_path, os.path.join(w, 'td_logits.pt'), ref, 'torch_dist')
    print('\n| check | measured | bar | result |\n|---|---|---|---|')
    for r in ROWS:
        print('| %s | %s | %s | %s |' % r)
    fails = sum(r[3] == 'FAIL' for r in ROWS)
    not_run = sum(r[3] == 'NOT RUN' for r in ROWS)
    print('\n%d checks: %d PASS, %d FAIL, %d NOT RUN' % (len(ROWS), len(ROWS) - fails - not_run, fails, not_run))
    return 1 if fails or (not_run and not args.allow_not_run) else 0


if __name__ == '__main__':
    sys.exit(main())
