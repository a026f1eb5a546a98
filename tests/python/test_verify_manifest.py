"""ckbridge_verify and ckbridge-manifest.json, checked against independent computations.

  1. For every layout of the round-trip matrix (FP8 and BF16 sources), HF -> MCore by the converter,
     then `ckbridge_verify HF MCORE --json`: every HF tensor (counted from the safetensors headers
     here) compared and identical, nothing missing or extra, exit 0.
  2. FP8 MCore vs the BF16 checkpoint of the same weights: every FP8 weight "within tolerance",
     and the reported max abs error equals numpy's (FP8 codes x 128x128 scales vs BF16, in float32);
     with a --tolerance between two weights' numpy errors, exactly the weights above it differ
     (exit 1); --threads 1 / 3 give the default run's report.
  3. One byte flipped in one rank file: exit 1, and the tensor and rank file named are the ones
     torch.load (an independent reader) finds changed; `--manifest` names the file and tensor too.
  4. The manifest of an HF and an MCore output: every file's SHA-256 and size equal hashlib's over
     the file and its XXH3-128 Python's xxhash's; every safetensors tensor's hash equals hashlib over
     its byte range (header parsed here); every rank-file tensor's hash equals hashlib over
     torch.load's tensor bytes. `--manifest` checks by XXH3-128, `--sha256` by SHA-256 (a manifest
     with one digest edited fails only the check that reads it); a manifest without XXH3-128 by SHA-256.
  5. `--manifest` catches a truncated file, two swapped rank files, a missing file and an unlisted one,
     and a manifest whose tensor list was edited over unchanged files (a file whose digest matches
     has its tensors' hashes checked by construction, its tensor list against its header).
Exits non-zero on failure; the last line is "N passed, M failed".
"""
import glob
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import xxhash  # Debian's python3-xxhash: an independent XXH3-128

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'te_stub'))
os.environ.setdefault('TE_STUB_VERSION', '2.9')
import torch  # noqa: E402

from ckb_harness import CFG, CONV, CONVERT, FAILED, MAKE_TINY, PASSED, VERIFY, check  # noqa: E402,F401
import ckb_harness  # noqa: E402
MODEL = ['--config_file', CFG, '--convert_file', CONV]


def run(args, rc=0):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != rc:
        raise AssertionError('exit %d (wanted %d): %s\n%s%s' % (p.returncode, rc, ' '.join(args), p.stdout, p.stderr))
    return p


def convert(src, dst, flags, frm='huggingface', to='mcore'):
    run([CONVERT, '--load_platform', frm, '--save_platform', to] + MODEL +
        ['--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors', '--hf_max_shard_size', '4MB', '-q',
         '--max_workers', '2'] + flags)


def verify_json(a, b, rc=0):
    p = run([VERIFY] + MODEL + ['-q', '--json', '-', a, b], rc)
    return json.loads(p.stdout)


def st_header(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        h = json.loads(f.read(n))
    return 8 + n, {k: v for k, v in h.items() if k != '__metadata__'}


def hf_tensors(d):
    out = {}
    for p in sorted(glob.glob(os.path.join(d, '*.safetensors'))):
        base, h = st_header(p)
        with open(p, 'rb') as f:
            buf = f.read()
        for k, v in h.items():
            b, e = v['data_offsets']
            out[k] = (v['dtype'], v['shape'], buf[base + b:base + e], os.path.basename(p))
    return out


def as_np(dtype, shape, raw):
    dt = {'BF16': ml_dtypes.bfloat16, 'F32': np.float32, 'F8_E4M3': ml_dtypes.float8_e4m3fn}[dtype]
    return np.frombuffer(raw, dtype=dt).reshape(shape)


LAYOUTS = [
    ('tp2_pp2_ep2_grouped', ['--tensor_model_parallel_size', '2', '--pipeline_model_parallel_size', '2',
                             '--expert_parallel_size', '2', '--expert_tensor_parallel_size', '1', '--moe-grouped-gemm']),
    ('tp1_ep4_sequential', ['--expert_parallel_size', '4']),
    ('pp2_custom_1_3', ['--tensor_model_parallel_size', '2', '--pipeline_model_parallel_size', '2',
                        '--custom_pipeline_layers', '1,3', '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    ('vpp2', ['--pipeline_model_parallel_size', '2', '--num-virtual-stages-per-pipeline-rank', '2',
              '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    ('vpp2_dualpipev', ['--pipeline_model_parallel_size', '2', '--num-virtual-stages-per-pipeline-rank', '2',
                        '--vpp-scheduler', 'dualpipev', '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    ('layout_mtp_stage', ['--pipeline_model_parallel_size', '2', '--pipeline_model_parallel_layout', 'Ett|t|t|mL',
                          '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    ('first_last_dualpipev', ['--pipeline_model_parallel_size', '2', '--num-virtual-stages-per-pipeline-rank', '2',
                              '--vpp-scheduler', 'dualpipev', '--decoder-first-pipeline-num-layers', '2',
                              '--decoder-last-pipeline-num-layers', '2', '--expert_parallel_size', '2']),
    ('tp4_ep2_etp2', ['--tensor_model_parallel_size', '4', '--expert_parallel_size', '2',
                      '--expert_tensor_parallel_size', '2', '--moe-grouped-gemm']),
]


def run_all(work):
    hf = {}
    for dt in ('fp8', 'bf16'):
        hf[dt] = os.path.join(work, 'hf_' + dt)
        run([MAKE_TINY] + MODEL + ['--out', hf[dt], '--dtype', dt])
    n_hf = {dt: len(hf_tensors(hf[dt])) for dt in hf}

    def all_identical(dt, name, flags):
        deq = name == 'tp4_ep2_etp2' and dt == 'fp8'  # TP 4 cuts FP8 blocks: write BF16, compared dequantized
        out = os.path.join(work, name + '_' + dt)
        convert(hf[dt], out, flags + (['--dequantize_fp8'] if deq else []))
        r = verify_json(hf[dt], out)
        s = r['summary']
        if deq:  # E4M3 x power-of-two scale is exact in BF16: dequantized values equal, scales used as inputs
            n_scales = sum(1 for v in hf_tensors(hf[dt]).values() if v[0] == 'F32' and v[1] and len(v[1]) == 2)
            assert r['ok'] and s['scales_used_to_dequantize'] == n_scales > 0 and s['differing'] == 0, s
            assert s['identical'] + s['within_tolerance'] == n_hf[dt] - n_scales == s['tensors'] - n_scales, s
        else:
            assert r['ok'] and s['identical'] == n_hf[dt] == s['tensors'], s
        assert s['differing'] == s['missing_in_b'] == s['extra_in_b'] == 0, s
    for name, flags in LAYOUTS:
        for dt in ('fp8', 'bf16'):
            check('verify HF %s vs MCore %s: every tensor identical' % (dt, name), all_identical, dt, name, flags)

    def cross_dtype():
        r = verify_json(os.path.join(work, 'tp2_pp2_ep2_grouped_fp8'), hf['bf16'])
        a, b = hf_tensors(hf['fp8']), hf_tensors(hf['bf16'])
        n = 0
        for t in r['tensors']:
            k = t['key']
            if t['status'] == 'scale (used to dequantize)':
                continue
            if a[k][0] != 'F8_E4M3':
                assert t['status'] == 'identical', t
                continue
            q = as_np(*a[k][:3]).astype(np.float32)
            sk = k[:-len('weight')] + 'weight_scale_inv'
            sc = as_np(*a[sk][:3])
            full = np.repeat(np.repeat(sc, 128, 0), 128, 1)[:q.shape[0], :q.shape[1]]
            deq = q * full
            ref = as_np(*b[k][:3]).astype(np.float32)
            err = float(np.max(np.abs(deq - ref)))
            assert t['status'] == 'within tolerance' and abs(t['max_abs'] - err) <= 1e-7 * max(1, err), (k, t, err)
            assert abs(t['max_rel'] - err / float(np.max(np.abs(ref)))) <= 1e-6, (k, t)
            n += 1
        assert n > 100 and r['ok'], (n, r['summary'])
    check('verify FP8 MCore vs BF16 HF: FP8 weights within tolerance, max abs error equal to numpy\'s', cross_dtype)

    def tolerance_and_threads():
        # --tolerance between two of the FP8 weights' relative errors (numpy, as above): the weights above
        # it are 'differs' and the run fails, the others stay 'within tolerance'; --threads 1 and 3
        # give the default run's report
        mc_fp8 = os.path.join(work, 'tp2_pp2_ep2_grouped_fp8')
        a, b = hf_tensors(hf['fp8']), hf_tensors(hf['bf16'])
        rel = {}
        for k, (dt, shape, raw, _) in a.items():
            if dt != 'F8_E4M3':
                continue
            sc = as_np(*a[k[:-len('weight')] + 'weight_scale_inv'][:3])
            q = as_np(dt, shape, raw).astype(np.float32)
            deq = q * np.repeat(np.repeat(sc, 128, 0), 128, 1)[:q.shape[0], :q.shape[1]]
            ref = as_np(*b[k][:3]).astype(np.float32)
            rel[k] = float(np.max(np.abs(deq - ref))) / float(np.max(np.abs(ref)))
        vals = sorted(set(rel.values()))
        i = len(vals) // 2
        while vals[i + 1] - vals[i] <= 1e-4 * vals[i]:  # a clear gap: float32 vs double rounding cannot cross it
            i += 1
        tol = (vals[i] + vals[i + 1]) / 2
        p = run([VERIFY] + MODEL + ['-q', '--json', '-', '--tolerance', repr(tol), mc_fp8, hf['bf16']], rc=1)
        r = json.loads(p.stdout)
        status = {t['key']: t['status'] for t in r['tensors']}
        want = {k: ('differs' if v > tol else 'within tolerance') for k, v in rel.items()}
        got = {k: status[k] for k in want}
        assert got == want, sorted((k, got[k], want[k], rel[k]) for k in want if got[k] != want[k])[:5]
        n_diff = sum(1 for v in want.values() if v == 'differs')
        assert 0 < n_diff < len(want) and not r['ok'] and r['summary']['differing'] == n_diff, (n_diff, r['summary'])
        print('    --tolerance %.6g: %d of %d FP8 weights differ, as numpy says' % (tol, n_diff, len(want)))
        base = verify_json(mc_fp8, hf['bf16'])
        for th in ('1', '3'):
            p = run([VERIFY] + MODEL + ['-q', '--json', '-', '--threads', th, mc_fp8, hf['bf16']])
            assert json.loads(p.stdout) == base, '--threads %s: the report differs from the default run' % th
    check('verify --tolerance: the FP8 weights whose numpy error exceeds it differ (exit 1); --threads 1 / 3 '
          'give the same report', tolerance_and_threads)

    mc = os.path.join(work, 'tp2_pp2_ep2_grouped_fp8')

    def flipped_byte(pick):
        bad = os.path.join(work, 'flip%d' % pick)
        shutil.copytree(mc, bad)
        rank = os.path.join(bad, 'release', 'mp_rank_01_001_001', 'model_optim_rng.pt')
        import zipfile
        with zipfile.ZipFile(rank) as z:
            recs = sorted((i for i in z.infolist() if '/data/' in i.filename), key=lambda i: -i.file_size)
            rec = recs[pick]
        with open(rank, 'r+b') as f:  # the record's data begins after its local header
            f.seek(rec.header_offset)
            h = f.read(30)
            off = rec.header_offset + 30 + struct.unpack('<H', h[26:28])[0] + struct.unpack('<H', h[28:30])[0]
            f.seek(off + rec.file_size // 2)
            c = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([c[0] ^ 0x40]))
        orig = torch.load(os.path.join(mc, 'release', 'mp_rank_01_001_001', 'model_optim_rng.pt'))
        tamp = torch.load(rank)

        def tensors_of(v):
            if torch.is_tensor(v):
                return [v]
            return [x for x in vars(v).values() if torch.is_tensor(x)] if hasattr(v, '__dict__') else []

        def u8(x):
            return x.contiguous().view(-1).view(torch.uint8)
        changed = [k for k, v in orig['model'].items()
                   if any(not torch.equal(u8(x), u8(y)) for x, y in zip(tensors_of(v), tensors_of(tamp['model'][k])))]
        assert len(changed) == 1, changed
        where = 'mp_rank_01_001_001/model_optim_rng.pt: model/' + changed[0]
        r = verify_json(hf['fp8'], bad, rc=1)
        diff = [t for t in r['tensors'] if t['status'] == 'differs']
        # every HF tensor made from the damaged one (lm_head and its MTP copy) names it; one byte: one element
        assert diff and all(where in t.get('where_b', '') or where in t.get('note', '') for t in diff), (diff, where)
        assert all(t['differing'] == 1 for t in diff if 'where_b' in t), diff
        p = run([VERIFY, '--manifest', bad], rc=1)
        assert 'mp_rank_01_001_001/model_optim_rng.pt' in p.stdout and 'model/' + changed[0] in p.stdout, p.stdout
        print('    flipped a byte of %s: verify says %s' % (changed[0], diff[0].get('where_b') or diff[0]['note']))
    for pick in (0, 1, 4):  # the largest records (embedding copy / output layer) and an expert weight
        check('one flipped byte in a rank file (record %d): verify and --manifest name the tensor and rank file' % pick,
              flipped_byte, pick)

    def changed_hf_tensor():
        # One element of an HF expert weight changed (a valid file): verify against the intact MCore
        # output compares the MCore shards in place, finds the difference and locates it; the
        # expected element comes from numpy over the two HF files.
        d = os.path.join(work, 'hf_changed')
        shutil.copytree(hf['fp8'], d)
        t = hf_tensors(d)
        key = sorted(k for k, v in t.items() if 'mlp.experts.' in k and v[0] == 'F8_E4M3' and len(v[1]) == 2)[-1]
        dtype, shape, raw, fname = t[key]
        base, h = st_header(os.path.join(d, fname))
        off = base + h[key]['data_offsets'][0] + len(raw) // 2 + 3
        with open(os.path.join(d, fname), 'r+b') as f:
            f.seek(off)
            c = f.read(1)
            f.seek(off)
            f.write(bytes([c[0] ^ 0x01]))
        a, b = as_np(dtype, shape, raw).view(np.uint8), as_np(dtype, shape, hf_tensors(d)[key][2]).view(np.uint8)
        want = [int(i) for i in np.argwhere(a != b)[0]]
        r = verify_json(d, mc, rc=1)
        diff = [x for x in r['tensors'] if x['status'] == 'differs']
        assert [x['key'] for x in diff] == [key], diff
        assert diff[0]['differing'] == 1 and diff[0]['first'] == want, (diff[0], want)
        assert 'mp_rank_' in diff[0].get('where_b', ''), diff[0]
        assert sum(1 for x in r['tensors'] if x['status'] == 'identical') == n_hf['fp8'] - 1, r['summary']
    check('one element of an HF tensor changed: verify against the MCore output names it and its element',
          changed_hf_tensor)

    def manifest_hashes():
        hf_out = os.path.join(work, 'back_hf')
        convert(mc, hf_out, [], frm='mcore', to='huggingface')
        for root in (mc, hf_out):
            with open(os.path.join(root, 'ckbridge-manifest.json')) as f:
                m = json.load(f)
            assert m['tool'] == 'ckbridge' and m['arguments'][0].endswith('ckbridge_convert'), m['arguments'][:2]
            listed = {e['path']: e for e in m['files']}
            on_disk = sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns
                             if n != 'ckbridge-manifest.json')
            assert sorted(listed) == on_disk, (sorted(listed), on_disk)
            for rel, e in listed.items():
                with open(os.path.join(root, rel), 'rb') as f:
                    data = f.read()
                assert e['size'] == len(data) and e['sha256'] == hashlib.sha256(data).hexdigest(), rel
                assert e['xxh3_128'] == xxhash.xxh3_128_hexdigest(data), rel
                if rel.endswith('.safetensors'):
                    base, h = st_header(os.path.join(root, rel))
                    want = {k: hashlib.sha256(data[base + v['data_offsets'][0]:base + v['data_offsets'][1]]).hexdigest()
                            for k, v in h.items()}
                    assert {t['name']: t['sha256'] for t in e['tensors']} == want, rel
                elif rel.endswith('.pt'):
                    sd = torch.load(os.path.join(root, rel))
                    want = {}
                    for k, v in sd['model'].items():
                        if torch.is_tensor(v):
                            want['model/' + k] = hashlib.sha256(v.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
                        elif v is not None and hasattr(v, '__dict__'):
                            d = vars(v)
                            want['model/' + k + ':data'] = hashlib.sha256(d['data'].contiguous().numpy().tobytes()).hexdigest()
                            want['model/' + k + ':scale_inv'] = hashlib.sha256(d['scale'].contiguous().numpy().tobytes()).hexdigest()
                    assert {t['name']: t['sha256'] for t in e['tensors']} == want, (rel, len(want), len(e['tensors']))
        for root in (mc, hf_out):
            n = len(json.load(open(os.path.join(root, 'ckbridge-manifest.json')))['files'])
            p = run([VERIFY, '--manifest', root])
            assert '%d files listed, %d verified by XXH3-128, 0 problems' % (n, n) in p.stdout, p.stdout
            p = run([VERIFY, '--manifest', root, '--sha256'])
            assert '%d files listed, %d verified by SHA-256, 0 problems' % (n, n) in p.stdout, p.stdout
        # a manifest from before XXH3-128 was added (no xxh3_128 keys) is checked by SHA-256
        old = os.path.join(work, 'm_no_xxh3')
        shutil.copytree(mc, old)
        mp = os.path.join(old, 'ckbridge-manifest.json')
        m = json.load(open(mp))
        for e in m['files']:
            del e['xxh3_128']
        json.dump(m, open(mp, 'w'))
        p = run([VERIFY, '--manifest', old])
        assert 'verified by SHA-256, 0 problems' in p.stdout, p.stdout
    check('manifest: file SHA-256 / XXH3-128 and tensor SHA-256 equal hashlib / xxhash over the files / torch.load '
          'tensors; --manifest checks by XXH3-128, --sha256 by SHA-256, an older manifest by SHA-256', manifest_hashes)

    def manifest_digest_choice():
        # each check reads its own digest: a manifest with one file's XXH3-128 edited (its SHA-256
        # intact) fails the default check naming the file, and passes --sha256; the reverse likewise
        for key, bad_by, good_by in (('xxh3_128', [], ['--sha256']), ('sha256', ['--sha256'], [])):
            d = os.path.join(work, 'm_edit_' + key)
            shutil.copytree(mc, d)
            mp = os.path.join(d, 'ckbridge-manifest.json')
            m = json.load(open(mp))
            e = next(e for e in m['files'] if e['path'] == 'release/mp_rank_00_000_000/model_optim_rng.pt')
            e[key] = ('0' if e[key][0] != '0' else '1') + e[key][1:]
            json.dump(m, open(mp, 'w'))
            p = run([VERIFY, '--manifest', d] + bad_by, rc=1)
            name = 'XXH3-128' if key == 'xxh3_128' else 'SHA-256'
            assert 'mp_rank_00_000_000' in p.stdout and name + ' differs' in p.stdout, (key, p.stdout)
            run([VERIFY, '--manifest', d] + good_by)
    check('manifest: the default check compares XXH3-128, --sha256 compares SHA-256 (each caught when edited)',
          manifest_digest_choice)

    def manifest_damage():
        for what in ('truncated', 'swapped', 'missing', 'unlisted', 'tensor list'):
            d = os.path.join(work, 'm_' + what)
            shutil.copytree(mc, d)
            a = os.path.join(d, 'release', 'mp_rank_00_000_000', 'model_optim_rng.pt')
            b = os.path.join(d, 'release', 'mp_rank_01_000_001', 'model_optim_rng.pt')
            if what == 'truncated':
                os.truncate(a, os.path.getsize(a) - 1000)
                needles = ['mp_rank_00_000_000', 'truncated']
            elif what == 'swapped':
                os.rename(a, a + '.x')
                os.rename(b, a)
                os.rename(a + '.x', b)
                needles = ['mp_rank_00_000_000', 'mp_rank_01_000_001']
            elif what == 'missing':
                os.remove(b)
                needles = ['mp_rank_01_000_001', 'missing']
            elif what == 'unlisted':
                with open(os.path.join(d, 'release', 'notes.txt'), 'w') as f:
                    f.write('x')
                needles = ['release/notes.txt', 'not listed']
            else:  # the files untouched, the manifest's tensor list of one file edited (a tensor renamed)
                mp = os.path.join(d, 'ckbridge-manifest.json')
                with open(mp) as f:
                    m = json.load(f)
                e = next(e for e in m['files'] if e['path'] == 'release/mp_rank_00_000_000/model_optim_rng.pt')
                old_name = e['tensors'][0]['name']
                e['tensors'][0]['name'] = old_name + '_renamed'
                with open(mp, 'w') as f:
                    json.dump(m, f)
                needles = ['mp_rank_00_000_000', old_name + '_renamed', old_name + ' (not in the manifest)']
            for by in ([], ['--sha256']):
                p = run([VERIFY, '--manifest', d] + by, rc=1)
                for n in needles:
                    assert n in p.stdout, (what, by, n, p.stdout)
    check('manifest check catches a truncated, a swapped, a missing and an unlisted file, and a tensor list that is not the file\'s',
          manifest_damage)


def main():
    return ckb_harness.main(run_all, (CONVERT, VERIFY, MAKE_TINY), 'ckb_verify_')


if __name__ == '__main__':
    sys.exit(main())
