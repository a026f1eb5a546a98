"""Converter-level tests of the documented flags of ckbridge_convert (README, --help) that
test_convert_deepseek.py does not exercise, and refusals of damaged MCore sources.

Each case runs the converter on the tiny model (configs/deepseek_v3/deepseek_v3_tiny.yaml) and checks
the output against an expectation computed here, independently of ckbridge, with the numpy engine of
test_convert_deepseek.py (LoongForge's layout rules over the HF tensors; TE's quantizer ported to
numpy; ml_dtypes for the E4M3 / bf16 roundings; test_fp8_mldtypes.reference for pt and epsilon):
  --dequantize_fp8 (+ --torch_dtype) in both directions, MCore BF16 -> HF with --convert_to_fp8,
  --quant_method pt, --te_version (the pickle form of each TE generation, reference fp8-blockwise §2),
  --torch_dtype (fake dtype of the TE tensors), a non-zero --amax_epsilon, --pad_vocab_size_to,
  --make_vocab_size_divisible_by, CKBRIDGE_CPU_ISA (every CPU variant gives the expected bytes),
  --device, --max_workers, --fp8_force_no_requant (accepted when blocks align), --megatron_path and
  LoongForge's ignored flags, --mtp_num_layers 0, --dequantize_fp8 with float16 (refused), and MCore sources that are refused: an MTP-stage embedding copy that differs from
  the original, a leftover tensor in a rank file.
Exits non-zero on failure; the last line is "N passed, M failed".
"""
import glob
import os
import pickletools
import shutil
import sys
import tempfile
import zipfile

import ml_dtypes
import numpy as np

import test_convert_deepseek as E
from test_convert_deepseek import M, check, convert, read_hf, run

import torch  # noqa: E402  (after test_convert_deepseek put the TE stubs on the path)

BASE = dict(tp=2, pp=2, ep=2, etp=1, grouped=True)


def hf_fp8_keys(hf):
    return sorted(k for k, v in hf.items() if v[0] == 'F8_E4M3')


def paths(*kinds):
    """A check of check_mcore's notes: exactly these FP8 paths (direct / requant / quantize) were seen."""
    def f(notes):
        assert set(notes) == set(kinds), 'FP8 paths %s, expected %s' % (notes, kinds)
    return f


def rank_paths(root):
    return sorted(glob.glob(os.path.join(root, 'release', '*', 'model_optim_rng.pt')))


# ----------------------------------------------------------------------------------- FP8 -> high precision
def check_dequantized_hf(src_hf, out_dir, dtype):
    """HF from --dequantize_fp8: every FP8 weight of the source as dtype(dequant), no scale tensors,
    every other tensor byte-identical."""
    got = read_hf(out_dir)
    want_keys = {k for k in src_hf if not k.endswith('weight_scale_inv')}
    assert set(got) == want_keys, 'keys differ: %s' % sorted(set(got) ^ want_keys)[:8]
    n = 0
    for k in want_keys:
        dt, arr = src_hf[k]
        gdt, garr = got[k]
        if dt == 'F8_E4M3':
            x = E.dequant(arr, src_hf[k[:-6] + 'weight_scale_inv'][1])
            want = E.to_dtype(x, dtype)
            assert gdt == E.TORCH_DTYPES[dtype][0], '%s: dtype %s' % (k, gdt)
            assert garr.tobytes() == np.ascontiguousarray(want).tobytes(), '%s: values differ' % k
            n += 1
        else:
            assert gdt == dt and garr.tobytes() == arr.tobytes(), '%s differs' % k
    assert n > 100, n
    print('    %d FP8 weights came out as their exact dequantized %s' % (n, dtype))


# ----------------------------------------------------------------------------------- TE pickle forms
# fp8-blockwise.md §1.7, §2.1-2.3: per TE generation, the rebuild function, the DType enum class and
# value, the number of rebuild arguments and the quantizer's keys in order.
TE_FORMS = {
    '2.3': dict(rebuild='_make_in_reduce_ex', enum='transformer_engine_torch DType', code=6, nargs=9,
                keys=['rowwise_usage', 'columnwise_usage', 'internal', 'dtype', 'block_len', 'force_pow_2_scales',
                      'amax_epsilon', 'block_scaling_dim']),
    '2.4': dict(rebuild='_make_in_reduce_ex', enum='transformer_engine_torch DType', code=7, nargs=9,
                keys=['rowwise_usage', 'columnwise_usage', 'internal', 'dtype', 'block_len', 'force_pow_2_scales',
                      'amax_epsilon', 'block_scaling_dim']),
    '2.9': dict(rebuild='_make_in_reduce_ex', enum='transformer_engine_torch DType', code=7, nargs=10,
                keys=['rowwise_usage', 'columnwise_usage', 'internal', 'dtype', 'block_len', 'force_pow_2_scales',
                      'amax_epsilon', 'block_scaling_dim', 'all_gather_usage']),
    '2.12': dict(rebuild='_make_in_reduce_ex', enum='transformer_engine_torch DType', code=7, nargs=10,
                 keys=['rowwise_usage', 'columnwise_usage', 'internal', 'optimize_for_gemm', 'dtype', 'block_len',
                       'force_pow_2_scales', 'amax_epsilon', 'block_scaling_dim']),
    '2.16': dict(rebuild='_make_float8_blockwise_tensor_in_reduce_ex', enum='transformer_engine_torch DType',
                 code=7, nargs=10,
                 keys=['rowwise_usage', 'columnwise_usage', 'internal', 'optimize_for_gemm', 'dtype', 'block_len',
                       'force_pow_2_scales', 'amax_epsilon', 'block_scaling_dim']),
    '2.17': dict(rebuild='_make_float8_blockwise_tensor_in_reduce_ex', enum='transformer_engine.pytorch.constants DType',
                 code=7, nargs=10,
                 keys=['rowwise_usage', 'columnwise_usage', 'internal', 'optimize_for_gemm', 'dtype', 'block_len',
                       'force_pow_2_scales', 'amax_epsilon', 'block_scaling_dim']),
}


def pickle_of(path):
    z = zipfile.ZipFile(path)
    name = [n for n in z.namelist() if n.endswith('/data.pkl')][0]
    return z.read(name)


def check_te_form(path, ver):
    """The data.pkl of one rank file against the reference table for TE `ver`."""
    form = TE_FORMS[ver]
    ops = list(pickletools.genops(pickle_of(path)))
    globals_ = [arg for op, arg, _ in ops if op.name == 'GLOBAL']
    strings = [arg for op, arg, _ in ops if op.name in ('BINUNICODE', 'SHORT_BINUNICODE')]
    assert form['enum'].replace(' ', '\n') in [g.replace(' ', '\n') for g in globals_], (ver, globals_)
    gi = [i for i, (op, arg, _) in enumerate(ops) if op.name == 'GLOBAL' and arg == form['enum']][0]
    code = next(arg for op, arg, _ in ops[gi + 1:] if op.name in ('BININT1', 'BININT', 'BININT2'))
    assert code == form['code'], '%s: kFloat8E4M3 pickled as %d, expected %d' % (ver, code, form['code'])
    other = {f['enum'] for f in TE_FORMS.values()} - {form['enum']}
    assert not other & set(globals_), '%s: other DType class pickled: %s' % (ver, other & set(globals_))
    if form['rebuild'] == '_make_in_reduce_ex':  # getattr(Float8BlockwiseQTensor, '_make_in_reduce_ex')
        assert '_make_in_reduce_ex' in strings and '__builtin__ getattr' in globals_, ver
        assert not any(g.endswith('_make_float8_blockwise_tensor_in_reduce_ex') for g in globals_), ver
    else:
        assert ('transformer_engine.pytorch.tensor.float8_blockwise_tensor '
                '_make_float8_blockwise_tensor_in_reduce_ex') in globals_, (ver, globals_)
        assert '_make_in_reduce_ex' not in strings, ver
    # the quantizer's __dict__ keys, in order (the first quantizer in the file)
    i = strings.index('rowwise_usage')
    keys = [s for s in strings[i:i + 40] if s in set().union(*[set(f['keys']) for f in TE_FORMS.values()])]
    n = len(form['keys'])
    assert keys[:n] == form['keys'], '%s: quantizer keys %s' % (ver, keys[:12])
    assert keys[n:n + 1] != ['all_gather_usage'], '%s: quantizer has all_gather_usage' % ver


def te_calls_check(path, ver):
    """Loaded through the TE stubs of that version: each FP8 tensor rebuilt with its arguments."""
    from transformer_engine.pytorch.tensor import float8_blockwise_tensor as fbt
    os.environ['TE_STUB_VERSION'] = ver
    try:
        del fbt.CALLS[:]
        torch.load(path, map_location='cpu', weights_only=False)
        calls = [c for c in fbt.CALLS if 'shape' in c]
        assert calls, 'no FP8 tensor rebuilt'
        assert all(c['nargs'] == TE_FORMS[ver]['nargs'] for c in calls), (ver, {c['nargs'] for c in calls})
        return len(calls)
    finally:
        os.environ['TE_STUB_VERSION'] = '2.9'


# ----------------------------------------------------------------------------------- MCore surgery
def resave(path, edit):
    """torch.load a BF16 rank file (no TE objects), edit its dict, torch.save it back."""
    obj = torch.load(path, map_location='cpu', weights_only=False)
    edit(obj)
    torch.save(obj, path)


def refused_mcore(src_root, out, needles, streaming=False):
    """`streaming`: the check needs the data, so it fails while the data streams (plans read no data):
    the output may hold finished files of other tensors, but never looks complete (no index / config.json)."""
    r = convert(src_root, out, {}, to='huggingface', layout=False, expect_ok=False)
    msg = r.stderr + r.stdout
    assert r.returncode == 1, 'exit %d: %s' % (r.returncode, msg)
    for n in needles:
        assert n in msg, 'message does not name %r: %s' % (n, msg.strip())
    if streaming:
        have = os.listdir(out) if os.path.exists(out) else []
        assert not {'model.safetensors.index.json', 'config.json', 'ckbridge-manifest.json'} & set(have), have
    else:
        assert not os.path.exists(out) or not os.listdir(out), 'output written: %s' % os.listdir(out)
    print('    -> %s' % msg.strip().splitlines()[-1][:220])


# ----------------------------------------------------------------------------------- main
def main():
    for p in (E.CONVERT, E.MAKE_TINY):
        if not os.path.exists(p):
            print('missing %s' % p)
            print('0 passed, 1 failed')
            return 1
    work = tempfile.mkdtemp(prefix='ckb_convert_flags_')
    try:
        run_all(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return E.finish()


def run_all(work):
    src = {k: os.path.join(work, 'hf_' + k) for k in ('fp8', 'bf16')}
    for k, d in src.items():
        run([E.MAKE_TINY, '--config_file', E.CFG, '--convert_file', E.CONV, '--out', d, '--dtype', k])
    hf = {k: read_hf(d) for k, d in src.items()}
    w = lambda *p: os.path.join(work, *p)  # noqa: E731

    def mcore_case(name, s, L, want_notes, env=None):
        def f():
            out = w(name)
            convert(src[s], out, L, env=env)
            notes = E.check_mcore(hf[s], out, L)
            want_notes(notes)
        check(name, f)

    # --dequantize_fp8, HF FP8 -> MCore: plain tensors in --torch_dtype (default bfloat16; float32)
    for dt in ('bfloat16', 'float32'):
        L = dict(BASE, opts=dict(dequantize=True, torch_dtype=dt))
        mcore_case('--dequantize_fp8 --torch_dtype %s: HF FP8 -> MCore, no FP8 left, values = dequant' % dt, 'fp8',
                   L, paths())

    # reference MCore checkpoints for the MCore-source cases
    fp8_mc, bf16_mc = w('ref_fp8_mcore'), w('ref_bf16_mcore')
    convert(src['fp8'], fp8_mc, BASE)
    convert(src['bf16'], bf16_mc, BASE)

    # --dequantize_fp8, MCore FP8 -> HF (bfloat16, float16)
    for dt in ('bfloat16', 'float32'):
        def f(dt=dt):
            out = w('deq_hf_' + dt)
            convert(fp8_mc, out, dict(opts=dict(dequantize=True, torch_dtype=dt)), to='huggingface', layout=False)
            check_dequantized_hf(hf['fp8'], out, dt)
        check('--dequantize_fp8 --torch_dtype %s: MCore FP8 -> HF, every FP8 weight its exact dequantized value' % dt, f)

    # MCore BF16 -> HF with --convert_to_fp8: DeepSeek-format FP8 (power-of-two scales for a BF16 source)
    def bf16_mcore_to_fp8_hf():
        out = w('c2f_hf')
        convert(bf16_mc, out, dict(convert_to_fp8=True), to='huggingface', layout=False)
        got = read_hf(out)
        src16 = hf['bf16']
        n = 0
        for k, (dt, arr) in got.items():
            if k.endswith('weight_scale_inv'):
                continue
            if dt == 'F8_E4M3':
                x = E.bf16_to_f32(src16[k][1])
                q, s = E.quant_te(x, True)
                gs = got[k[:-6] + 'weight_scale_inv'][1]
                assert gs.tobytes() == s.tobytes(), '%s: weight_scale_inv differs' % k
                assert arr.tobytes() == q.tobytes(), '%s: FP8 data differs' % k
                n += 1
            else:
                assert arr.tobytes() == src16[k][1].tobytes(), '%s differs from the BF16 source' % k
        # the FP8-capable set is the one DeepSeek's FP8 release quantizes
        want = set(hf_fp8_keys(hf['fp8']))
        have = {k for k, v in got.items() if v[0] == 'F8_E4M3'}
        assert have == want, 'FP8 set differs: only in output %s; only in the FP8 release %s' % (
            sorted(have - want)[:5], sorted(want - have)[:5])
        print('    %d weights quantized, bytes = numpy TE quantizer (pow2 scales)' % n)
    check('--convert_to_fp8: MCore BF16 -> HF FP8, bytes = numpy TE quantizer, FP8 set = DeepSeek\'s', bf16_mcore_to_fp8_hf)

    # --quant_method pt (power-of-two and linear scales) on BF16 -> MCore --convert_to_fp8
    for pow2 in (True, False):
        L = dict(BASE, pp=1, convert_to_fp8=True, pow2=pow2, opts=dict(method='pt'))
        mcore_case('--quant_method pt --force_pow_2_scales=%s: BF16 -> MCore FP8 = numpy pt quantizer' % pow2, 'bf16',
                   L, paths('quantize'))

    # a non-zero --amax_epsilon: a power of two (exact as float32) above the amax of some blocks
    amaxes = []
    for k in hf_fp8_keys(hf['fp8']):
        x = E.bf16_to_f32(hf['bf16'][k][1])
        for i in range(0, x.shape[0], 128):
            for j in range(0, x.shape[1], 128):
                amaxes.append(float(np.abs(x[i:i + 128, j:j + 128]).max()))
    eps = 2.0 ** round(np.log2(np.percentile(amaxes, 30)))
    n_below = sum(a < eps for a in amaxes)
    L = dict(BASE, pp=1, convert_to_fp8=True, pow2=False, opts=dict(eps=eps))

    def eps_notes(n):
        assert set(n) == {'quantize'}, n
        assert 0 < n_below < len(amaxes), (n_below, len(amaxes))
        print('    --amax_epsilon %g: %d of %d blocks have a smaller amax' % (eps, n_below, len(amaxes)))
    mcore_case('--amax_epsilon %g: BF16 -> MCore FP8 = numpy TE quantizer with that epsilon; stored in the '
               'quantizers' % eps, 'bf16', L, eps_notes)

    # --pad_vocab_size_to / --make_vocab_size_divisible_by: rows = copies of the last row; back unpadded
    for name, opts in (('--pad_vocab_size_to 1280', dict(pad_to=1280)),
                       ('--make_vocab_size_divisible_by 300', dict(divisible_by=300))):
        L = dict(BASE, opts=opts)

        def f(L=L, name=name):
            out = w('pad_' + name.split()[0].strip('-'))
            convert(src['fp8'], out, L)
            E.check_mcore(hf['fp8'], out, L)
            back = out + '_hf'
            convert(out, back, {}, to='huggingface', layout=False)
            E.same_files(src['fp8'], back)
            print('    padded vocab %d' % E.padded_vocab(M.V, L['tp']))
        check(name + ': MCore embedding / output layer padded as computed here; back to HF byte-identical', f)

    # --te_version: the pickle form of each TE generation; values as the expectation
    for ver in ('2.3', '2.4', '2.12', '2.16', '2.17'):
        L = dict(tp=1, pp=1, ep=2, etp=1, grouped=True, extra=['--te_version', ver])

        def f(ver=ver, L=L):
            out = w('te_' + ver)
            convert(src['fp8'], out, L)
            os.environ['TE_STUB_VERSION'] = ver
            try:
                E.check_mcore(hf['fp8'], out, L)
            finally:
                os.environ['TE_STUB_VERSION'] = '2.9'
            for p in rank_paths(out):
                check_te_form(p, ver)
            n = te_calls_check(rank_paths(out)[0], ver)
            print('    %d FP8 tensors per file in the TE %s form' % (n, ver))
        check('--te_version %s: pickle form per the reference table, values as expected' % ver, f)

    # --torch_dtype float32 with FP8 output: the TE tensors' fake dtype
    mcore_case('--torch_dtype float32: TE FP8 tensors carry fake dtype float32, FP8 bytes unchanged', 'fp8',
               dict(BASE, pp=1, opts=dict(torch_dtype='float32')),
               paths('direct'))

    # CKBRIDGE_CPU_ISA: every CPU variant quantizes and dequantizes to the expected bytes
    for isa in ('baseline', 'avx2', 'avx512'):
        L = dict(BASE, pp=1, convert_to_fp8=True)
        mcore_case('CKBRIDGE_CPU_ISA=%s: BF16 -> MCore --convert_to_fp8 bytes = numpy TE quantizer' % isa, 'bf16', L,
                   paths('quantize'),
                   env={'CKBRIDGE_CPU_ISA': isa})

        def f(isa=isa):
            out = w('isa_deq_' + isa)
            convert(fp8_mc, out, dict(opts=dict(dequantize=True)), to='huggingface', layout=False,
                    env={'CKBRIDGE_CPU_ISA': isa})
            check_dequantized_hf(hf['fp8'], out, 'bfloat16')
        check('CKBRIDGE_CPU_ISA=%s: MCore FP8 -> HF --dequantize_fp8 bytes = numpy dequantization' % isa, f)

    # --device cpu: the expected bytes; --device cuda without a CUDA build: refused before any output
    mcore_case('--device cpu: BF16 -> MCore --convert_to_fp8 bytes = numpy TE quantizer', 'bf16',
               dict(BASE, pp=1, convert_to_fp8=True, extra=['--device', 'cpu']),
               paths('quantize'))

    def device_cuda():
        out = w('dev_cuda')
        r = convert(src['bf16'], out, dict(BASE, extra=['--device', 'cuda']), expect_ok=False)
        if r.returncode == 0:  # a CUDA-capable binary on a GPU machine: then the bytes must be right
            E.check_mcore(hf['bf16'], out, dict(BASE))
            print('    --device cuda ran (GPU present)')
            return
        assert r.returncode == 1 and '--device cuda' in r.stderr, r.stderr
        assert not os.path.exists(out) or not os.listdir(out), os.listdir(out)
        print('    -> %s' % r.stderr.strip().splitlines()[-1][:200])
    check('--device cuda: refused before any output where CUDA is unavailable', device_cuda)

    # --max_workers 1, --megatron_path and LoongForge's flags without effect here: accepted, same bytes
    # (--distributed_convert outside an MPI job converts in one process too: tests/scripts/mpi_convert.sh)
    ignored = ['--no_load_optim', '--no_save_optim', '--distributed_convert', '--pretrain_as_fp8',
               '--use_distributed_optimizer', '--no-te', '--resume-convert', '--moe_grouped_gemm_legacy',
               '--fp8_quant_transfer_type', 'x', '--data_parallel_size', '8', '--transformer_impl', 'transformer_engine',
               '--num_experts', '8', '--checkpoint-format', 'torch', '--hf_checkpoint_device', 'cpu',
               '--add_embedding_padding', 'x', '--model_type_custom', 'x']

    def workers_and_ignored():
        out = w('workers1')
        convert(src['fp8'], out, dict(BASE, extra=['--megatron_path', w('no_such_dir')] + ignored), workers=1)
        for a in rank_paths(fp8_mc):
            b = a.replace(fp8_mc, out)
            assert open(a, 'rb').read() == open(b, 'rb').read(), '%s differs' % b
    check('--max_workers 1, --megatron_path and the ignored LoongForge flags: output byte-identical to the '
          'reference run', workers_and_ignored)

    # --mtp_num_layers 0: an HF source without the MTP layer converts to MCore without the MTP block
    # (and back); a source that has it is refused, naming its tensors (nothing is dropped silently)
    def mtp0():
        d = w('hf_bf16_no_mtp')
        mtp = 'model.layers.%d.' % M.N
        E.copy_modified(src['bf16'], d, lambda n, t: [t.pop(k) for k in list(t) if k.startswith(mtp)])
        hf0 = read_hf(d)
        assert hf0 and not any(k.startswith(mtp) for k in hf0)
        L = dict(BASE, mtp=0, extra=['--mtp_num_layers', '0'])
        out = w('mtp0')
        convert(d, out, L)
        notes = E.check_mcore(hf0, out, L)
        assert not notes, notes
        back = w('mtp0_hf')
        convert(out, back, dict(extra=['--mtp_num_layers', '0']), to='huggingface', layout=False)
        got = read_hf(back)
        assert set(got) == set(hf0), sorted(set(got) ^ set(hf0))[:5]
        for k, (dt, arr) in hf0.items():
            assert got[k][0] == dt and got[k][1].tobytes() == arr.tobytes(), '%s differs' % k
        E.refused(src['bf16'], w('mtp0_refused'), L, [mtp + 'eh_proj.weight'])
    check('--mtp_num_layers 0: MCore without the MTP block, every tensor as expected, back to HF identical; '
          'a source with an MTP layer refused, naming its tensors', mtp0)

    # --torch_dtype float16 with --dequantize_fp8: refused before any output (dequantization writes
    # bfloat16 or float32)
    def f16_dequant_refused():
        E.refused(fp8_mc, w('f16_deq'), dict(opts=dict(dequantize=True, torch_dtype='float16')),
                  ['--torch_dtype float16', '--dequantize_fp8'], to='huggingface')
    check('--dequantize_fp8 --torch_dtype float16: refused before any output', f16_dequant_refused)

    # --fp8_force_no_requant where every TP cut is on a block: accepted, blocks copied
    mcore_case('--fp8_force_no_requant with TP 2 (aligned): accepted, every FP8 block copied', 'fp8',
               dict(BASE, extra=['--fp8_force_no_requant']),
               paths('direct'))

    # --vocab_size: overrides the config's vocabulary size (here a config saying 900 for a 1000-row
    # embedding); a value that does not match the source is refused, naming the tensor
    def vocab_size():
        import yaml
        with open(E.CFG) as f:
            y = yaml.safe_load(f)
        y['vocab_size_in_config_file'] = 900
        cfg = w('tiny_vocab900.yaml')
        with open(cfg, 'w') as f:
            yaml.safe_dump(y, f)
        old, E.CFG = E.CFG, cfg
        try:
            E.refused(src['fp8'], w('vocab_refused'), BASE, ['model.embed_tokens.weight', '900'])
            L = dict(BASE, extra=['--vocab_size', str(M.V)])
            out = w('vocab_override')
            convert(src['fp8'], out, L)
            E.check_mcore(hf['fp8'], out, L)
            E.refused(src['fp8'], w('vocab_999'), dict(BASE, extra=['--vocab_size', '999']),
                      ['model.embed_tokens.weight', '999'])
        finally:
            E.CFG = old
    check('--vocab_size: overrides the config (MCore as expected); a mismatch refused, naming the tensor', vocab_size)

    # --hf_max_shard_size: every shard within the limit unless it holds one tensor; index and tensors exact
    def shard_size():
        out = w('hf_2mb')
        r = E.run([E.CONVERT, '--load_platform', 'mcore', '--save_platform', 'huggingface', '--config_file', E.CFG,
                   '--convert_file', E.CONV, '--load_ckpt_path', fp8_mc, '--save_ckpt_path', out,
                   '--hf_max_shard_size', '2MB', '-q'])
        assert r.returncode == 0
        import json
        index = json.load(open(os.path.join(out, 'model.safetensors.index.json')))
        files = sorted(glob.glob(os.path.join(out, '*.safetensors')))
        assert len(files) > 1 and set(index['weight_map'].values()) == {os.path.basename(f) for f in files}
        for f in files:
            t = E.read_safetensors(f)
            assert os.path.getsize(f) <= 2_000_000 or len(t) == 1, '%s: %d bytes, %d tensors' % (
                f, os.path.getsize(f), len(t))
            for k in t:
                assert index['weight_map'][k] == os.path.basename(f), k
        got = read_hf(out)
        assert set(got) == set(hf['fp8'])
        for k, (dt, arr) in hf['fp8'].items():
            assert got[k][0] == dt and got[k][1].tobytes() == arr.tobytes(), '%s differs' % k
        print('    %d shards of at most 2 MB' % len(files))
        bad = w('hf_5xb')
        r = E.run([E.CONVERT, '--load_platform', 'mcore', '--save_platform', 'huggingface', '--config_file', E.CFG,
                   '--convert_file', E.CONV, '--load_ckpt_path', fp8_mc, '--save_ckpt_path', bad,
                   '--hf_max_shard_size', '5XB', '-q'], expect_ok=False)
        assert r.returncode == 1 and '--hf_max_shard_size' in r.stderr and not os.path.exists(bad), r.stderr
    check('--hf_max_shard_size 2MB: shards within the limit, index consistent, every tensor identical; 5XB refused',
          shard_size)

    # bad flag values handled by the driver: refused before any output, naming the flag
    for flag, val in (('--torch_dtype', 'int8'), ('--te_version', '1.9')):
        check('bad value %s %s: refused, naming the flag' % (flag, val), E.refused, src['fp8'], w('bad' + flag + val),
              dict(BASE, extra=[flag, val]), [flag])

    # MCore sources that must be refused (BF16 files: torch can re-save them without TE)
    last = lambda root: [p for p in rank_paths(root) if '_001' in os.path.basename(os.path.dirname(p))]  # noqa

    def mtp_copy_differs():
        root = w('bad_mtp_copy')
        shutil.copytree(bf16_mc, root)
        victim = last(root)[0]

        def edit(obj):
            t = obj['model']['embedding.word_embeddings.weight']
            t[3, 5] = t[3, 5] + 1
        resave(victim, edit)
        refused_mcore(root, w('bad_mtp_copy_out'), ['embedding.word_embeddings.weight', 'is a copy of'], streaming=True)
    check('MCore source: the MTP stage\'s embedding copy differs from the original: refused, naming it',
          mtp_copy_differs)

    def leftover():
        root = w('bad_leftover')
        shutil.copytree(bf16_mc, root)
        victim = rank_paths(root)[0]
        key = 'decoder.layers.0.mlp.mystery.weight'
        resave(victim, lambda obj: obj['model'].__setitem__(key, torch.zeros(4, 4, dtype=torch.bfloat16)))
        refused_mcore(root, w('bad_leftover_out'), [key])
    check('MCore source: a leftover tensor in a rank file: refused, naming it', leftover)


if __name__ == '__main__':
    sys.exit(main())
