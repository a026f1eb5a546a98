"""DeepSeek's HF MTP blocks carry copies of the embedding and the output layer
(model.layers.N.embed_tokens / shared_head.head); MCore keeps only the originals, so HF -> MCore
must refuse a checkpoint whose copy differs. The comparison runs while the originals stream (the
plan reads no tensor data), so these tests check that:
  1. an unmodified tiny checkpoint converts;
  2. a copy with one changed element (in a row that only TP rank 1's shard reads, and in the last
     row, which the vocabulary padding repeats) makes the conversion fail, naming both tensors;
  3. nothing of such a run looks complete: no tracker file, and no rank file holding the changed
     rows is committed or recorded as finished; running the command again (resume) fails the same way;
  4. --dry-run of the modified checkpoint still succeeds (it reads no data) and writes nothing.
The tiny checkpoint comes from deepseek_v3_make_tiny; the edit is a byte flip located with the
safetensors header (no converter code involved).
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

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get('CKB_SOURCE_DIR', os.path.join(HERE, '..', '..'))
BUILD = os.environ.get('CKB_BUILD_DIR', os.path.join(SRC, 'build'))
CONVERT = os.path.join(BUILD, 'examples', 'ckbridge_convert')
MAKE_TINY = os.path.join(BUILD, 'examples', 'deepseek_v3_make_tiny')
CFG = os.path.join(SRC, 'configs', 'deepseek_v3', 'deepseek_v3_tiny.yaml')
CONV = os.path.join(SRC, 'configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert.yaml')
# TP2 PP2 EP2: stage 0 holds the embedding, stage 1 the output layer, the MTP block and its
# embedding copy; each vocabulary TP shard holds 512 rows (vocab 1000 padded to 1024).
LAYOUT = ['--tensor_model_parallel_size', '2', '--pipeline_model_parallel_size', '2', '--expert_parallel_size', '2',
          '--expert_tensor_parallel_size', '1', '--moe-grouped-gemm']

PASSED, FAILED = [], []


def check(name, fn, *args):
    try:
        fn(*args)
        PASSED.append(name)
        print('PASS', name, flush=True)
    except Exception:  # noqa: BLE001
        FAILED.append(name)
        print('FAIL', name, flush=True)
        traceback.print_exc()


def run(args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True)


def convert(src, out, extra=()):
    return run([CONVERT, '--load_platform', 'huggingface', '--save_platform', 'mcore', '--config_file', CFG,
                '--convert_file', CONV, '--load_ckpt_path', src, '--save_ckpt_path', out, '--safetensors',
                '--max_workers', '2', '-q'] + LAYOUT + list(extra))


def flip(d, key, row, col):
    """Changes one element of tensor `key` (2-D BF16) in place; returns its old and new bytes."""
    with open(os.path.join(d, 'model.safetensors.index.json')) as f:
        fn = json.load(f)['weight_map'][key]
    path = os.path.join(d, fn)
    with open(path, 'r+b') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        h = json.loads(f.read(n))[key]
        assert h['dtype'] == 'BF16', h
        rows, cols = h['shape']
        assert row < rows and col < cols
        off = 8 + n + h['data_offsets'][0] + (row * cols + col) * 2
        f.seek(off)
        old = f.read(2)
        new = bytes([old[0] ^ 0x40, old[1]])
        f.seek(off)
        f.write(new)
    return old, new


def rank_files(out):
    return sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs
                  if f == 'model_optim_rng.pt')


def done_list(out):
    p = os.path.join(out, '.ckbridge-run', 'done')
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [l.strip() for l in f if l.strip()]


def main():
    for p in (CONVERT, MAKE_TINY):
        if not os.path.exists(p):
            print('missing %s' % p)
            return 1
    work = tempfile.mkdtemp(prefix='ckb-mtp-copies-')
    try:
        run_all(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('%d passed, %d failed' % (len(PASSED), len(FAILED)))
    return 1 if FAILED else 0


def run_all(work):
    base = os.path.join(work, 'hf')
    r = run([MAKE_TINY, '--config_file', CFG, '--convert_file', CONV, '--out', base, '--dtype', 'fp8'])
    assert r.returncode == 0, r.stderr

    def intact():
        out = os.path.join(work, 'ok')
        r = convert(base, out)
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.path.exists(os.path.join(out, 'latest_checkpointed_iteration.txt'))
        assert len(rank_files(out)) == 2 * 2, rank_files(out)  # PP 2 x (EP 2 x ETP 1)
    check('unmodified MTP copies: the conversion succeeds', intact)

    # (copy, original, row, stage files that hold the original's rows: TP rank of the row)
    cases = [('model.layers.4.embed_tokens.weight', 'model.embed_tokens.weight', 700, 1),
             ('model.layers.4.shared_head.head.weight', 'lm_head.weight', 999, 1)]
    for copy_key, orig_key, row, tp_rank in cases:
        def tampered(copy_key=copy_key, orig_key=orig_key, row=row, tp_rank=tp_rank):
            tag = copy_key.split('.')[3]
            src = os.path.join(work, 'hf-' + tag)
            shutil.copytree(base, src)
            old, new = flip(src, copy_key, row, 5)
            assert old != new
            out = os.path.join(work, 'out-' + tag)
            for attempt in ('first run', 'rerun (resume)'):
                r = convert(src, out)
                assert r.returncode != 0, '%s: a differing %s was accepted' % (attempt, copy_key)
                msg = r.stderr
                assert copy_key in msg and orig_key in msg and 'differs' in msg, '%s: %s' % (attempt, msg)
                assert not os.path.exists(os.path.join(out, 'latest_checkpointed_iteration.txt')), attempt
                # rank files of TP rank `tp_rank` hold the changed row (stage 0: embedding; stage 1:
                # output layer and the MTP stage's embedding): none may be committed or marked done
                holding = [f for f in rank_files(out) + done_list(out) if '/mp_rank_%02d_' % tp_rank in f]
                if orig_key == 'lm_head.weight':
                    holding = [f for f in holding if '_001_' in f]
                assert not holding, '%s: files holding the changed row were committed: %s' % (attempt, holding)
            print('    -> %s' % msg.strip().splitlines()[-1])
            # the dry run plans without reading data: it succeeds and writes nothing
            dry = os.path.join(work, 'dry-' + tag)
            r = convert(src, dry, ['--dry-run'])
            assert r.returncode == 0 and 'plan:' in r.stdout and not os.path.exists(dry), r.stdout + r.stderr
        check('a differing %s (row %d) fails the conversion, naming both tensors; nothing holding it completes'
              % (copy_key, row), tampered)


if __name__ == '__main__':
    sys.exit(main())
