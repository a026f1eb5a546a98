"""Manual check (not in CI): transformers loads each family's tiny HF checkpoint written by
tests/python/ckb_families.py and runs a forward pass. Needs torch and transformers (>= 5).

    python tests/interop/hf_families_forward.py DIR...     (each DIR written by ckb_families.py)

Loads with AutoModelForCausalLM.from_pretrained (the class must be the config's architecture) and
prints per checkpoint: the class used, missing / unexpected / mismatched keys, and the logits'
shape and whether they are finite. MiMo (remote code upstream) is loaded as Qwen2ForCausalLM, which
has no MTP module (its model.mtp_layers.* keys are then the expected unexpected keys); Kimi K2 (HF
names under `language_model.`, as LoongForge's YAMLs say) as DeepseekV3ForCausalLM with that
prefix removed from the names."""
import json
import os
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file


def load_dir(d):
    with open(os.path.join(d, 'config.json')) as f:
        cfg = json.load(f)
    arch, note = cfg['architectures'][0], ''
    src = d
    if cfg['model_type'] == 'mimo':
        cfg = dict(cfg, model_type='qwen2', architectures=['Qwen2ForCausalLM'])
        cfg.pop('auto_map', None)
        arch, note = 'Qwen2ForCausalLM', 'MiMo as Qwen2 (no MTP module)'
    if cfg['model_type'] == 'kimi_k2':
        cfg = dict(cfg, model_type='deepseek_v3')
        note = 'Kimi K2 as DeepseekV3, language_model. prefix removed'
    tmp = tempfile.mkdtemp()
    sd = {}
    for n in sorted(os.listdir(src)):
        if n.endswith('.safetensors'):
            for k, v in load_file(os.path.join(src, n)).items():
                sd[k[len('language_model.'):] if k.startswith('language_model.') else k] = v
    save_file(sd, os.path.join(tmp, 'model.safetensors'), metadata={'format': 'pt'})
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
        json.dump(cfg, f)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp, output_loading_info=True,
                                                                    dtype=torch.float32)
    assert type(model).__name__ == arch, (type(model).__name__, arch)
    model.eval()
    ids = torch.arange(0, 16).reshape(1, 16) % cfg['vocab_size']
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == cfg['tie_word_embeddings'], ('tied', tied, cfg['tie_word_embeddings'])
    rope = getattr(model.config, 'rope_parameters', None) or {}
    note = ('tied, ' if tied else '') + 'rope %s' % rope.get('rope_type', '?') + (', ' + note if note else '')
    return arch, note, info, logits


def main():
    ok = True
    print('transformers', transformers.__version__, 'torch', torch.__version__)
    for d in sys.argv[1:]:
        try:
            arch, note, info, logits = load_dir(d)
            missing, unexpected = info['missing_keys'], info['unexpected_keys']
            mism = info.get('mismatched_keys', [])
            fine = bool(torch.isfinite(logits).all())
            print('%-28s %-24s missing %d unexpected %d mismatched %d logits %s finite %s %s' % (
                os.path.basename(d.rstrip('/')), arch, len(missing), len(unexpected), len(mism),
                tuple(logits.shape), fine, note))
            if missing or mism:
                print('   missing', sorted(missing)[:8], 'mismatched', mism[:4])
            if unexpected:
                print('   unexpected', sorted(unexpected)[:6], '...' if len(unexpected) > 6 else '')
            ok = ok and fine and not missing and not mism
        except Exception as e:  # noqa: BLE001
            ok = False
            print('%-28s FAILED: %s' % (os.path.basename(d.rstrip('/')), e))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
