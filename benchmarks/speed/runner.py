"""Build the models of a benchmark run and time the step kinds on them.

Step kinds:

* ``plain``: synthesis with L_CL + L_TV (method 'base');
* ``ihc``: MimiQ synthesis, L_IHC + L_CL + L_TV (method 'mimiq');
* ``psaq``: PSAQ-ViT synthesis, patch-similarity entropy + L_CL + L_TV (method 'psaq');
* ``kd``: fine-tuning the quantized student with L_KL only;
* ``kd_had``: fine-tuning with L_KL + γ·L_HAD;
* ``gdfq``, ``qimera``, ``adadfq``: one fine-tuning iteration of these baselines (a generator
  update, then the student's L_KL step);
* ``psaq_v2``: one of PSAQ-ViT V2 (a sample update against teacher-student agreement, then the
  student's L_KL step).

Ratios are step-time ratios: ``ihc`` and ``psaq`` against ``plain``, ``kd_had`` and the baselines'
iterations against ``kd``. The generator kinds also record the median time of each part
(``split``: the generator's or samples' update, the student's step).
"""
import gc
import json
import os
import os.path as osp

import torch
from mmengine.utils import to_2tuple

from mimiq_mm import synthesis
from mimiq_mm.apis import init_model, load_config
from mimiq_mm.losses.ihc_cpu import kernel_state
from mimiq_mm.utils.environment import environment
from mimiq_mm.utils.tables import console_table
from mimiq_mm.utils.timing import time_calls

from .steps import AMP_NAMES, DistillStep, GeneratorStep, SynthesisStep

STEP_KINDS = ('plain', 'ihc', 'psaq', 'kd', 'kd_had', 'gdfq', 'qimera', 'adadfq', 'psaq_v2')
SYNTHESIS_METHODS = {'plain': 'base', 'ihc': 'mimiq', 'psaq': 'psaq'}
# the baselines' per-iteration data steps, with the networks and step counts of their configs/deit
# recipes (Qimera mixes 2 classes here so that any teacher has enough; the cost barely depends on it)
GENERATOR_STEPS = {
    'gdfq': dict(type='mimiq_mm.GDFQGenerator', latent_dim=100, conditioning='conditional_bn'),
    'qimera': dict(type='mimiq_mm.QimeraGenerator', superpose_prob=0.4, superpose_classes=2, embed_init='classifier',
                   disentangle=True, intermediate_dim=100, conditioning='conditional_bn'),
    'adadfq': dict(type='mimiq_mm.AdaDFQGenerator', latent_dim=100, conditioning='conditional_bn'),
    'psaq_v2': dict(type='mimiq_mm.PSAQV2SampleStep', steps=1),
}
BASELINE = dict({'plain': None, 'ihc': 'plain', 'psaq': 'plain', 'kd': None, 'kd_had': 'kd'},
                **{kind: 'kd' for kind in GENERATOR_STEPS})
DESCRIPTIONS = {
    'plain': 'synthesis L_CL+L_TV (base)',
    'ihc': 'synthesis L_IHC+L_CL+L_TV (mimiq)',
    'psaq': 'synthesis PSAQ+L_CL+L_TV',
    'kd': 'QAT step L_KL',
    'kd_had': 'QAT step L_KL+L_HAD',
    'gdfq': 'GDFQ iteration: generator update + QAT step L_KL',
    'qimera': 'Qimera iteration: generator update + QAT step L_KL',
    'adadfq': 'AdaDFQ iteration: generator update + QAT step L_KL',
    'psaq_v2': 'PSAQ-ViT V2 iteration: sample update + QAT step L_KL',
}
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
DEFAULT_HAD = dict(metric='dssim', loss_weight=10.0)


class BenchmarkSetup:
    """What one run times: a QuantDistiller (teacher + student), its synthesis options and names."""

    def __init__(self, distiller, image_size, num_classes, synthesis, had, name):
        self.distiller = distiller
        self.image_size = tuple(image_size)
        self.num_classes = int(num_classes)
        self.synthesis = synthesis
        self.had = had
        self.name = name


def timm_config(model_name, img_size=224, num_classes=1000, timm_kwargs=None, w_bits=4, a_bits=4,
                act_method='minmax'):
    """A mimiq_mm config (as a Config) quantizing a timm model through mmpretrain's TimmClassifier,
    as ``configs/timm`` does, with random teacher weights."""
    from mmengine.config import Config
    size = tuple(to_2tuple(img_size))
    kwargs = dict(timm_kwargs or {})
    kwargs.setdefault('img_size', size[0] if size[0] == size[1] else size)
    architecture = dict(type='mmpretrain.TimmClassifier', model_name=model_name, pretrained=False,
                        num_classes=num_classes, **kwargs)
    preprocessor = dict(type='mmpretrain.ClsDataPreprocessor', mean=IMAGENET_MEAN, std=IMAGENET_STD, to_rgb=True)
    return Config(dict(
        default_scope='mmpretrain',
        model=dict(type='mimiq_mm.QuantDistiller', architecture=architecture, data_preprocessor=preprocessor,
                   quant=dict(w_bits=w_bits, a_bits=a_bits, act_method=act_method), allow_random_teacher=True),
        train_cfg=dict(synthesis=dict(image_size=list(size), num_classes=num_classes)),
        name=model_name))


def setup_from_config(config, cfg_options=None, img_size=None, w_bits=None, a_bits=None, had=None):
    """The config's QuantDistiller (``model``, random teacher weights: speed does not depend on
    them) and synthesis options (``train_cfg.synthesis``), built by :func:`mimiq_mm.apis.init_model`."""
    options = dict(cfg_options or {})
    options.update({'model.teacher_checkpoint': None, 'model.allow_random_teacher': True})
    options.update({f'model.quant.{k}': v for k, v in dict(w_bits=w_bits, a_bits=a_bits).items() if v is not None})
    if img_size is not None:
        options['train_cfg.synthesis.image_size'] = list(to_2tuple(img_size))
    cfg = load_config(config, options)
    distiller = init_model(cfg, part='model')
    synthesis = dict(cfg.get('train_cfg', {}).get('synthesis', {}) or {})
    synthesis.setdefault('image_size', 224)
    size = tuple(to_2tuple(synthesis['image_size']))
    num_classes = synthesis.get('num_classes') or distiller.task.num_classes(distiller.teacher)
    name = cfg.get('name') or osp.splitext(osp.basename(str(config)))[0]
    return BenchmarkSetup(distiller, size, num_classes, synthesis=synthesis,
                          had=dict(had or cfg.model.get('had') or DEFAULT_HAD), name=name)


def setup_from_timm(model_name, img_size=224, num_classes=1000, timm_kwargs=None, w_bits=4, a_bits=4,
                    act_method='minmax', had=None):
    """A timm model through mmpretrain's TimmClassifier, as ``configs/timm`` uses it."""
    return setup_from_config(timm_config(model_name, img_size, num_classes, timm_kwargs, w_bits, a_bits, act_method),
                             had=had)


def build_synthesizer(setup, method, precision, ihc=None):
    """The synthesizer the QAT loop would build from the setup's synthesis options, for ``method``;
    ``ihc``: L_IHC options that override the setup's (e.g. ``dict(kernel='torch')``)."""
    options = dict(setup.synthesis, method=method, amp_dtype=AMP_NAMES[precision], log_interval=0,
                   image_size=list(setup.image_size), num_classes=setup.num_classes)
    if ihc:
        options['ihc'] = dict(options.get('ihc') or {}, **ihc)
    return synthesis.build_synthesizer(options, setup.distiller)


def make_step(setup, kind, batch, precision, ihc=None, seed=0, timer='wall'):
    from mimiq_mm.losses import HeadAttentionDistillLoss
    if kind in SYNTHESIS_METHODS:
        synthesizer = build_synthesizer(setup, SYNTHESIS_METHODS[kind], precision, ihc)
        return SynthesisStep(synthesizer, batch, setup.num_classes, seed=seed)
    had = HeadAttentionDistillLoss(**setup.had) if kind == 'kd_had' else None
    distill = DistillStep(setup.distiller, batch, setup.image_size, precision, had_loss=had, seed=seed)
    if kind in GENERATOR_STEPS:
        from mimiq_mm.generators import build_generator
        return GeneratorStep(build_generator(GENERATOR_STEPS[kind]), distill, batch, setup.image_size,
                             setup.num_classes, seed=seed, timer=timer)
    return distill


def run_benchmark(setup, batch, precision='fp32', device='cpu', warmup=3, iters=10, kinds=STEP_KINDS,
                  ihc_kernel=None, timer='wall', interleave=False, argv=None, log=print):
    """Time each step kind in ``kinds`` on ``setup``; returns the JSON-ready result dict.

    By default each kind is timed on its own (warm-up, then ``iters`` calls) with its own peak
    memory. ``interleave=True`` times the kinds in alternation (one call of each per round), so a
    shared machine's changing load affects all alike and the ratios are steadier; peak memory is
    then not attributed to a kind. ``ihc_kernel`` overrides L_IHC's ``kernel`` option (default: the
    setup's, i.e. the C++ kernel on CPU where it builds).
    """
    ihc = dict(kernel=ihc_kernel) if ihc_kernel is not None else {}
    device = torch.device(device)
    setup.distiller.to(device)
    d = setup.distiller
    for kind in kinds:
        if kind not in STEP_KINDS:
            raise ValueError(f'unknown step kind {kind!r}; choose from {STEP_KINDS}')
    # Initialise the student's activation ranges once, as the QAT loop's calibration does.
    with torch.no_grad():
        calib = torch.randn(min(batch, 8), 3, *setup.image_size, device=device)
        d.calibrate([calib])
    steps = {}

    def finish(kind, step, timing):
        values = step.last_terms if kind in SYNTHESIS_METHODS else step.last_losses
        timing['loss_terms'] = {k: float(torch.as_tensor(v).detach().float().mean().item()) for k, v in values.items()}
        timing['description'] = DESCRIPTIONS[kind]
        timing['image_steps_per_s'] = batch * 1e3 / timing['ms_median']
        timing.setdefault('peak_memory_bytes', None)
        if getattr(step, 'splits', None):  # of the timed calls (the warm-up's come first)
            timed = step.splits[-iters:]
            timing['split'] = {part: float(torch.tensor([s[part] for s in timed]).median()) for part in timed[0]}
        steps[kind] = timing
        if log:
            log(f'  {kind:7s} {timing["ms_median"]:10.2f} ms/step  {timing["image_steps_per_s"]:10.1f} img-steps/s')

    if interleave:
        calls = {kind: make_step(setup, kind, batch, precision, ihc=ihc, timer=timer) for kind in kinds}
        for kind, timing in time_calls(calls, device, warmup=warmup, iters=iters, timer=timer).items():
            finish(kind, calls[kind], timing)
        del calls
    else:
        for kind in kinds:
            step = make_step(setup, kind, batch, precision, ihc=ihc, timer=timer)
            finish(kind, step, time_calls({kind: step}, device, warmup=warmup, iters=iters, timer=timer,
                                          memory=True)[kind])
            del step
            gc.collect()
    d.had_loss = None
    for kind, timing in steps.items():
        base = BASELINE[kind]
        timing['ratio_vs'] = base if base in steps else None
        timing['ratio'] = timing['ms_median'] / steps[base]['ms_median'] if base in steps else None
    ratios = {f'{k}_vs_{BASELINE[k]}': steps[k]['ratio'] for k in steps if steps[k]['ratio'] is not None}
    result = dict(
        model=setup.name, device=device.type, precision=precision, batch=batch, image_size=list(setup.image_size),
        warmup=warmup, iters=iters, timer=timer if device.type != 'cuda' else 'cuda-events', interleaved=interleave,
        ihc_kernel=ihc_kernel or 'auto', ihc_cpu_kernel=kernel_state(),
        quant=dict(w_bits=d.quant_cfg.w_bits, a_bits=d.quant_cfg.a_bits, act_method=d.quant_cfg.act_method),
        had=setup.had, steps=steps, ratios=ratios,
        environment=environment(device, argv))
    return result


def format_table(result):
    """A console table of a result dict's steps."""
    rows = []
    for kind, t in result['steps'].items():
        peak = t['peak_memory_bytes']
        split = t.get('split')
        rows.append([kind, t['description'], f"{t['ms_median']:.2f}", f"{t['image_steps_per_s']:.1f}",
                     f"{t['ratio']:.3f}x {t['ratio_vs']}" if t['ratio'] is not None else '-',
                     f"{split['generator_ms']:.1f} + {split['student_ms']:.1f}" if split else '-',
                     f'{peak / 2 ** 30:.2f} GiB' if peak is not None else 'n/a (cpu)'])
    title = (f"{result['model']}  batch {result['batch']}  {result['precision']}  {result['device']} "
             f"({result['environment'].get('device_name')}), timer: {result.get('timer', 'wall')}")
    return console_table(['step', 'what', 'ms/step', 'img-steps/s', 'ratio', 'data + student ms', 'peak mem'], rows,
                         title=title)


def default_out_path(result, root='benchmarks/results'):
    name = result['model'].replace('/', '_')
    return osp.join(root, f"synthesis_{name}_{result['device']}_{result['precision']}_b{result['batch']}.json")


def write_result(result, path):
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write('\n')
    return path
