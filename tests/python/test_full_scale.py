"""The HF -> MCore planner at real scale, on sparse full-size checkpoints.

tests/tools/make_sparse_checkpoint.py writes DeepSeek-V3 671B (FP8, 688.6 GB of tensor data) and
Kimi K2 (1T) as sparse files: exact headers and index, data left as holes. ckbridge_convert
--dry-run plans LoongForge's example layouts on them; every rank file it lists (name, tensor count,
exact bytes) is checked against an expectation computed here, independently of the converter, from
the safetensors headers and LoongForge's rules (reference: loongforge-converter.md §4-§6):
  * PP stage layer counts: --custom_pipeline_layers, else Megatron/DeepSpeed partition_balanced
    (ported from its description), MTP layers added to the last virtual partition; DualPipeV's
    V-shaped virtual partition order;
  * rank files mp_rank_{t}_{p}_{e} from get_etp_map, each with the dense TP shard t of its stage's
    non-expert tensors and the experts of EP rank e (ETP shard et);
  * TP rules per tensor (rows, cols, replicated; q/kv down projections replicated for FP8 targets
    (fp8_ignore_tp); vocab padded to a multiple of 128 * TP), TE FP8 objects (data + scale_inv with
    columns padded to a multiple of 4), the MTP stage's embedding copy, _extra_state entries not
    counted (they are None).
The generator itself is checked against the published DeepSeek-V3 header dump's totals (91,991
tensors, 688,574,839,360 bytes; deepseek-v3-layout.md §2.4).
Also: the dry run must not read tensor data. Its wall time and memory are printed (not asserted:
no timing thresholds in tests; bench/ and README quote them).
`test_full_scale.py <part>` runs one part (PARTS; one ctest entry each, in parallel); the sparse
checkpoints are generated once per build directory (test_cache/, keyed by the generator's hash).
Exits non-zero on failure; the last line is "N passed, M failed".
"""
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get('CKB_SOURCE_DIR', os.path.join(HERE, '..', '..'))
BUILD = os.environ.get('CKB_BUILD_DIR', os.path.join(SRC, 'build'))
CONVERT = os.path.join(BUILD, 'examples', 'ckbridge_convert')
GEN = os.path.join(SRC, 'tests', 'tools', 'make_sparse_checkpoint.py')
CONV = os.path.join(SRC, 'configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert.yaml')
CFG = {'deepseek_v3': os.path.join(SRC, 'configs', 'deepseek_v3', 'deepseek_v3.yaml'),
       'kimi_k2': os.path.join(SRC, 'configs', 'deepseek_v3', 'kimi_k2.yaml')}

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


def cdiv(a, b):
    return -(-a // b)


SIZE = {'BF16': 2, 'F32': 4, 'F8_E4M3': 1}


# ----------------------------------------------------------------------------------- the source
def read_headers(d):
    """name -> (dtype, shape) from every safetensors header listed in the index."""
    with open(os.path.join(d, 'model.safetensors.index.json')) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
    out = {}
    for fn in files:
        with open(os.path.join(d, fn), 'rb') as f:
            n = struct.unpack('<Q', f.read(8))[0]
            h = json.loads(f.read(n))
        for k, v in h.items():
            if k != '__metadata__':
                out[k] = (v['dtype'], v['shape'])
    return out


class Hf:
    """The model as the headers describe it."""

    def __init__(self, hdr):
        self.h = hdr
        layers = {int(k.split('.')[2]) for k in hdr if k.startswith('model.layers.')}
        self.n_hf_layers = max(layers) + 1
        # MTP blocks: layers with an eh_proj; decoder layers are the others
        self.mtp_layers = sorted(L for L in layers if 'model.layers.%d.eh_proj.weight' % L in hdr)
        self.N = self.n_hf_layers - len(self.mtp_layers)
        self.E = self._experts()
        self.V, self.H = hdr['model.embed_tokens.weight'][1]

    def _experts(self):
        L = self.N - 1
        pre = 'model.layers.%d.mlp.experts.' % L
        return len({k[len(pre):].split('.')[0] for k in self.h if k.startswith(pre)})

    def is_moe(self, L):
        return 'model.layers.%d.mlp.gate.weight' % L in self.h

    def shape(self, k):
        return self.h[k][1]

    def bytes(self, k):
        dt, s = self.h[k]
        n = SIZE[dt]
        for d in s:
            n *= d
        return n


# ----------------------------------------------------------------------------------- LoongForge's rules
def partition_balanced(n, parts, eps=1e-3):
    """Megatron/DeepSpeed partition_balanced over unit weights (loongforge-converter.md §6.1.3)."""
    if n <= parts:
        return [1] * n + [0] * (parts - n)
    w = [i + 1 for i in range(n)]

    def bisect_left(x, lo, hi):
        while lo < hi:
            mid = (lo + hi) // 2
            if w[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def lprobe(b):
        p = [0] + [n] * parts
        bsum, cs = b, n // parts
        step = cs
        for q in range(1, parts):
            while step < n and w[step] < bsum:
                step += cs
            p[q] = bisect_left(bsum, step - cs, min(step, n))
            if p[q] == n:
                return p, (w[n - 1] - w[p[q - 1]]) < b
            bsum = w[p[q] - 1] + b
        return p, bsum >= w[n - 1]

    lower, upper = n / parts, float(n)
    while upper > lower + eps:
        mid = lower + (upper - lower) / 2
        if lprobe(mid)[1]:
            upper = mid
        else:
            lower = mid + eps
    p, ok = lprobe(upper)
    assert ok
    return [p[i + 1] - p[i] for i in range(parts)]


def stage_layers(L, N, n_mtp):
    """PP rank -> [(virtual stage s, [global layer ids])] (ids >= N are MTP blocks)."""
    pp, vpp = L['pp'], L.get('vpp', 1)
    counts = list(L['custom']) if L.get('custom') else partition_balanced(N, pp * vpp)
    counts[-1] += n_mtp
    out = {}
    for p in range(pp):
        for s in range(vpp):
            vp = (p if s == 0 else pp * s + (pp - 1 - p)) if L.get('dualpipev') else p + pp * s
            off = sum(counts[:vp])
            out.setdefault(p, []).append((s, list(range(off, off + counts[vp]))))
    return out


def etp_map(tp, ep, etp):
    """get_etp_map: etp_to_tp[e][et] (loongforge-converter.md §5.2)."""
    m = [[None] * etp for _ in range(ep)]
    for t in range(max(tp, etp * ep)):
        m[(t // etp) % ep][t % etp] = t % tp
    return m


def te_fp8_bytes(rows, cols):
    """A TE blockwise FP8 tensor: 1-byte data + F32 scale_inv [ceil(r/128), roundup4(ceil(c/128))]."""
    return rows * cols + cdiv(rows, 128) * (cdiv(cdiv(cols, 128), 4) * 4) * 4


def expected(hf, L):
    """rank file path -> (tensor count, bytes)."""
    tp, pp, ep, etp = L['tp'], L['pp'], L['ep'], L['etp']
    N, H, V, E = hf.N, hf.H, hf.V, hf.E
    per_ep = E // ep

    def fp8(key, rule, n, r=None):  # an FP8 HF weight cut by `rule` over n ranks -> TE object bytes
        rows, cols = hf.shape(key)
        if rule == 'rows':
            rows //= n
        elif rule == 'cols':
            cols //= n
        return te_fp8_bytes(rows, cols)

    def gateup(k1, k2, n):
        (r1, c), (r2, _) = hf.shape(k1), hf.shape(k2)
        return te_fp8_bytes((r1 + r2) // n, c)

    def layer(h, e):
        """(count, bytes) of one decoder layer (HF prefix h) in a file of EP rank e."""
        items = [hf.bytes(h + 'input_layernorm.weight'),
                 fp8(h + 'self_attn.q_a_proj.weight', 'repl', tp),  # fp8_ignore_tp
                 hf.bytes(h + 'self_attn.q_a_layernorm.weight'),
                 fp8(h + 'self_attn.q_b_proj.weight', 'rows', tp),
                 fp8(h + 'self_attn.kv_a_proj_with_mqa.weight', 'repl', tp),  # fp8_ignore_tp
                 hf.bytes(h + 'self_attn.kv_a_layernorm.weight'),
                 fp8(h + 'self_attn.kv_b_proj.weight', 'rows', tp),
                 fp8(h + 'self_attn.o_proj.weight', 'cols', tp),
                 hf.bytes(h + 'post_attention_layernorm.weight')]
        L_ = int(h.split('.')[2])
        if not hf.is_moe(L_):
            items += [gateup(h + 'mlp.gate_proj.weight', h + 'mlp.up_proj.weight', tp),
                      fp8(h + 'mlp.down_proj.weight', 'cols', tp)]
        else:
            s = h + 'mlp.shared_experts.'
            items += [hf.bytes(h + 'mlp.gate.weight'), hf.bytes(h + 'mlp.gate.e_score_correction_bias'),
                      gateup(s + 'gate_proj.weight', s + 'up_proj.weight', tp), fp8(s + 'down_proj.weight', 'cols', tp)]
            for g in range(e * per_ep, (e + 1) * per_ep):
                x = h + 'mlp.experts.%d.' % g
                items += [gateup(x + 'gate_proj.weight', x + 'up_proj.weight', etp),
                          fp8(x + 'down_proj.weight', 'cols', etp)]
        return len(items), sum(items)

    m = 128 * tp
    Vp = cdiv(V, m) * m
    emb = (Vp // tp) * H * SIZE[hf.h['model.embed_tokens.weight'][0]]
    head = (Vp // tp) * H * SIZE[hf.h['lm_head.weight'][0]]
    stages = stage_layers(L, N, len(hf.mtp_layers))
    emap = etp_map(tp, ep, etp)
    out = {}
    for p in range(pp):
        for e in range(ep):
            for et in range(etp):
                t = emap[e][et]
                n, b = 0, 0
                for s, ids in stages[p]:
                    if p == 0 and s == 0:
                        n, b = n + 1, b + emb
                    for g in ids:
                        if g < N:
                            c, x = layer('model.layers.%d.' % g, e)
                            n, b = n + c, b + x
                    if N - 1 in ids:
                        n, b = n + 2, b + hf.bytes('model.norm.weight') + head
                    for g in ids:
                        if g >= N:  # MTP block: embedding copy, enorm, hnorm, eh_proj, final norm, layer
                            h = 'model.layers.%d.' % g
                            rows, cols = hf.shape(h + 'eh_proj.weight')
                            # eh_proj stays BF16: ckbridge quantizes a BF16 source only with
                            # --convert_to_fp8 (LoongForge always quantizes it to FP8).
                            n += 5
                            b += emb + hf.bytes(h + 'enorm.weight') + hf.bytes(h + 'hnorm.weight') + \
                                (rows // tp) * cols * SIZE[hf.h[h + 'eh_proj.weight'][0]] + \
                                hf.bytes(h + 'shared_head.norm.weight')
                            c, x = layer(h, e)
                            n, b = n + c, b + x
                d = 'mp_rank_%02d' % t + ('_%03d' % p if pp > 1 else '') + ('_%03d' % e if ep > 1 else '')
                out['release/%s/model_optim_rng.pt' % d] = (n, b)
    return out


# ----------------------------------------------------------------------------------- runs
def flags(L):
    f = ['--tensor_model_parallel_size=%d' % L['tp'], '--pipeline_model_parallel_size=%d' % L['pp'],
         '--expert_parallel_size=%d' % L['ep'], '--expert_tensor_parallel_size=%d' % L['etp'], '--moe-grouped-gemm',
         '--max_workers=8']
    if L.get('custom'):
        f.append('--custom_pipeline_layers=' + ','.join(map(str, L['custom'])))
    if L.get('vpp'):
        f.append('--num-virtual-stages-per-pipeline-rank=%d' % L['vpp'])
    if L.get('dualpipev'):
        f.append('--vpp-scheduler=dualpipev')
    return f


LINE = re.compile(r'^\s+(\S+)\s+(\d+) tensors\s+[\d.]+ MB \((\d+) bytes\)$')


def dry_run(model, src, L, work):
    out = os.path.join(work, 'never-written')
    args = [CONVERT, '--load_platform=huggingface', '--save_platform=mcore', '--config_file=' + CFG[model],
            '--convert_file=' + CONV, '--load_ckpt_path=' + src, '--save_ckpt_path=' + out, '--safetensors',
            '--dry-run'] + flags(L)
    t0 = time.monotonic()
    r = subprocess.run(args, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise AssertionError('%s failed (%d):\n%s%s' % (' '.join(args), r.returncode, r.stdout, r.stderr))
    assert not os.path.exists(out), 'the dry run wrote %s' % out
    files = {}
    for line in r.stdout.splitlines():
        mt = LINE.match(line)
        if mt:
            files[mt.group(1)] = (int(mt.group(2)), int(mt.group(3)))
    mem = [l for l in r.stdout.splitlines() if l.startswith('memory')]
    print('    %s: %d files, %.1f s wall; %s' % (L['name'], len(files), wall, mem[0] if mem else '(no memory line)'))
    return files, r.stdout


def compare(files, want):
    assert set(files) == set(want), 'files: missing %s, unexpected %s' % (
        sorted(set(want) - set(files))[:5], sorted(set(files) - set(want))[:5])
    bad = [(f, files[f], want[f]) for f in sorted(want) if files[f] != want[f]]
    assert not bad, '%d of %d files differ (got (tensors, bytes), want): %s' % (len(bad), len(want), bad[:4])


DSV3_LAYOUTS = [
    # LoongForge's documented DeepSeek-V3 conversion (loongforge-converter.md §1.4, Appendix A)
    dict(name='TP8 PP8 EP32 ETP1 custom 8,7,8,8,8,8,8,6 grouped', tp=8, pp=8, ep=32, etp=1,
         custom=[8, 7, 8, 8, 8, 8, 8, 6]),
    # 16 stages: partition_balanced(61, 16)
    dict(name='TP8 PP16 EP64 ETP1 grouped', tp=8, pp=16, ep=64, etp=1),
    # DualPipeV: 2 virtual stages per rank in V order; rank 0 holds the first and the last chunk
    dict(name='TP8 PP8 VPP2 DualPipeV EP32 ETP1 grouped', tp=8, pp=8, vpp=2, dualpipev=True, ep=32, etp=1),
]
KIMI_LAYOUTS = [
    dict(name='Kimi K2 TP8 PP8 EP48 ETP1 grouped', tp=8, pp=8, ep=48, etp=1),
]


def main():
    if not os.path.exists(CONVERT):
        print('missing %s (build ckbridge_convert first)' % CONVERT)
        return 1
    part = sys.argv[1] if len(sys.argv) > 1 else None
    if part is not None and part not in PARTS:
        print('usage: test_full_scale.py [%s]' % '|'.join(sorted(PARTS)))
        return 2
    work = tempfile.mkdtemp(prefix='ckb-full-scale-')
    try:
        run_all(work, part)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('%d passed, %d failed' % (len(PASSED), len(FAILED)))
    return 1 if FAILED else 0


def generate(model, work):
    """The sparse checkpoint of `model`, made once per build directory: cached under
    $CKB_BUILD_DIR/test_cache, keyed by the generator's hash (the parts of this test share it)."""
    with open(GEN, 'rb') as f:
        key = hashlib.sha256(f.read()).hexdigest()[:16]
    cache = os.path.join(BUILD, 'test_cache')
    d = os.path.join(cache, 'sparse-%s-%s' % (model, key))
    if os.path.isdir(d):
        return d
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.sparse-%s-' % model, dir=cache)
    subprocess.run([sys.executable, GEN, '--model', model, '--out', os.path.join(tmp, 'ckpt')], check=True,
                   capture_output=True)
    try:
        os.rename(os.path.join(tmp, 'ckpt'), d)  # atomic; a part that finished first already put it there
    except OSError:
        if not os.path.isdir(d):
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    return d


# The test runs as ctest entries in parallel (tests/CMakeLists.txt), one per part: the models whose
# generator checks it runs and the layouts it plans. Without an argument every part runs.
PARTS = {'dsv3_a': (['deepseek_v3'], [('deepseek_v3', DSV3_LAYOUTS[0]), ('deepseek_v3', DSV3_LAYOUTS[1])]),
         'dsv3_b_kimi': (['deepseek_v3', 'kimi_k2'], [('deepseek_v3', DSV3_LAYOUTS[2]), ('kimi_k2', KIMI_LAYOUTS[0])])}
assert sorted(id(L) for p in PARTS.values() for _, L in p[1]) == sorted(id(L) for L in DSV3_LAYOUTS + KIMI_LAYOUTS)


def run_all(work, part=None):
    srcs = {}
    models = {m for p in ([part] if part else PARTS) for m in PARTS[p][0]}
    runs = [r for p in ([part] if part else PARTS) for r in PARTS[p][1]]

    def gen_dsv3():
        d = generate('deepseek_v3', work)
        hdr = read_headers(d)
        total = 0
        for dt, s in hdr.values():
            n = SIZE[dt]
            for x in s:
                n *= x
            total += n
        # the published header dump of deepseek-ai/DeepSeek-V3 (deepseek-v3-layout.md §2.4)
        assert len(hdr) == 91991, len(hdr)
        assert total == 688574839360, total
        with open(os.path.join(d, 'model.safetensors.index.json')) as f:
            assert json.load(f)['metadata']['total_size'] == total
        used = sum(os.stat(os.path.join(d, f)).st_blocks * 512 for f in os.listdir(d))
        assert used < 200e6, 'the sparse checkpoint uses %d bytes of disk' % used
        srcs['deepseek_v3'] = (d, Hf(hdr))
        print('    %d tensors, %d bytes of tensor data, %.1f MB on disk' % (len(hdr), total, used / 1e6))
    if 'deepseek_v3' in models:
        check('generator: DeepSeek-V3 671B sparse checkpoint matches the published totals', gen_dsv3)

    def gen_kimi():
        d = generate('kimi_k2', work)
        hf = Hf(read_headers(d))
        assert (hf.N, hf.E, hf.V, hf.mtp_layers) == (61, 384, 163840, []), (hf.N, hf.E, hf.V, hf.mtp_layers)
        params = 0
        for k, (dt, s) in hf.h.items():
            if not k.endswith('_scale_inv'):
                n = 1
                for x in s:
                    n *= x
                params += n
        assert 1.0e12 < params < 1.1e12, params  # "1T total parameters"
        srcs['kimi_k2'] = (d, hf)
        print('    %d tensors, %.4g parameters' % (len(hf.h), params))
    if 'kimi_k2' in models:
        check('generator: Kimi K2 sparse checkpoint (384 experts, 1T parameters)', gen_kimi)

    for model, L in runs:
        def one(model=model, L=L):
            if model not in srcs:
                raise AssertionError('no %s checkpoint (generator failed)' % model)
            d, hf = srcs[model]
            files, stdout = dry_run(model, d, L, work)
            want = expected(hf, L)
            compare(files, want)
            n = sum(v[0] for v in want.values())
            b = sum(v[1] for v in want.values())
            assert ('plan: %d output files, %d tensors' % (len(want), n)) in stdout, stdout[:400]
            assert ('output %.3f GB' % (b / 1e9)) in stdout, stdout[:400]
            print('    %d files, %d tensors, %d bytes' % (len(want), n, b))
        check('%s --dry-run: %s: every rank file, tensor count and byte count' % (model, L['name']), one)


if __name__ == '__main__':
    sys.exit(main())
