"""Hostile inputs and faults at the converter's command line (issue 13), each checked for a clear
refusal that names the file / tensor / flag, and for nothing written:
  F8  a flipped bit in a storage record of an MCore rank file (located with Python's zipfile, the
      CRC recomputed with zlib as the independent check) is refused naming the file and record;
  F9  TP that does not divide the attention heads (DeepSeek MLA: TP 8 with 4 heads) or the query
      groups (Llama 3 GQA: TP 3 with 2 groups) is refused before any output;
  F10 --hf_max_shard_size >= 2^64, 0 or negative, integer flags that overflow or are 0,
      --pad_vocab_size_to=2e9 and 2000000000 (no bare bad_alloc), num_experts past 2^32;
  FP8 +Inf / NaN in a BF16 source with --convert_to_fp8: refused naming the tensor, or quantized
      and counted with --allow_nonfinite.
Exits non-zero on failure; the last line is "N passed, M failed".
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get('CKB_SOURCE_DIR', os.path.join(HERE, '..', '..'))
BUILD = os.environ.get('CKB_BUILD_DIR', os.path.join(SRC, 'build'))
CONVERT = os.path.join(BUILD, 'examples', 'ckbridge_convert')
MAKE_TINY = os.path.join(BUILD, 'examples', 'deepseek_v3_make_tiny')
DS_CFG = os.path.join(SRC, 'configs', 'deepseek_v3', 'deepseek_v3_tiny.yaml')
DS_CONV = os.path.join(SRC, 'configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert.yaml')
LL_CFG = os.path.join(SRC, 'configs', 'llama3', 'llama3_tiny.yaml')
LL_CONV = os.path.join(SRC, 'configs', 'llama3', 'ckpt_convert', 'llama3_convert.yaml')

PASSED, FAILED = [], []


def check(name, fn, *args):
    try:
        fn(*args)
        PASSED.append(name)
        print('PASS', name, flush=True)
    except Exception:  # noqa: BLE001 - report every failure, keep going
        FAILED.append(name)
        print('FAIL', name, flush=True)
        traceback.print_exc()


def run(args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True)


def convert(src, dst, frm='huggingface', to='mcore', extra=(), cfg=DS_CFG, conv=DS_CONV, model='deepseek_v3'):
    return run([CONVERT, '--load_platform', frm, '--save_platform', to, '--config_file', cfg, '--convert_file', conv,
                '--model', model, '--load_ckpt_path', src, '--save_ckpt_path', dst, '-q'] + list(extra))


def refused(r, dst, *needles, streaming=False):
    """`streaming`: a check of the data itself fails while the data streams (plans read no data):
    the output may hold a resumable partial run, but never a complete-looking checkpoint."""
    assert r.returncode != 0, 'expected a refusal, got exit 0:\n' + r.stdout + r.stderr
    msg = r.stderr
    for n in needles:
        assert n in msg, '%r not in: %s' % (n, msg)
    for bad in ('bad_alloc', 'not in range 0.000000'):
        assert bad not in msg, msg
    if dst is not None and streaming:
        have = set(os.listdir(dst)) if os.path.exists(dst) else set()
        done = {'latest_checkpointed_iteration.txt', 'model.safetensors.index.json', 'config.json',
                'ckbridge-manifest.json'}
        assert not have & done, 'output looks complete: %s' % sorted(have)
    elif dst is not None:
        assert not os.path.exists(dst) or not os.listdir(dst), 'output written: %s' % os.listdir(dst)
    return msg


def ok(r):
    assert r.returncode == 0, 'failed (%d):\n%s%s' % (r.returncode, r.stdout, r.stderr)
    return r


# ------------------------------------------------------------------------------ F8: zip CRCs
def flip_bit_in_storage(rank_file):
    """Flips one bit in the middle of the largest data/ record; returns its name."""
    with zipfile.ZipFile(rank_file) as z:
        infos = [i for i in z.infolist() if '/data/' in i.filename]
        info = max(infos, key=lambda i: i.file_size)
        want_crc = info.CRC
    with open(rank_file, 'r+b') as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = struct.unpack('<HH', local[26:30])
        data_at = info.header_offset + 30 + name_len + extra_len
        f.seek(data_at)
        data = bytearray(f.read(info.file_size))
        assert zlib.crc32(data) == want_crc  # located the record's bytes
        data[len(data) // 2] ^= 0x10
        assert zlib.crc32(data) != want_crc
        f.seek(data_at)
        f.write(data)
    return info.filename


def test_crc(work, hf):
    mc = os.path.join(work, 'mc')
    ok(convert(hf, mc, extra=['--tensor_model_parallel_size', 2]))
    ok(convert(mc, os.path.join(work, 'hf_back'), frm='mcore', to='huggingface'))  # intact: converts
    rank = os.path.join(mc, 'release', 'mp_rank_01', 'model_optim_rng.pt')
    record = flip_bit_in_storage(rank)
    dst = os.path.join(work, 'hf_bad')
    refused(convert(mc, dst, frm='mcore', to='huggingface'), dst, 'CRC-32 mismatch', rank, record, streaming=True)
    dst = os.path.join(work, 'mc_bad')
    refused(convert(mc, dst, frm='mcore', to='mcore', extra=['--tensor_model_parallel_size', 1]), dst,
            'CRC-32 mismatch', record, streaming=True)


# ------------------------------------------------------------------------------ F9: TP vs heads
def test_tp_heads(work, hf, hf_llama):
    dst = os.path.join(work, 'tp8')
    refused(convert(hf, dst, extra=['--tensor_model_parallel_size', 8]), dst,
            '--tensor_model_parallel_size 8 does not divide', 'num_attention_heads 4')
    dst = os.path.join(work, 'll_tp3')
    refused(convert(hf_llama, dst, extra=['--tensor_model_parallel_size', 3], cfg=LL_CFG, conv=LL_CONV, model='llama3'),
            dst, '--tensor_model_parallel_size 3 does not divide', 'num_query_groups 2')
    # MCore -> MCore to a TP that does not divide the heads
    mc = os.path.join(work, 'mc_tp1')
    ok(convert(hf, mc))
    dst = os.path.join(work, 'mc_tp8')
    refused(convert(mc, dst, frm='mcore', to='mcore', extra=['--tensor_model_parallel_size', 8]), dst,
            'num_attention_heads 4')


# ------------------------------------------------------------------------------ F10: numbers
def test_numbers(work, hf):
    dst = os.path.join(work, 'num')
    for v in ('18446744073709551616', '20000000000GB', '1e300'):
        refused(convert(hf, dst, extra=['--hf_max_shard_size', v]), dst, '--hf_max_shard_size', 'too large')
    for v in ('0', '-5GB', '0.5'):
        refused(convert(hf, dst, extra=['--hf_max_shard_size', v]), dst, '--hf_max_shard_size', 'at least 1 byte')
    for flag in ('--tensor_model_parallel_size', '--pipeline_model_parallel_size', '--max_workers',
                 '--expert_parallel_size', '--make_vocab_size_divisible_by'):
        refused(convert(hf, dst, extra=[flag, '0']), dst, flag, 'expected a whole number')
        refused(convert(hf, dst, extra=[flag, '99999999999999999999']), dst, flag, 'out of range')
        refused(convert(hf, dst, extra=[flag, '-1']), dst, flag)
    refused(convert(hf, dst, extra=['--pad_vocab_size_to=2e9']), dst, '--pad_vocab_size_to', "expected a whole number, got '2e9'")
    refused(convert(hf, dst, extra=['--pad_vocab_size_to', '2000000000']), dst, 'GB of working memory',
            'check --pad_vocab_size_to')
    # num_experts past 2^32 (wrapped to 8 in int before): named with its real value
    cfg = os.path.join(work, 'huge_experts.yaml')
    with open(DS_CFG) as f:
        text = f.read()
    assert 'num_experts: 8\n' in text
    with open(cfg, 'w') as f:
        f.write(text.replace('num_experts: 8\n', 'num_experts: 4294967304\n'))
    r = convert(hf, dst, cfg=cfg)
    msg = refused(r, dst, '4294967304')
    assert "num_experts" in msg, msg


# ------------------------------------------------------------------------------ FP8 non-finite
def set_bf16(path, tensor, index, bits):
    with open(path, 'r+b') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        hdr = json.loads(f.read(n))
        if tensor not in hdr:
            return False
        e = hdr[tensor]
        assert e['dtype'] == 'BF16', e
        f.seek(8 + n + e['data_offsets'][0] + 2 * index)
        f.write(struct.pack('<H', bits))
    return True


def test_nonfinite(work):
    hf = os.path.join(work, 'hf_bf16_inf')
    ok(run([MAKE_TINY, '--config_file', DS_CFG, '--convert_file', DS_CONV, '--out', hf, '--dtype', 'bf16']))
    name = 'model.layers.0.self_attn.o_proj.weight'
    hit = [p for p in sorted(os.listdir(hf)) if p.endswith('.safetensors') and set_bf16(os.path.join(hf, p), name, 5, 0x7F80)]
    assert hit, name
    set_bf16(os.path.join(hf, hit[0]), name, 300, 0xFFC0)  # and a NaN
    dst = os.path.join(work, 'fp8_inf')
    refused(convert(hf, dst, extra=['--convert_to_fp8']), None, "tensor '" + name + "'", '2 non-finite',
            '--allow_nonfinite')
    # refused while writing: the output is an incomplete (resumable) run, never a checkpoint
    assert not os.path.exists(os.path.join(dst, 'latest_checkpointed_iteration.txt'))
    # the same directory resumes with --allow_nonfinite (finished files hold no non-finite input)
    r = ok(convert(hf, dst, extra=['--convert_to_fp8', '--allow_nonfinite']))
    assert '2 non-finite input values' in r.stdout, r.stdout
    r = ok(convert(hf, os.path.join(work, 'fp8_inf_fresh'), extra=['--convert_to_fp8', '--allow_nonfinite']))
    assert '2 non-finite input values' in r.stdout, r.stdout
    ok(convert(hf, os.path.join(work, 'plain'), extra=[]))  # without FP8 nothing is quantized: no complaint


def main():
    work = tempfile.mkdtemp(prefix='ckb_hostile_')
    try:
        hf = os.path.join(work, 'hf')
        hf_llama = os.path.join(work, 'hf_llama')
        ok(run([MAKE_TINY, '--config_file', DS_CFG, '--convert_file', DS_CONV, '--out', hf, '--dtype', 'bf16']))
        ok(run([MAKE_TINY, '--config_file', LL_CFG, '--convert_file', LL_CONV, '--model', 'llama3', '--out', hf_llama,
                '--dtype', 'bf16']))
        check('F8 flipped bit in a storage record refused naming file and record', test_crc, work, hf)
        check('F9 TP not dividing heads / query groups refused before output', test_tp_heads, work, hf, hf_llama)
        check('F10 sizes and integers: overflow, 0, negative, 2e9 refused clearly', test_numbers, work, hf)
        check('FP8 non-finite inputs refused unless --allow_nonfinite (then counted)', test_nonfinite, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('%d passed, %d failed' % (len(PASSED), len(FAILED)))
    return 1 if FAILED else 0


if __name__ == '__main__':
    sys.exit(main())
