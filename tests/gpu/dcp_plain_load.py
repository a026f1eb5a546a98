"""torch.distributed.checkpoint (real torch, no process group) loads ckbridge's torch_dist output
into plain tensors; each must equal the same model's legacy TP1 output of ckbridge (whose tensors CI
checks against numpy over the HF source), routed experts unstacked, decoder layers unstacked when the
model's layers are stacked. Run after tests/gpu/families_gpu.py, over its work directory:

    python tests/gpu/dcp_plain_load.py WORK family [family ...]

Prints one line per family and exits non-zero if a tensor differs or is not covered.
"""
import os
import re
import sys

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader


def check(work, fam):
    td = os.path.join(work, fam, 'torch_dist', 'release')
    leg = os.path.join(work, fam, 'mcore', 'release', 'mp_rank_00', 'model_optim_rng.pt')
    md = FileSystemReader(td).read_metadata()
    sd = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype)
          for k, v in md.state_dict_metadata.items() if hasattr(v, 'properties')}
    dcp.load(sd, storage_reader=FileSystemReader(td), no_dist=True)
    legacy = {k: v for k, v in torch.load(leg, weights_only=False, map_location='cpu')['model'].items()
              if isinstance(v, torch.Tensor)}
    ok, bad, used = 0, [], set()

    def cmp(lk, t):
        nonlocal ok
        used.add(lk)
        if lk in legacy and legacy[lk].shape == t.shape and torch.equal(legacy[lk], t):
            ok += 1
        else:
            bad.append(lk)

    for k, t in sd.items():
        layers = [(k, t)]
        m = re.match(r'decoder\.layers\.([^0-9].*)', k)
        if m:  # stacked decoder layers (homogeneous model)
            layers = [('decoder.layers.%d.%s' % (i, m.group(1)), t[i]) for i in range(t.shape[0])]
        for lk, lt in layers:
            e = re.match(r'(.*)\.experts\.experts\.(.*)', lk)
            if e:
                for x in range(lt.shape[0]):
                    cmp('%s.experts.local_experts.%d.%s' % (e.group(1), x, e.group(2)), lt[x])
            else:
                cmp(lk, lt)
    missing = sorted(set(legacy) - used)
    print('%-18s torch %s: dcp.load of %d torch_dist tensors -> %d legacy tensors equal, %d differ %s, %d not covered %s'
          % (fam, torch.__version__, len(sd), ok, len(bad), bad[:3], len(missing), missing[:3]))
    return not bad and not missing


if __name__ == '__main__':
    results = [check(sys.argv[1], f) for f in sys.argv[2:]]
    sys.exit(0 if results and all(results) else 1)
