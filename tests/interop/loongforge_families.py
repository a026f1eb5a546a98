"""Manual cross-check (not in CI): runs LoongForge's own converter (tools/convert_checkpoint of
baidu-baige/LoongForge) HF -> MCore on each family's tiny checkpoint (tests/python/ckb_families.py)
in a few layouts and compares every tensor of its rank files with the numpy expectation of
ckb_families.expected_mcore (keys, dtype, shape, bytes). BF16 only (LoongForge's FP8 paths need
TransformerEngine and a GPU).

    python tests/interop/loongforge_families.py [--back] LOONGFORGE_SRC WORK [family[:layout] ...]

--back: also LoongForge MCore -> HF from its own output, every tensor compared with the source.

PYTHON must have torch, hydra-core, omegaconf, safetensors, psutil, PyYAML, numpy, ml_dtypes.
LoongForge's convert YAMLs are used unchanged except where the tiny model needs an edit, printed
per run: Llama 2 / 3.1 hard-code vocab_size (32000 / 128256) -> run once unchanged (shows its
padding of the 1000-token vocabulary) and once with vocab_size from the model (the tiny Llama 3
uses ckbridge's llama3 model YAML with LoongForge's llama3_convert.yaml, same edit); Llama 2: the
model YAML copy states num_query_groups (LoongForge crashes on its own `null`);
DeepSeek-V3: mtp_layer_id 61 -> num_layers and mtp_eh_proj dtype fp8 -> bf16 (as
loongforge_interop.sh). A LoongForge run is also checked for writing at least one tensor.
"""
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'python'))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import ckb_families as fam  # noqa: E402
import ckb_numpy as cn  # noqa: E402

L = fam.Layout
LAYOUTS = {
    'dense': [L('tp1_pp1'), L('tp2_pp2', tp=2, pp=2), L('tp1_pp2_vpp2', pp=2, vpp=2)],
    'moe': [L('tp2_pp2_ep2_etp1_grouped', tp=2, pp=2, ep=2, etp=1, grouped=True),
            L('tp1_pp2_ep4_seq', pp=2, ep=4), L('tp2_ep2_etp2_grouped', tp=2, ep=2, etp=2, grouped=True),
            L('tp1_pp2_vpp2_ep2_grouped', pp=2, vpp=2, ep=2, grouped=True)],
}


def lf_yaml_edits(f, text, vocab_fix):
    edits = []
    if vocab_fix and f.name in ('llama2', 'llama3_1', 'llama3'):
        text, n = re.subn(r'\n    vocab_size: (32000|128256)\n', '\n    vocab_size: ${module.vocab_size}\n', text)
        edits.append('vocab_size -> ${module.vocab_size} (%d)' % n)
    if f.name == 'deepseek_v3':
        text, n1 = re.subn(r'(\n    mtp_layer_id: )61\n', r'\g<1>%d\n' % f.N, text)
        text, n2 = re.subn(r'(\n    mtp_eh_proj:\n      name: eh_proj\n      dtype: )fp8\n', r'\g<1>bf16\n', text)
        edits.append('mtp_layer_id 61 -> %d (%d), mtp_eh_proj dtype fp8 -> bf16 (%d)' % (f.N, n1, n2))
    return text, edits


def compare(f, hf, layout, out):
    exp = fam.expected_mcore(f, hf, layout)
    rel = os.path.join(out, 'release')
    have = sorted(os.listdir(rel))
    msgs = []
    if have != sorted(exp):
        return ['rank dirs %s, expected %s' % (have, sorted(exp))]
    n = 0
    for d, models in exp.items():
        obj = torch.load(os.path.join(rel, d, 'model_optim_rng.pt'), map_location='cpu', weights_only=False)
        got_models = sorted(k for k in obj if k.startswith('model'))
        if got_models != sorted(models):
            msgs.append('%s: model keys %s, expected %s' % (d, got_models, sorted(models)))
            continue
        for mk, e in models.items():
            m = obj[mk]
            miss, extra = sorted(set(e) - set(m)), sorted(set(m) - set(e))
            if miss or extra:
                msgs.append('%s %s: missing %s extra %s' % (d, mk, miss[:6], extra[:6]))
            for k in sorted(set(e) & set(m)):
                s, v = e[k], m[k]
                if s.kind == 'none':
                    if v is not None:
                        msgs.append('%s %s: expected None' % (d, k))
                    continue
                if s.kind != 'plain':
                    msgs.append('%s %s: FP8 expectation (not compared here)' % (d, k))
                    continue
                dt, arr = cn.t2np(v)
                if dt != s.dtype or arr.shape != s.arr.shape:
                    msgs.append('%s %s: %s %s, expected %s %s' % (d, k, dt, arr.shape, s.dtype, s.arr.shape))
                elif arr.tobytes() != np.ascontiguousarray(s.arr).tobytes():
                    msgs.append('%s %s: values differ' % (d, k))
                else:
                    n += 1
    return msgs or ['OK: %d files, %d tensors identical to the numpy expectation' % (len(exp), n)]


def compare_back(src, got):
    miss, extra = sorted(set(src) - set(got)), sorted(set(got) - set(src))
    msgs = ['missing %s' % miss[:6]] if miss else []
    msgs += ['extra %s' % extra[:6]] if extra else []
    same = 0
    for k in sorted(set(src) & set(got)):
        (da, a), (db, b) = src[k], got[k]
        if da != db or a.shape != b.shape:
            msgs.append('%s: %s %s, source %s %s' % (k, db, b.shape, da, a.shape))
        elif a.tobytes() != b.tobytes():
            msgs.append('%s: values differ' % k)
        else:
            same += 1
    return msgs or ['OK: %d HF tensors identical to the source' % same]


BACK = False


def main():
    global BACK
    args = sys.argv[1:]
    if args and args[0] == '--back':  # also LoongForge MCore -> HF from its own output
        BACK = True
        args = args[1:]
    lf_src, work = os.path.abspath(args[0]), os.path.abspath(args[1])
    want = args[2:]
    os.makedirs(work, exist_ok=True)
    results = []
    for name, f in fam.FAMILIES.items():
        runs = [l for l in LAYOUTS['moe' if f.moe else 'dense']]
        sel = [w for w in want if w.split(':')[0] == name]
        if want and not sel:
            continue
        if any(':' in w for w in sel):
            runs = [l for l in runs if any(w == name + ':' + l.name for w in sel)]
        src = os.path.join(work, name, 'hf')
        if not os.path.exists(src):
            fam.generate(f, src)
        hf = cn.read_hf(src)
        variants = [False, True] if f.name in ('llama2', 'llama3_1', 'llama3') else [True]
        for vocab_fix in variants:
            root = os.path.join(work, name, 'lfroot' + ('_vocabfix' if vocab_fix else ''))
            gdir = os.path.join(root, 'configs', 'models', f.group)
            os.makedirs(os.path.join(gdir, 'ckpt_convert'), exist_ok=True)
            shutil.copy(f.tiny, gdir)
            if f.name == 'llama2':
                # LoongForge's own llama2 model YAMLs say num_query_groups: null (MHA); its
                # converter then fails (TypeError in HfAttnGateQkvConverter): state the groups
                p = os.path.join(gdir, os.path.basename(f.tiny))
                with open(p) as fh:
                    t = fh.read().replace('\nnum_query_groups: null\n', '\nnum_query_groups: %d\n' % f.heads)
                with open(p, 'w') as fh:
                    fh.write(t)
            lf_conv = os.path.join(lf_src, 'configs', 'models', 'deepseek3' if f.name == 'deepseek_v3' else f.group,
                                   'ckpt_convert', os.path.basename(f.convert))
            text, edits = lf_yaml_edits(f, open(lf_conv).read(), vocab_fix)
            conv = os.path.join(gdir, 'ckpt_convert', os.path.basename(f.convert))
            if f.name == 'deepseek_v3':  # LoongForge's group is deepseek3
                os.makedirs(os.path.join(root, 'configs', 'models', 'deepseek3', 'ckpt_convert'), exist_ok=True)
                shutil.copy(f.tiny, os.path.join(root, 'configs', 'models', 'deepseek3'))
                conv = os.path.join(root, 'configs', 'models', 'deepseek3', 'ckpt_convert',
                                    os.path.basename(f.convert))
            with open(conv, 'w') as fh:
                fh.write(text)
            cfg = os.path.join(os.path.dirname(os.path.dirname(conv)), os.path.basename(f.tiny))
            for lay in runs:
                out = os.path.join(work, name, lay.name + ('' if vocab_fix else '_lf_vocab'))
                shutil.rmtree(out, ignore_errors=True)
                model_py = os.path.join(lf_src, 'tools', 'convert_checkpoint', 'module_convertor', 'model.py')
                cmd = [sys.executable, model_py,
                       '--load_platform=huggingface', '--save_platform=mcore', '--config_file', cfg,
                       '--convert_file', conv, '--load_ckpt_path=' + src, '--save_ckpt_path=' + out,
                       '--safetensors', '--max_workers=2'] + [str(x) for x in lay.converter_flags(f.moe)]
                if f.divisible_by != 128:
                    cmd += ['--make_vocab_size_divisible_by', str(f.divisible_by)]
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=work,
                                   env=dict(os.environ, LOONGFORGE_PATH=root))
                tag = '%s %s%s' % (name, lay.name, '' if vocab_fix else ' (YAML unchanged)')
                if r.returncode != 0:
                    err = (r.stderr or r.stdout)[-600:]
                    results.append((tag, edits, ['LoongForge rc %d: %s' % (r.returncode, err)]))
                    continue
                results.append((tag, edits, compare(f, hf, lay, out)))
                print(tag, edits, results[-1][2][:4], flush=True)
                if BACK and vocab_fix:  # LoongForge MCore -> HF from its own output, against the source
                    back = out + '_back'
                    shutil.rmtree(back, ignore_errors=True)
                    cmd_b = [x.replace('--load_platform=huggingface', '--load_platform=mcore')
                             .replace('--save_platform=mcore', '--save_platform=huggingface')
                             .replace('--load_ckpt_path=' + src, '--load_ckpt_path=' + os.path.join(out, 'release'))
                             .replace('--save_ckpt_path=' + out, '--save_ckpt_path=' + back) for x in cmd]
                    r = subprocess.run(cmd_b, capture_output=True, text=True, cwd=work,
                                       env=dict(os.environ, LOONGFORGE_PATH=root))
                    if r.returncode != 0:
                        msgs = ['LoongForge MCore -> HF rc %d: %s' % (r.returncode, (r.stderr or r.stdout)[-600:])]
                    else:
                        msgs = compare_back(hf, cn.read_hf(back))
                    results.append((tag + ' back', edits, msgs))
                    print(tag + ' back', msgs[:4], flush=True)
    print('\n==== summary')
    bad = 0
    for tag, edits, msgs in results:
        ok = msgs[0].startswith('OK')
        bad += not ok
        print('%-4s %-45s %s %s' % ('PASS' if ok else 'DIFF', tag, msgs[0][:150],
                                    ('edits: ' + '; '.join(edits)) if edits else ''))
        for m in msgs[1:6]:
            print('       ', m[:200])
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
