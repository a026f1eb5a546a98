"""Manual end-to-end check of ckbridge's torch_dist output with real Megatron-Core (CPU is enough).
NOT run in CI (needs megatron-core, transformers and a recent torch; versions as in
make_torch_dist_fixtures.py).

    python tests/tools/check_torch_dist_forward.py BUILD_DIR WORK_DIR

1. builds the tiny DeepSeek-V3 HF model of tests/gpu/gpu_proof.py (transformers, BF16 weights,
   MTP layer) and its reference logits (fp32, transformers);
2. converts HF -> torch_dist with ckbridge_convert --ckpt_format torch_dist (local spec names);
3. tests/gpu/mcore_forward.py builds Megatron-Core's GPTModel (local spec, fp32), loads the
   checkpoint with dist_checkpointing.load and runs one forward pass;
4. the same for ckbridge's legacy (torch, tp1) output of the same HF model, loaded the legacy way;
5. PASS: 0 missing / 0 unexpected keys and the torch_dist logits bit-identical to the legacy ones;
   the distance to transformers' logits is printed against the 1e-5 bar (met on GPUs by
   tests/gpu/gpu_proof.py; a CPU run differs by ~1e-4 for both formats). Runs on CUDA when visible.
"""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'gpu'))
import gpu_proof as gp  # noqa: E402


def main():
    build, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    d = gp.read_dims(os.path.join(ROOT, gp.MODEL_YAML))
    import json
    json.dump(d, open(os.path.join(work, 'dims.json'), 'w'))
    cfg, model, mtp, _, _ = gp.build_hf(work, d, 1234)
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, d['vocab_size'], (2, 24), generator=gen)
    torch.save(ids, os.path.join(work, 'ids.pt'))
    # CUDA when visible (the 1e-5 bar of tests/gpu/gpu_proof.py), else the CPU
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ref_main, ref_mtp = gp.hf_logits(model, mtp, ids, dev)
    conv = gp.Converter(os.path.join(build, 'examples'), work, False)
    dst = os.path.join(work, 'torch_dist')
    log = conv(os.path.join(work, 'hf_bf16'), dst, 'huggingface', 'mcore', gp.CONVERT_LOCAL, ['--ckpt_format', 'torch_dist'])
    print(log.strip().splitlines()[-2] if log.strip() else '')
    leg = os.path.join(work, 'legacy')
    conv(os.path.join(work, 'hf_bf16'), leg, 'huggingface', 'mcore', gp.CONVERT_LOCAL, [])

    def forward(ckpt, out):
        env = dict(os.environ) if dev == 'cuda' else dict(os.environ, CUDA_VISIBLE_DEVICES='')
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1',
               os.path.join(ROOT, 'tests', 'gpu', 'mcore_forward.py'), '--ckpt', ckpt, '--dims',
               os.path.join(work, 'dims.json'), '--inputs', os.path.join(work, 'ids.pt'), '--out', out]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print((r.stdout + r.stderr)[-4000:])
            raise SystemExit(1)
        return torch.load(out, weights_only=False)
    res = forward(dst, os.path.join(work, 'mcore_out.pt'))
    lres = forward(leg, os.path.join(work, 'mcore_out_legacy.pt'))
    same = torch.equal(res['main'], lres['main']) and torch.equal(res['mtp'], lres['mtp'])
    V = d['vocab_size']
    dm = float((res['main'][..., :V] - ref_main).abs().max())
    dt = float((res['mtp'][..., :V][:, :-1] - ref_mtp[:, :-1]).abs().max())
    missing = sorted({k for rk in res['ranks'] for k in rk['missing']})
    unexpected = sorted({k for rk in res['ranks'] for k in rk['unexpected']})
    print('torch_dist -> Megatron-Core GPTModel (local spec, ' + dev + '): main logits max abs diff %.3g (|ref| max %.3g), '
          'MTP %.3g; missing %d, unexpected %d %s' % (dm, float(ref_main.abs().max()), dt, len(missing), len(unexpected),
                                                     (missing + unexpected)[:6]))
    print('torch_dist logits bit-identical to the legacy checkpoint\'s: %s; within %g of transformers: %s' % (
        same, gp.LOGIT_TOL, dm <= gp.LOGIT_TOL and dt <= gp.LOGIT_TOL))
    ok = same and not missing and not unexpected
    print('PASS' if ok else 'FAIL')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
