"""HF <-> Megatron-Core torch_dist with ckbridge_convert --ckpt_format torch_dist, checked without
the converter's code:
  1. DeepSeek-V3 tiny (MLA, MoE, MTP; local-spec names): the data files are byte-identical (size +
     sha256) to the ones Megatron-Core 0.16.1 wrote when it saved the same model
     (tests/data/torch_dist/ds_tiny_megatron, see tests/tools/make_torch_dist_fixtures.py), metadata.json
     is identical and `.metadata` holds the same keys, chunks and storage ranges as Megatron-Core's;
  2. DeepSeek-V3 tiny and Llama 3 tiny: every tensor, read here with a stub unpickler for `.metadata`
     and torch.load for each stored item, equals the legacy (torch format, tp1) output of the same HF
     checkpoint (itself checked against numpy by test_convert_deepseek / test_convert_llama3), with
     sequential experts stacked; every linear has its `_extra_state` object [None];
  3. --moe-grouped-gemm gives the same torch_dist checkpoint (grouped experts have the sequential keys);
     legacy tp2 pp2 ep2 -> torch_dist gives the same bytes as Megatron-Core's save (1.);
     torch_dist -> HF: DeepSeek V3 and Llama 3 BF16 round trips byte-identical, and the checkpoint
     Megatron-Core saved (its .metadata, empty common state) converts to the HF source's bytes;
     legacy tp2 pp2 ep2 -> torch_dist -> legacy tp1 pp1 ep4 has the direct reshard's tensors;
  4. bad requests are refused before any output: parallel-layout flags, an FP8 source without
     --dequantize_fp8 (the message names the flag and an FP8 weight), --ckpt_format for HF output;
  5. resume and manifest: the output has a ckbridge-manifest.json that ckbridge_verify --manifest
     accepts (and that catches a changed data file); the same command over it exits 0 "already
     complete" touching nothing; a run killed (SIGKILL) at several points, with item-level progress
     records and without, then run again, ends with every file byte-identical to an uninterrupted
     run's (manifest included); other arguments over a partial output are refused.
The test Python's torch (1.13) has no torch.distributed.checkpoint: the DCP classes are stubbed.
"""
import hashlib
import io
import os
import pickle
import re
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckb_harness as H  # noqa: E402

DATA = os.path.join(H.SRC, 'tests', 'data', 'torch_dist')
DS_CFG = H.CFG
DS_CONV = os.path.join(H.SRC, 'configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert_local.yaml')
LL_CFG = os.path.join(H.SRC, 'configs', 'llama3', 'llama3_tiny.yaml')
LL_CONV = os.path.join(H.SRC, 'configs', 'llama3', 'ckpt_convert', 'llama3_convert.yaml')


class _Obj:
    """Stands in for any DCP dataclass or enum: keeps the BUILD state / call arguments."""

    def __init__(self, *args):
        self.__dict__['args'] = args

    def __setstate__(self, st):
        if isinstance(st, dict):
            self.__dict__.update(st)
        else:
            self.__dict__['state'] = st


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith('torch.distributed.checkpoint'):
            if name == '_MEM_FORMAT_ENCODING':
                return lambda v: ('mem_format', v)
            return type(name, (_Obj,), {})
        if module == 'torch' and name == 'Size':
            return tuple
        if module == 'torch':
            return 'torch.' + name  # dtypes (1.13 has no float8 dtypes)
        if module == 'torch.serialization' and name == '_get_layout':
            return lambda s: s
        raise pickle.UnpicklingError('unexpected global %s.%s' % (module, name))


def read_metadata(path):
    with open(path, 'rb') as f:
        return _Unpickler(f).load()


def summary(md):
    """{key: ('bytes',) | (dtype, size, strides, [chunk offsets/sizes])} and {(key, offset): (file, off, len)}."""
    sdm = {}
    for k, v in md.state_dict_metadata.items():
        if type(v).__name__ == 'BytesStorageMetadata':
            sdm[k] = ('bytes',)
        else:
            p = v.properties.state
            sdm[k] = (p[0], tuple(v.size), p[5] if len(p) > 5 else None,
                      [(tuple(c.offsets), tuple(c.sizes)) for c in v.chunks])
    st = {}
    for k, v in md.storage_data.items():
        off = getattr(k, 'offset', None)
        st[(k.fqn, None if off is None else tuple(off))] = (v.relative_path, v.offset, v.length)
    return sdm, st


def read_tensors(ckpt):
    """Every tensor of a torch_dist directory, assembled from its chunks; the bytes objects."""
    md = read_metadata(os.path.join(ckpt, '.metadata'))
    sdm, st = summary(md)
    blobs = {}

    def item(fqn, off):
        fn, o, n = st[(fqn, off)]
        if fn not in blobs:
            blobs[fn] = open(os.path.join(ckpt, fn), 'rb').read()
        return torch.load(io.BytesIO(blobs[fn][o:o + n]))

    out, objs = {}, {}
    for k, v in sdm.items():
        if v == ('bytes',):
            objs[k] = item(k, None)
            continue
        t = None
        for off, size in v[3]:
            c = item(k, off)
            assert tuple(c.shape) == size, (k, off, c.shape, size)
            if t is None:
                t = torch.empty(v[1], dtype=c.dtype)
            t[tuple(slice(o, o + s) for o, s in zip(off, size))] = c
        out[k] = t
    return out, objs, sdm


def convert(cfg, conv, src, dst, flags, model='deepseek_v3', expect_ok=True):
    cmd = [H.CONVERT, '--model', model, '--load_platform', 'huggingface', '--save_platform', 'mcore', '--config_file', cfg,
           '--convert_file', conv, '--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors', '-q'] + flags
    r = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        raise AssertionError('%s failed:\n%s%s' % (' '.join(cmd), r.stdout, r.stderr))
    if not expect_ok and r.returncode == 0:
        raise AssertionError('%s succeeded, expected a refusal' % ' '.join(cmd))
    return r.stdout + r.stderr


def expected_from_legacy(leg_dir, stack_layers=False):
    """The legacy tp1 model dict with sequential experts stacked the torch_dist way, and the decoder
    layers stacked too for a model whose layers are all alike (Megatron's non_homogeneous_layers
    false)."""
    sd = torch.load(os.path.join(leg_dir, 'release', 'mp_rank_00', 'model_optim_rng.pt'))['model']

    def stack(d, pattern, fmt):
        out, per = {}, {}
        for k, v in d.items():
            m = re.fullmatch(pattern, k)
            if m:
                per.setdefault(fmt % (m.group(1), m.group(3)), {})[int(m.group(2))] = v
            else:
                out[k] = v
        for k, parts in per.items():
            assert sorted(parts) == list(range(len(parts))), (k, sorted(parts))
            out[k] = torch.stack([parts[i] for i in sorted(parts)])
        return out
    out = stack({k: v for k, v in sd.items() if v is not None}, r'(.*)\.local_experts\.(\d+)\.(.*)', '%s.experts.%s')
    if stack_layers:
        out = stack(out, r'(decoder)\.layers\.(\d+)\.(.*)', '%s.layers.%s')
    return out


def extra_state_keys(got):
    """The `_extra_state` object keys Megatron-Core saves for the linears of `got` (torch_dist keys):
    shard_<offsets>_<sizes> over the prepended axes (stacked layers, then stacked experts)."""
    keys = set()
    for k, t in got.items():
        m = re.fullmatch(r'(.*\.(?:linear_\w+|eh_proj))\.weight', k)
        if not m:
            continue
        counts = []
        if re.match(r'decoder\.layers\.[^0-9]', k):
            counts.append(t.shape[len(counts)])
        if '.experts.experts.' in k:
            counts.append(t.shape[len(counts)])
        if not counts:
            keys.add(m.group(1) + '._extra_state/shard_0_1')
            continue
        idx = [[]]
        for n in counts:
            idx = [i + [j] for i in idx for j in range(n)]
        for i in idx:
            keys.add('%s._extra_state/shard_%s_%s' % (m.group(1), '.'.join(map(str, i)), '.'.join(map(str, counts))))
    return keys


def run_all(work):
    ds16 = os.path.join(work, 'ds_bf16')
    ll16 = os.path.join(work, 'll_bf16')
    ds8 = os.path.join(work, 'ds_fp8')

    def gen():
        subprocess.run([H.MAKE_TINY, '--config_file', DS_CFG, '--convert_file', DS_CONV, '--out', ds16, '--dtype', 'bf16'],
                       check=True, capture_output=True)
        subprocess.run([H.MAKE_TINY, '--config_file', DS_CFG, '--convert_file', DS_CONV, '--out', ds8, '--dtype', 'fp8'],
                       check=True, capture_output=True)
        subprocess.run([H.MAKE_TINY, '--model', 'llama3', '--config_file', LL_CFG, '--convert_file', LL_CONV, '--out', ll16,
                        '--dtype', 'bf16'], check=True, capture_output=True)
    H.check('generate tiny HF checkpoints (DeepSeek V3 BF16 + FP8, Llama 3 BF16)', gen)
    if H.FAILED:
        return

    def megatron_bytes():
        dst = os.path.join(work, 'ds_td')
        # the fixture was saved under torch 2.15, which records strides in TensorProperties
        convert(DS_CFG, DS_CONV, ds16, dst, ['--ckpt_format', 'torch_dist', '--torch_dist_strides'])
        rel = os.path.join(dst, 'release')
        ref = os.path.join(DATA, 'ds_tiny_megatron')
        assert open(os.path.join(dst, 'latest_checkpointed_iteration.txt')).read() == 'release'
        assert open(os.path.join(rel, 'metadata.json'), 'rb').read() == open(os.path.join(ref, 'metadata.json'), 'rb').read()
        want = {}
        for line in open(os.path.join(ref, 'data_files.sha256')):
            h, n, f = line.split()
            want[f] = (h, int(n))
        have = {f: (hashlib.sha256(open(os.path.join(rel, f), 'rb').read()).hexdigest(), os.path.getsize(os.path.join(rel, f)))
                for f in os.listdir(rel) if f.endswith('.distcp')}
        assert have == want, 'data files differ from Megatron-Core\'s: %s vs %s' % (have, want)
        a, b = summary(read_metadata(os.path.join(rel, '.metadata'))), summary(read_metadata(os.path.join(ref, '.metadata')))
        assert list(a[0]) == list(b[0]), 'key order differs'
        assert a[0] == b[0], [k for k in a[0] if a[0][k] != b[0].get(k)][:5]
        assert a[1] == b[1], [k for k in a[1] if a[1][k] != b[1].get(k)][:5]
        # default: the 5-field TensorProperties state (older torch, e.g. 2.11, unpickles exactly 5
        # fields); the same data files, the same metadata with strides None
        dst5 = os.path.join(work, 'ds_td5')
        convert(DS_CFG, DS_CONV, ds16, dst5, ['--ckpt_format', 'torch_dist'])
        rel5 = os.path.join(dst5, 'release')
        md5 = read_metadata(os.path.join(rel5, '.metadata'))
        lens = {len(v.properties.state) for v in md5.state_dict_metadata.values()
                if type(v).__name__ != 'BytesStorageMetadata'}
        assert lens == {5}, lens
        have5 = {f: (hashlib.sha256(open(os.path.join(rel5, f), 'rb').read()).hexdigest(), os.path.getsize(os.path.join(rel5, f)))
                 for f in os.listdir(rel5) if f.endswith('.distcp')}
        assert have5 == want
        a5 = summary(md5)
        assert a5[0] == {k: (v if len(v) == 1 else (v[0], v[1], None, v[3])) for k, v in b[0].items()}
        assert a5[1] == b[1]
    H.check('DeepSeek V3 HF -> torch_dist: data files byte-identical to Megatron-Core\'s save, same metadata '
            '(--torch_dist_strides; default: the 5-field TensorProperties of older torch)', megatron_bytes)

    def grouped_gemm_same():
        # Megatron-Core 0.16.1's TEGroupedMLP / GroupedMLP save their experts under SequentialMLP's keys
        # and global shapes (docs/torch-dist-format.md §5): --moe-grouped-gemm gives the same checkpoint
        dst = os.path.join(work, 'ds_td_gg')
        out = convert(DS_CFG, DS_CONV, ds16, dst, ['--ckpt_format', 'torch_dist', '--moe-grouped-gemm',
                                                   '--torch_dist_strides'])
        assert 'same keys' in out, out
        ref = os.path.join(DATA, 'ds_tiny_megatron')
        want = {line.split()[2]: line.split()[0] for line in open(os.path.join(ref, 'data_files.sha256'))}
        rel = os.path.join(dst, 'release')
        have = {f: hashlib.sha256(open(os.path.join(rel, f), 'rb').read()).hexdigest() for f in os.listdir(rel)
                if f.endswith('.distcp')}
        assert have == want, (have, want)
        a, b = summary(read_metadata(os.path.join(rel, '.metadata'))), summary(read_metadata(os.path.join(ref, '.metadata')))
        assert a == b
    H.check('DeepSeek V3 HF -> torch_dist with --moe-grouped-gemm: the same keys and bytes as Megatron-Core\'s save',
            grouped_gemm_same)

    def from_legacy():
        leg, dst = os.path.join(work, 'ds_leg222'), os.path.join(work, 'ds_td_from_leg')
        convert(DS_CFG, DS_CONV, ds16, leg, ['--tensor_model_parallel_size', '2', '--pipeline_model_parallel_size', '2',
                                             '--expert_parallel_size', '2'])
        cmd = [H.CONVERT, '--load_platform', 'mcore', '--save_platform', 'mcore', '--config_file', DS_CFG, '--convert_file',
               DS_CONV, '--load_ckpt_path', leg, '--save_ckpt_path', dst, '-q', '--ckpt_format', 'torch_dist']
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        ref = os.path.join(DATA, 'ds_tiny_megatron')
        want = {line.split()[2]: line.split()[0] for line in open(os.path.join(ref, 'data_files.sha256'))}
        rel = os.path.join(dst, 'release')
        have = {f: hashlib.sha256(open(os.path.join(rel, f), 'rb').read()).hexdigest() for f in os.listdir(rel)
                if f.endswith('.distcp')}
        assert have == want, (have, want)
    H.check('DeepSeek V3 legacy tp2 pp2 ep2 -> torch_dist: the same bytes as Megatron-Core\'s save', from_legacy)

    def to_ep4():
        leg, td = os.path.join(work, 'ds_leg222'), os.path.join(work, 'ds_td_from_leg')
        direct, via = os.path.join(work, 'ep4_direct'), os.path.join(work, 'ep4_via_td')
        for src, dst in ((leg, direct), (td, via)):
            cmd = [H.CONVERT, '--load_platform', 'mcore', '--save_platform', 'mcore', '--config_file', DS_CFG,
                   '--convert_file', DS_CONV, '--load_ckpt_path', src, '--save_ckpt_path', dst, '-q',
                   '--expert_parallel_size', '4']
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
        files = sorted(os.path.relpath(os.path.join(d, f), direct) for d, _, fs in os.walk(direct) for f in fs
                       if f == 'model_optim_rng.pt')
        assert len(files) == 4, files
        assert files == sorted(os.path.relpath(os.path.join(d, f), via) for d, _, fs in os.walk(via) for f in fs
                               if f == 'model_optim_rng.pt')
        for f in files:
            a = torch.load(os.path.join(direct, f))['model']
            b = torch.load(os.path.join(via, f))['model']
            assert list(a) == list(b), f
            for k in a:
                assert (a[k] is None and b[k] is None) or torch.equal(a[k].view(-1).view(torch.uint8),
                                                                      b[k].view(-1).view(torch.uint8)), (f, k)
    H.check('DeepSeek V3 legacy tp2 pp2 ep2 -> torch_dist -> legacy tp1 pp1 ep4 equals the direct reshard', to_ep4)

    def same_as_legacy(name, cfg, conv, src, model, stack_layers):
        td, leg = os.path.join(work, name + '_td2'), os.path.join(work, name + '_leg')
        convert(cfg, conv, src, td, ['--ckpt-format', 'torch_dist', '--max_workers', '3'], model)
        convert(cfg, conv, src, leg, [], model)
        got, objs, sdm = read_tensors(os.path.join(td, 'release'))
        want = expected_from_legacy(leg, stack_layers)
        assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))[:8]
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, (k, got[k].shape, want[k].shape)
            assert torch.equal(got[k].view(-1).view(torch.uint8), want[k].contiguous().view(-1).view(torch.uint8)), k
        keys = extra_state_keys(got)
        assert keys and set(objs) == keys, (sorted(set(objs) ^ keys))[:8]
        for key in keys:
            assert objs[key] == [None], (key, objs[key])
        assert len(sorted(f for f in os.listdir(os.path.join(td, 'release')) if f.endswith('.distcp'))) == 3
    H.check('DeepSeek V3 HF -> torch_dist (3 data files): every tensor equals the legacy tp1 output, experts stacked',
            same_as_legacy, 'ds', DS_CFG, DS_CONV, ds16, 'deepseek_v3', False)
    H.check('Llama 3 HF -> torch_dist: every tensor equals the legacy tp1 output, decoder layers stacked',
            same_as_legacy, 'll', LL_CFG, LL_CONV, ll16, 'llama3', True)


    def fp8_dequantized():
        td, leg = os.path.join(work, 'ds8_td'), os.path.join(work, 'ds8_leg')
        convert(DS_CFG, DS_CONV, ds8, td, ['--ckpt_format', 'torch_dist', '--dequantize_fp8'])
        convert(DS_CFG, DS_CONV, ds8, leg, ['--dequantize_fp8'])
        got, _, _ = read_tensors(os.path.join(td, 'release'))
        want = expected_from_legacy(leg)
        assert sorted(got) == sorted(want)
        for k in want:
            assert torch.equal(got[k].view(-1).view(torch.uint8), want[k].contiguous().view(-1).view(torch.uint8)), k
    H.check('DeepSeek V3 HF FP8 -> torch_dist with --dequantize_fp8 equals the legacy dequantized output', fp8_dequantized)

    def to_hf(src, dst, cfg, conv, model='deepseek_v3'):
        cmd = [H.CONVERT, '--model', model, '--load_platform', 'mcore', '--save_platform', 'huggingface', '--config_file',
               cfg, '--convert_file', conv, '--load_ckpt_path', src, '--save_ckpt_path', dst, '-q',
               '--hf_max_shard_size', '4MB']
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not os.path.exists(dst + '.ckb-torch-dist-src'), 'scratch copy left behind'

    def same_files(a, b):
        names = sorted(f for f in os.listdir(a) if f.endswith('.safetensors') or f.endswith('.index.json'))
        assert names, a
        for f in names:
            assert open(os.path.join(a, f), 'rb').read() == open(os.path.join(b, f), 'rb').read(), f

    def round_trip(name, cfg, conv, src, model):
        td, back = os.path.join(work, name + '_rt_td'), os.path.join(work, name + '_rt_hf')
        convert(cfg, conv, src, td, ['--ckpt_format', 'torch_dist'], model)
        to_hf(td, back, cfg, conv, model)
        same_files(src, back)
    H.check('DeepSeek V3 BF16 HF -> torch_dist -> HF byte-identical', round_trip, 'ds', DS_CFG, DS_CONV, ds16, 'deepseek_v3')
    H.check('Llama 3 BF16 HF -> torch_dist -> HF byte-identical', round_trip, 'll', LL_CFG, LL_CONV, ll16, 'llama3')

    def megatron_saved_to_hf():
        # Megatron-Core's own save of this model: its .metadata / metadata.json (fixture), its data
        # files (byte-identical to ckbridge's, checked above), an empty common state as its
        # dist_checkpointing.save of model.sharded_state_dict() writes (fixture gpt_tiny/common.pt)
        td = os.path.join(work, 'ds_td')
        meg = os.path.join(work, 'meg_saved')
        os.makedirs(os.path.join(meg, 'release'))
        for f in os.listdir(os.path.join(td, 'release')):
            if f.endswith('.distcp'):
                os.link(os.path.join(td, 'release', f), os.path.join(meg, 'release', f))
        for f, d in (('.metadata', 'ds_tiny_megatron'), ('metadata.json', 'ds_tiny_megatron'), ('common.pt', 'gpt_tiny')):
            with open(os.path.join(DATA, d, f), 'rb') as i, open(os.path.join(meg, 'release', f), 'wb') as o:
                o.write(i.read())
        with open(os.path.join(meg, 'latest_checkpointed_iteration.txt'), 'w') as o:
            o.write('release')
        back = os.path.join(work, 'meg_hf')
        to_hf(meg, back, DS_CFG, DS_CONV)
        same_files(ds16, back)
    H.check('Megatron-Core-saved torch_dist of DeepSeek V3 -> HF byte-identical to the HF source', megatron_saved_to_hf)

    def megatron_bytes_stacked():
        # Qwen3 dense (every layer alike): Megatron-Core stacks the decoder layers along a prepended
        # axis; its own save of this model is the fixture qwen3_tiny_megatron
        import ckb_families as fam
        f = fam.FAMILIES['qwen3']
        src, dst = os.path.join(work, 'q3_hf'), os.path.join(work, 'q3_td')
        fam.generate(f, src, 'bf16')
        convert(f.tiny, f.convert, src, dst, ['--ckpt_format', 'torch_dist', '--torch_dist_strides'], 'qwen3')
        rel, ref = os.path.join(dst, 'release'), os.path.join(DATA, 'qwen3_tiny_megatron')
        assert open(os.path.join(rel, 'metadata.json'), 'rb').read() == open(os.path.join(ref, 'metadata.json'), 'rb').read()
        want = {line.split()[2]: (line.split()[0], int(line.split()[1])) for line in open(os.path.join(ref, 'data_files.sha256'))}
        have = {f: (hashlib.sha256(open(os.path.join(rel, f), 'rb').read()).hexdigest(), os.path.getsize(os.path.join(rel, f)))
                for f in os.listdir(rel) if f.endswith('.distcp')}
        assert have == want, 'data files differ from Megatron-Core\'s: %s vs %s' % (have, want)
        a, b = summary(read_metadata(os.path.join(rel, '.metadata'))), summary(read_metadata(os.path.join(ref, '.metadata')))
        assert list(a[0]) == list(b[0]), 'key order differs'
        assert a[0] == b[0], [k for k in a[0] if a[0][k] != b[0].get(k)][:5]
        assert a[1] == b[1], [k for k in a[1] if a[1][k] != b[1].get(k)][:5]
        assert any(k.startswith('decoder.layers.self_attention.') for k in a[0]), 'layers not stacked'
        back = os.path.join(work, 'q3_back')
        to_hf(dst, back, f.tiny, f.convert, 'qwen3')
        import ckb_numpy as cn
        a, b = cn.read_hf(src), cn.read_hf(back)
        assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))[:8]
        for k in a:
            assert a[k][0] == b[k][0] and a[k][1].tobytes() == b[k][1].tobytes(), k
    H.check('Qwen3 HF -> torch_dist (layers stacked): data files byte-identical to Megatron-Core\'s save, same '
            'metadata; -> HF byte-identical', megatron_bytes_stacked)

    def refusals():
        for flags, needle, src in (
                (['--ckpt_format', 'torch_dist', '--tensor_model_parallel_size', '2'], '--tensor_model_parallel_size', ds16),
                (['--ckpt_format', 'torch_dist', '--expert_parallel_size', '2'], '--expert_parallel_size', ds16),
                (['--ckpt_format', 'torch_dist'], 'blockwise-FP8 weight; ckbridge does not write FP8 into torch_dist', ds8),
                (['--ckpt_format', 'torch_dist'], '--dequantize_fp8', ds8),
                (['--ckpt_format', 'zarr'], 'ckpt_format', ds16)):
            dst = os.path.join(work, 'refused')
            out = convert(DS_CFG, DS_CONV, src, dst, flags, expect_ok=False)
            assert needle in out, (flags, out)
            assert not os.path.exists(os.path.join(dst, 'release', 'metadata.json')), flags
    H.check('refused: layout flags, FP8 without --dequantize_fp8, unknown format', refusals)

    def tree(d):
        out = {}
        for root, _, fs in os.walk(d):
            for f in fs:
                p = os.path.join(root, f)
                out[os.path.relpath(p, d)] = (open(p, 'rb').read(), os.stat(p).st_mtime_ns)
        return out

    def run_td(dst, extra=(), env=None):
        cmd = [H.CONVERT, '--model', 'deepseek_v3', '--load_platform', 'huggingface', '--save_platform', 'mcore',
               '--config_file', DS_CFG, '--convert_file', DS_CONV, '--load_ckpt_path', ds16, '--save_ckpt_path', dst,
               '--safetensors', '-q', '--ckpt_format', 'torch_dist', '--max_workers', '3'] + list(extra)
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run(cmd, capture_output=True, text=True, env=e)

    dst = os.path.join(work, 'td_resume')
    ref = os.path.join(work, 'td_resume_ref')

    def manifest_and_complete():
        r = run_td(dst)
        assert r.returncode == 0, r.stdout + r.stderr
        man = os.path.join(dst, 'ckbridge-manifest.json')
        import json
        m = json.load(open(man))
        listed = {f['path']: f for f in m['files']}
        files = {os.path.relpath(os.path.join(root, f), dst) for root, _, fs in os.walk(dst) for f in fs}
        assert files - {'ckbridge-manifest.json'} == set(listed), (files, sorted(listed))
        for rel, f in listed.items():  # sizes and SHA-256 computed here, not by ckbridge
            b = open(os.path.join(dst, rel), 'rb').read()
            assert f['size'] == len(b) and f['sha256'] == hashlib.sha256(b).hexdigest(), rel
        assert any(p.endswith('.distcp') for p in listed) and 'release/.metadata' in listed
        assert not os.path.exists(os.path.join(dst, '.ckbridge-run')), 'run state left behind'
        v = subprocess.run([H.VERIFY, '--manifest', dst], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr
        before = tree(dst)
        r = run_td(dst)
        assert r.returncode == 0 and 'already complete: ' in r.stdout, r.stdout + r.stderr
        assert tree(dst) == before, 'a finished output was touched'
        os.rename(dst, ref)
    H.check('torch_dist output: manifest matches the files (sha256 here), ckbridge_verify --manifest passes, '
            're-run exits 0 "already complete" touching nothing', manifest_and_complete)
    if H.FAILED and not os.path.isdir(ref):
        return

    def damaged():
        bad = os.path.join(work, 'td_damaged')
        r = run_td(bad)
        assert r.returncode == 0, r.stderr
        f = sorted(x for x in os.listdir(os.path.join(bad, 'release')) if x.endswith('.distcp'))[0]
        p = os.path.join(bad, 'release', f)
        b = bytearray(open(p, 'rb').read())
        b[len(b) // 2] ^= 1
        open(p, 'wb').write(bytes(b))
        v = subprocess.run([H.VERIFY, '--manifest', bad], capture_output=True, text=True)
        assert v.returncode != 0 and f in v.stdout + v.stderr, v.stdout + v.stderr
        r = run_td(bad)
        assert r.returncode != 0 and f in r.stderr, r.stdout + r.stderr
    H.check('torch_dist output with a changed data file: verify and the same command refuse, naming it', damaged)

    def total_bytes():  # the tensor bytes the run writes (what the kill seam counts)
        got, _, _ = read_tensors(os.path.join(ref, 'release'))
        return sum(t.numel() * t.element_size() for t in got.values())

    def same_as_ref():
        a, b = tree(ref), tree(dst)
        assert sorted(a) == sorted(b), (sorted(a), sorted(b))
        for k in a:
            assert a[k][0] == b[k][0], 'differs from the uninterrupted run: ' + k

    def killed(frac, sync):
        shutil.rmtree(dst, ignore_errors=True)
        env = {'CKBRIDGE_TEST_KILL_AFTER_BYTES': str(total_bytes() * frac // 100)}
        if sync:
            env['CKBRIDGE_TEST_SYNC_BYTES'] = str(sync)
        r = run_td(dst, env=env)
        assert r.returncode == -9, 'expected SIGKILL, got %d: %s' % (r.returncode, r.stderr)
        assert not os.path.exists(os.path.join(dst, 'latest_checkpointed_iteration.txt'))
        assert not os.path.exists(os.path.join(dst, 'release', 'metadata.json'))
        assert not os.path.exists(os.path.join(dst, 'ckbridge-manifest.json'))
        if sync:  # item-level progress was recorded and a partial data file kept for the next run
            prog = os.path.join(dst, '.ckbridge-run', 'torch_dist')
            assert any(open(os.path.join(prog, f)).read() for f in os.listdir(prog)), 'no progress recorded'
            assert any(f.endswith('.ckb-partial') for f in os.listdir(os.path.join(dst, 'release')))
        r = run_td(dst)
        assert r.returncode == 0, r.stdout + r.stderr
        assert 'resuming an interrupted run' in r.stderr, r.stderr
        if sync:  # the partial data files were continued, not written again
            m = re.search(r'torch_dist: (\d+) bytes of data files kept from the interrupted run', r.stderr)
            assert m and int(m.group(1)) > 0, r.stderr
        same_as_ref()
        assert not any(f.endswith('.ckb-partial') for f in os.listdir(os.path.join(dst, 'release')))
    for frac, sync in ((10, 4096), (50, 4096), (90, 4096), (50, 0)):
        H.check('torch_dist killed at %d%% (%s), run again: byte-identical to an uninterrupted run' %
                (frac, 'progress every 4 KiB' if sync else 'default progress granularity'), killed, frac, sync)

    def twice():
        shutil.rmtree(dst, ignore_errors=True)
        env = {'CKBRIDGE_TEST_SYNC_BYTES': '4096'}
        for frac in (30, 40):
            env['CKBRIDGE_TEST_KILL_AFTER_BYTES'] = str(total_bytes() * frac // 100)
            r = run_td(dst, env=env)
            assert r.returncode == -9, r.stderr
        r = run_td(dst)
        assert r.returncode == 0, r.stdout + r.stderr
        same_as_ref()
    H.check('torch_dist killed twice, run again: byte-identical', twice)

    def other_args():
        shutil.rmtree(dst, ignore_errors=True)
        r = run_td(dst, env={'CKBRIDGE_TEST_KILL_AFTER_BYTES': str(total_bytes() // 2), 'CKBRIDGE_TEST_SYNC_BYTES': '4096'})
        assert r.returncode == -9, r.stderr
        before = tree(dst)
        r = run_td(dst, ['--amax_epsilon', '1e-4'])
        assert r.returncode != 0 and 'partial output of a different conversion' in r.stderr, r.stdout + r.stderr
        assert tree(dst) == before
    H.check('torch_dist: other arguments over a partial output refused, partial output untouched', other_args)


if __name__ == '__main__':
    sys.exit(H.main(run_all, [H.CONVERT, H.MAKE_TINY], 'ckb_td_'))
