"""Reading MCore legacy checkpoints written by other programs: LoongForge's converter and Megatron-LM's
training loop, with and without layout flags.

For every layout of the round-trip matrix, the built-in tiny DeepSeek-V3 BF16 checkpoint is converted
HF -> MCore by ckbridge, then every rank file is rewritten by real torch (torch.load / torch.save, an
independent writer) into three fixtures:
  loongforge  args as LoongForge saves them: its own option names (expert_parallel_size,
              num_virtual_stages_per_pipeline_rank, custom_pipeline_layers as given or None, ...,
              no expert_model_parallel_size), top-level keys args / checkpoint_version / iteration /
              model*, every _extra_state None;
  megatron    a Megatron-LM training checkpoint: iter_0001234/ named by the tracker (and a stale
              iter_0000500/ beside it that must not be read), Megatron's args names with a torch
              dtype inside, optimizer / opt_param_scheduler / rng_state (numpy and torch RNG states) /
              num_floating_point_operations_so_far entries;
  noargs      no args at all: the layout must come from directory and tensor names alone.
Each fixture is converted MCore -> HF with no layout flag and (LoongForge's and Megatron-LM's) with the
layout's flags restated; every
HF output file must equal the source byte for byte. Then refusals: flags that contradict the
checkpoint (each message names the flag and the checkpoint fact), args that contradict the directory
names, and a path that is no checkpoint. Finally a model YAML without moe_router_topk converts a
4-expert model (a default the user never wrote is not validated), and --dry-run says where each
config.json value came from.
`test_mcore_interop.py a|b` runs one half (the two ctest entries, in parallel; see PARTS).
Exits non-zero on failure; the last line is "N passed, M failed".
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import traceback
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ckb_harness import CFG, CONV, CONVERT, FAILED, MAKE_TINY, PASSED, VERIFY, check  # noqa: E402,F401
import ckb_harness  # noqa: E402


def run(args, expect_ok=True):
    p = subprocess.run(args, capture_output=True, text=True)
    if expect_ok and p.returncode != 0:
        raise AssertionError('command failed (%d): %s\n%s%s' % (p.returncode, ' '.join(args), p.stdout, p.stderr))
    if not expect_ok and p.returncode == 0:
        raise AssertionError('command succeeded but should fail: %s\n%s' % (' '.join(args), p.stdout))
    return p


def convert(frm, to, src, dst, extra=(), expect_ok=True, cfg=CFG):
    return run([CONVERT, '--load_platform', frm, '--save_platform', to, '--config_file', cfg, '--convert_file', CONV,
                '--load_ckpt_path', src, '--save_ckpt_path', dst, '--safetensors', '--hf_max_shard_size', '4MB', '-q'] +
               list(extra), expect_ok)


# name, layout flags (as a user would give them to LoongForge), LoongForge's args for that layout
LAYOUTS = [
    ('tp2_pp2_ep2_etp1_grouped', ['--tensor_model_parallel_size', '2', '--pipeline_model_parallel_size', '2',
                                  '--expert_parallel_size', '2', '--expert_tensor_parallel_size', '1',
                                  '--moe-grouped-gemm']),
    ('tp1_ep4_sequential', ['--expert_parallel_size', '4']),
    ('tp2_pp2_custom_1_3', ['--tensor_model_parallel_size', '2', '--pipeline_model_parallel_size', '2',
                            '--custom_pipeline_layers', '1,3', '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    ('pp2_custom_3_1_ep4_sequential', ['--pipeline_model_parallel_size', '2', '--custom_pipeline_layers', '3,1',
                                       '--expert_parallel_size', '4']),
    ('tp2_ep2_etp2', ['--tensor_model_parallel_size', '2', '--expert_parallel_size', '2',
                      '--expert_tensor_parallel_size', '2', '--moe-grouped-gemm']),
    ('pp2_vpp2_ep2', ['--pipeline_model_parallel_size', '2', '--num-virtual-stages-per-pipeline-rank', '2',
                      '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    ('pp2_vpp2_dualpipev', ['--pipeline_model_parallel_size', '2', '--num-virtual-stages-per-pipeline-rank', '2',
                            '--vpp-scheduler', 'dualpipev', '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    ('pp2_layout_mtp_stage', ['--pipeline_model_parallel_size', '2', '--pipeline_model_parallel_layout', 'Ett|t|t|mL',
                              '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    ('first_last_dualpipev', ['--pipeline_model_parallel_size', '2', '--num-virtual-stages-per-pipeline-rank', '2',
                              '--vpp-scheduler', 'dualpipev', '--decoder-first-pipeline-num-layers', '2',
                              '--decoder-last-pipeline-num-layers', '2', '--expert_parallel_size', '2']),
    ('tp4_ep4_etp1', ['--tensor_model_parallel_size', '4', '--expert_parallel_size', '4',
                      '--expert_tensor_parallel_size', '1', '--moe-grouped-gemm']),
    ('tp4_ep2_etp2', ['--tensor_model_parallel_size', '4', '--expert_parallel_size', '2',
                      '--expert_tensor_parallel_size', '2', '--moe-grouped-gemm']),
    ('pp4', ['--pipeline_model_parallel_size', '4', '--expert_parallel_size', '1']),
    # LoongForge records the custom split it derives from a layout string next to it
    ('pp2_layout_t_tmL', ['--pipeline_model_parallel_size', '2', '--pipeline_model_parallel_layout', 'Et|t|t|tmL',
                          '--expert_parallel_size', '2', '--moe-grouped-gemm']),
    # an empty virtual partition: PP rank 1 has no model1 (neither LoongForge nor ckbridge writes one)
    ('dualpipev_last1', ['--pipeline_model_parallel_size', '2', '--num-virtual-stages-per-pipeline-rank', '2',
                         '--vpp-scheduler', 'dualpipev', '--decoder-last-pipeline-num-layers', '1',
                         '--expert_parallel_size', '2', '--moe-grouped-gemm']),
]


def flag_values(flags):
    """LoongForge's argparse view of the flags: dest name -> value (None when not given)."""
    p = argparse.ArgumentParser()
    p.add_argument('--tensor_model_parallel_size', type=int, default=1)
    p.add_argument('--pipeline_model_parallel_size', type=int, default=1)
    p.add_argument('--expert_parallel_size', type=int, default=None)
    p.add_argument('--expert_tensor_parallel_size', type=int, default=None)
    p.add_argument('--custom_pipeline_layers', default=None)
    p.add_argument('--pipeline_model_parallel_layout', default=None)
    p.add_argument('--num-virtual-stages-per-pipeline-rank', dest='num_virtual_stages_per_pipeline_rank', type=int,
                   default=None)
    p.add_argument('--vpp-scheduler', dest='vpp_scheduler', default=None)
    p.add_argument('--decoder-first-pipeline-num-layers', dest='decoder_first_pipeline_num_layers', type=int,
                   default=None)
    p.add_argument('--decoder-last-pipeline-num-layers', dest='decoder_last_pipeline_num_layers', type=int,
                   default=None)
    p.add_argument('--moe-grouped-gemm', dest='moe_grouped_gemm', action='store_true')
    return p.parse_args(flags)


def loongforge_args(flags):
    v = flag_values(flags)
    d = dict(  # the layout-related entries of LoongForge's Namespace (loongforge-observed.md) plus some others
        tensor_model_parallel_size=v.tensor_model_parallel_size,
        pipeline_model_parallel_size=v.pipeline_model_parallel_size,
        expert_parallel_size=v.expert_parallel_size,
        expert_tensor_parallel_size=v.expert_tensor_parallel_size,
        num_virtual_stages_per_pipeline_rank=v.num_virtual_stages_per_pipeline_rank,
        num_layers_per_virtual_pipeline_stage=None,
        custom_pipeline_layers=v.custom_pipeline_layers or (  # derived from a layout string, as LoongForge does
            ','.join(str(st.count('t')) for st in v.pipeline_model_parallel_layout.split('|'))
            if v.pipeline_model_parallel_layout else None),
        pipeline_model_parallel_layout=v.pipeline_model_parallel_layout,
        decoder_first_pipeline_num_layers=v.decoder_first_pipeline_num_layers,
        decoder_last_pipeline_num_layers=v.decoder_last_pipeline_num_layers,
        vpp_scheduler=v.vpp_scheduler,
        moe_grouped_gemm=v.moe_grouped_gemm,
        num_layers=4, hidden_size=320, ffn_hidden_size=512, num_attention_heads=4, num_key_value_heads=4,
        num_experts=8, mtp_num_layers=1, vocab_size=1000, make_vocab_size_divisible_by=128, pad_vocab_size_to=None,
        data_parallel_size=1, convert_to_fp8=False, fp8_force_no_requant=False, pretrain_as_fp8=False,
        fp8_quant_transfer_type='float32', load_platform='huggingface', save_platform='mcore',
        safetensors=True, max_workers=1, distributed_convert=False)
    return argparse.Namespace(**d)


def megatron_args(flags):
    v = flag_values(flags)
    vpp = v.num_virtual_stages_per_pipeline_rank
    d = dict(  # Megatron-LM's names (arguments.py), including a torch dtype as training runs save it
        num_layers=4, hidden_size=320, ffn_hidden_size=512, num_attention_heads=4, num_query_groups=4,
        tensor_model_parallel_size=v.tensor_model_parallel_size,
        pipeline_model_parallel_size=v.pipeline_model_parallel_size,
        expert_model_parallel_size=v.expert_parallel_size or 1,
        expert_tensor_parallel_size=v.expert_tensor_parallel_size or v.tensor_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp,
        num_layers_per_virtual_pipeline_stage=None,
        pipeline_model_parallel_layout=v.pipeline_model_parallel_layout,
        decoder_first_pipeline_num_layers=v.decoder_first_pipeline_num_layers,
        decoder_last_pipeline_num_layers=v.decoder_last_pipeline_num_layers,
        moe_grouped_gemm=v.moe_grouped_gemm, num_experts=8, mtp_num_layers=1,
        params_dtype=torch.bfloat16, bf16=True, fp16=False, padded_vocab_size=1024,
        max_position_embeddings=4096, make_vocab_size_divisible_by=128, seq_length=4096, micro_batch_size=1,
        global_batch_size=8, lr=3e-4, train_iters=2000, consumed_train_samples=9872, consumed_valid_samples=0,
        data_parallel_size=1, world_size=8, rank=0, use_distributed_optimizer=False, ckpt_format='torch',
        transformer_impl='transformer_engine', vocab_file=None, tokenizer_type='HuggingFaceTokenizer')
    if v.vpp_scheduler:  # a Megatron fork with DualPipeV records its scheduler as LoongForge does
        d['vpp_scheduler'] = v.vpp_scheduler
    return argparse.Namespace(**d)


def training_state(model):
    """Optimizer, scheduler and RNG entries of a Megatron-LM training checkpoint (legacy torch format)."""
    state, group = {}, []
    for i, (k, t) in enumerate(model.items()):
        if t is None or not torch.is_tensor(t) or k.endswith('_extra_state'):
            continue
        state[i] = {'exp_avg': torch.zeros(t.shape, dtype=torch.float32), 'step': torch.tensor(1234.0)}
        group.append(i)
        if len(group) >= 4:
            break
    opt = {'optimizer': {'state': state, 'param_groups': [{'lr': 3e-4, 'betas': (0.9, 0.95), 'eps': 1e-8,
                                                           'weight_decay': 0.1, 'params': group}]},
           'fp32_from_fp16_params': [[torch.zeros(3, dtype=torch.float32)]]}
    sched = {'max_lr': 3e-4, 'min_lr': 3e-5, 'lr_warmup_steps': 100, 'num_steps': 9872, 'lr_decay_style': 'cosine'}
    np_state = np.random.RandomState(7).get_state()
    rng = [{'random_rng_state': (3, tuple(range(5)), None), 'np_rng_state': np_state,
            'torch_rng_state': torch.get_rng_state(), 'cuda_rng_state': torch.zeros(16, dtype=torch.uint8),
            'rng_tracker_states': {'model-parallel-rng': torch.zeros(16, dtype=torch.uint8)}}]
    return opt, sched, rng


def load_ranks(mcore_root):
    """torch.load of every rank file of ckbridge's MCore output (release/): [(path, state dict)], read once
    for the three fixtures written from it."""
    files = sorted(glob.glob(os.path.join(mcore_root, 'release', 'mp_rank_*', 'model_optim_rng.pt')))
    assert files, 'no rank files under ' + mcore_root
    return [(f, torch.load(f, map_location='cpu')) for f in files]


def rewrite(ranks, out_root, style, flags):
    """Rewrites ckbridge's MCore output (load_ranks) as LoongForge or Megatron-LM would have saved it."""
    it_dir = 'release' if style != 'megatron' else 'iter_0001234'
    for f, sd in ranks:
        models = [k for k in sd if k == 'model' or re.fullmatch(r'model\d+', k)]
        out = {}
        if style == 'loongforge':
            out['args'] = loongforge_args(flags)
        elif style == 'megatron':
            out['args'] = megatron_args(flags)
        out['checkpoint_version'] = 3.0
        out['iteration'] = 1234 if style == 'megatron' else 0
        for k in models:
            m = sd[k]
            out[k] = {n: (None if n.endswith('_extra_state') and style == 'loongforge' else t) for n, t in m.items()}
        if style == 'megatron':
            opt, sched, rng = training_state(out[models[0]])
            out['optimizer'] = opt
            out['opt_param_scheduler'] = sched
            out['rng_state'] = rng
            out['num_floating_point_operations_so_far'] = 1.25e18
        rank_dir = os.path.basename(os.path.dirname(f))
        dst = os.path.join(out_root, it_dir, rank_dir)
        os.makedirs(dst, exist_ok=True)
        torch.save(out, os.path.join(dst, 'model_optim_rng.pt'))
    with open(os.path.join(out_root, 'latest_checkpointed_iteration.txt'), 'w') as t:
        t.write('release' if style != 'megatron' else '1234')
    if style == 'megatron':  # an older iteration the tracker does not name: never read (it is damaged)
        stale = os.path.join(out_root, 'iter_0000500', 'mp_rank_00')
        os.makedirs(stale, exist_ok=True)
        with open(os.path.join(stale, 'model_optim_rng.pt'), 'wb') as g:
            g.write(b'not a checkpoint')


def same_files(src_hf, out_hf):
    names = sorted(os.listdir(src_hf))
    assert names, src_hf
    for n in names:
        with open(os.path.join(src_hf, n), 'rb') as a, open(os.path.join(out_hf, n), 'rb') as b:
            assert a.read() == b.read(), '%s differs from the source' % n
    extra = set(os.listdir(out_hf)) - set(names) - {'latest_checkpointed_iteration.txt', 'ckbridge-manifest.json'}
    assert not extra, 'unexpected output files %s' % sorted(extra)


def read_back(src_hf, fixture, out, flags, path_form):
    path = fixture
    if path_form == 'iteration':
        path = [d for d in glob.glob(os.path.join(fixture, '*')) if os.path.basename(d) in ('release', 'iter_0001234')][0]
    p = convert('mcore', 'huggingface', path, out, flags)
    same_files(src_hf, out)
    return p


def expect_refusal(fixture, out, flags, *needles):
    p = convert('mcore', 'huggingface', fixture, out, flags, expect_ok=False)
    for n in needles:
        assert n in p.stderr, 'message lacks %r:\n%s' % (n, p.stderr)
    assert not os.path.exists(os.path.join(out, 'config.json')), 'output written by a refused run'


# The test runs as two ctest entries (tests/CMakeLists.txt) that run in parallel: part a, the first
# half of the layouts and the refusals (which read fixtures of those layouts); part b, the second half
# and the config-value checks. Without an argument both parts run.
PARTS = {'a': LAYOUTS[:7], 'b': LAYOUTS[7:]}
assert {n for n, _ in PARTS['a']} >= {'tp2_pp2_ep2_etp1_grouped', 'tp2_pp2_custom_1_3', 'pp2_vpp2_ep2',
                                      'tp1_ep4_sequential', 'tp2_ep2_etp2'}, 'the refusals read these fixtures'
PART = None


def run_all(work):
    hf = os.path.join(work, 'hf_bf16')
    run([MAKE_TINY, '--config_file', CFG, '--convert_file', CONV, '--out', hf, '--dtype', 'bf16'])
    for name, flags in (PARTS[PART] if PART else LAYOUTS):
        mc = os.path.join(work, name, 'ckbridge')
        try:
            convert('huggingface', 'mcore', hf, mc, flags + ['--max_workers', '2'])
        except AssertionError:
            FAILED.append(name + ': HF -> MCore')
            traceback.print_exc()
            continue
        try:
            ranks = load_ranks(mc)
        except Exception:  # noqa: BLE001
            FAILED.append(name + ': torch.load of the rank files')
            traceback.print_exc()
            continue
        for style in ('loongforge', 'megatron', 'noargs'):
            fx = os.path.join(work, name, style)
            check('%s/%s: fixture written by torch.save' % (name, style), rewrite, ranks, fx, style, flags)
            check('%s/%s: MCore -> HF without layout flags, byte-identical' % (name, style), read_back, hf, fx,
                  os.path.join(work, name, style + '_hf'), [], 'root')
            if style == 'noargs':  # flags vs the files alone: covered by the refusals below
                continue
            check('%s/%s: MCore -> HF with the layout flags restated, byte-identical' % (name, style), read_back, hf,
                  fx, os.path.join(work, name, style + '_hf_flags'), flags,
                  'iteration' if style == 'megatron' else 'root')

    if PART in (None, 'a'):
        refusal_checks(work, hf)
    if PART in (None, 'b'):
        config_value_checks(work)


def refusal_checks(work, hf):
    def training_note():
        fx = os.path.join(work, 'tp2_pp2_ep2_etp1_grouped', 'megatron')
        p = read_back(hf, fx, os.path.join(work, 'note_hf'), [], 'root')
        assert re.search(r'note: .*skipping the entries that are not weights \(optimizer, opt_param_scheduler, '
                         r'rng_state, num_floating_point_operations_so_far\)', p.stderr), p.stderr
        assert p.stderr.count('skipping the entries') == 1, p.stderr
    check('megatron training checkpoint: one note names the skipped entries', training_note)

    lf = os.path.join(work, 'tp2_pp2_ep2_etp1_grouped', 'loongforge')
    refusals = [
        ('EP flag', lf, ['--expert_parallel_size', '4'], ['--expert_parallel_size 4', 'give EP 2', 'mp_rank_00_000_000']),
        ('TP flag', lf, ['--tensor_model_parallel_size', '4'], ['--tensor_model_parallel_size 4', 'give TP 2']),
        ('PP flag', lf, ['--pipeline_model_parallel_size', '1'], ['--pipeline_model_parallel_size 1', 'give PP 2']),
        ('custom split flag', os.path.join(work, 'tp2_pp2_custom_1_3', 'noargs'), ['--custom_pipeline_layers', '2,2'],
         ['the pipeline flags', '[2,2]', '[1,3]']),
        ('VPP flag', os.path.join(work, 'pp2_vpp2_ep2', 'noargs'), ['--num-virtual-stages-per-pipeline-rank', '1'],
         ['--num-virtual-stages-per-pipeline-rank 1', '2 model chunks']),
        ('dualpipev flag on a standard checkpoint', os.path.join(work, 'pp2_vpp2_ep2', 'noargs'),
         ['--vpp-scheduler', 'dualpipev', '--num-virtual-stages-per-pipeline-rank', '2'], ['DualPipeV', 'standard']),
        ('grouped flag on sequential experts', os.path.join(work, 'tp1_ep4_sequential', 'loongforge'),
         ['--moe-grouped-gemm'], ['--moe-grouped-gemm', 'sequential']),
        ('ETP flag', os.path.join(work, 'tp2_ep2_etp2', 'noargs'), ['--expert_tensor_parallel_size', '1'],
         ['--expert_tensor_parallel_size 1', 'give ETP 2', 'columns of moe_ffn_hidden_size 256']),
    ]
    for i, (what, fx, flags, needles) in enumerate(refusals):
        check('refused: %s contradicting the checkpoint' % what, expect_refusal, fx, os.path.join(work, 'ref%d' % i),
              flags, *needles)

    def args_contradict_dirs():
        fx = os.path.join(work, 'args_tp_wrong')
        shutil.copytree(lf, fx)
        for f in glob.glob(os.path.join(fx, 'release', '*', 'model_optim_rng.pt')):
            sd = torch.load(f)
            sd['args'].tensor_model_parallel_size = 4
            torch.save(sd, f)
        expect_refusal(fx, os.path.join(work, 'ref_args'), [], 'give TP 2', 'args.tensor_model_parallel_size',
                       'is 4')
    check('refused: args that contradict the rank directory names (both named)', args_contradict_dirs)

    def args_contradict_names_ep():
        fx = os.path.join(work, 'args_ep_wrong')
        shutil.copytree(os.path.join(work, 'tp2_ep2_etp2', 'loongforge'), fx)
        for f in glob.glob(os.path.join(fx, 'release', '*', 'model_optim_rng.pt')):
            sd = torch.load(f)
            sd['args'].expert_parallel_size = 1
            torch.save(sd, f)
        expect_refusal(fx, os.path.join(work, 'ref_args_ep'), [], 'EP ranks', 'args.expert_parallel_size', 'is 1')
    check('refused: args.expert_parallel_size contradicting mp_rank_TT_EEE tensors (both named)',
          args_contradict_names_ep)

    def not_a_checkpoint():
        d = os.path.join(work, 'empty_dir')
        os.makedirs(d, exist_ok=True)
        expect_refusal(d, os.path.join(work, 'ref_empty'), [], 'not a Megatron legacy checkpoint', 'empty_dir')
    check('refused: a directory that is no checkpoint, named', not_a_checkpoint)



def config_value_checks(work):
    # ---- config values: a 4-expert model whose YAML has no moe_router_* keys
    def four_experts_without_router_keys():
        cfg4 = os.path.join(work, 'tiny_4_experts.yaml')
        with open(CFG) as f:
            text = f.read()
        text = text.replace('num_experts: 8', 'num_experts: 4')
        text = '\n'.join(line for line in text.splitlines() if not line.startswith('moe_router_')) + '\n'
        assert 'moe_router_topk' not in text
        with open(cfg4, 'w') as f:
            f.write(text)
        hf4 = os.path.join(work, 'hf4')
        run([MAKE_TINY, '--config_file', cfg4, '--convert_file', CONV, '--out', hf4, '--dtype', 'bf16'])
        mc4 = os.path.join(work, 'mc4')
        convert('huggingface', 'mcore', hf4, mc4, ['--expert_parallel_size', '2'], cfg=cfg4)
        back = os.path.join(work, 'hf4_back')
        convert('mcore', 'huggingface', mc4, back, [], cfg=cfg4)
        same_files(hf4, back)
        import json
        with open(os.path.join(hf4, 'config.json')) as f:
            cj = json.load(f)
        # documented defaults (docs/loongforge-deviations.md): top-k min(8, E), groups 8 if they divide E else 1
        assert (cj['num_experts_per_tok'], cj['n_group'], cj['topk_group']) == (4, 1, 1), cj
        p = convert('mcore', 'huggingface', mc4, os.path.join(work, 'hf4_dry'), ['--dry-run'], cfg=cfg4)
        lines = {m.group(1): m.group(2) for m in re.finditer(r'config\.json (\S+)\s+from (.*)', p.stdout)}
        assert set(lines) == set(cj), sorted(set(lines) ^ set(cj))
        assert lines['num_experts_per_tok'] == "ckbridge's default for moe_router_topk", lines
        assert lines['hidden_size'] == cfg4, lines
        assert lines['rope_theta'] == cfg4, lines
        assert lines['torch_dtype'].startswith('the conversion'), lines
        # an official HF config.json supplies the output-only values
        hfc = os.path.join(work, 'official_config.json')
        cj2 = dict(cj, num_experts_per_tok=3, rope_theta=50000.0)
        with open(hfc, 'w') as f:
            json.dump(cj2, f)
        out = os.path.join(work, 'hf4_official')
        p = convert('mcore', 'huggingface', mc4, out, ['--hf_config_file', hfc], cfg=cfg4)
        with open(os.path.join(out, 'config.json')) as f:
            cj3 = json.load(f)
        assert cj3['num_experts_per_tok'] == 3 and cj3['rope_theta'] == 50000.0, cj3
        assert {k: v for k, v in cj3.items() if k not in ('num_experts_per_tok', 'rope_theta')} == \
            {k: v for k, v in cj.items() if k not in ('num_experts_per_tok', 'rope_theta')}
        # a value the user did write is still validated
        bad = os.path.join(work, 'tiny_4_bad.yaml')
        with open(bad, 'w') as f:
            f.write(text + 'moe_router_topk: 8\n')
        p = convert('huggingface', 'mcore', hf4, os.path.join(work, 'mc4_bad'), ['--expert_parallel_size', '2'],
                    expect_ok=False, cfg=bad)
        assert "moe_router_topk" in p.stderr and 'num_experts = 4' in p.stderr, p.stderr
    check('a model YAML without moe_router_* converts a 4-expert model; --dry-run names each config.json '
          'value\'s source; --hf_config_file supplies output-only values; a written topk is validated',
          four_experts_without_router_keys)


def main():
    global PART
    if len(sys.argv) > 1:
        if sys.argv[1] not in PARTS:
            print('usage: test_mcore_interop.py [%s]' % '|'.join(sorted(PARTS)))
            return 2
        PART = sys.argv[1]
    return ckb_harness.main(run_all, (CONVERT, MAKE_TINY), 'ckb_mcore_interop_')


if __name__ == '__main__':
    sys.exit(main())
