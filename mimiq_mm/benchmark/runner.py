"""Build the models of a benchmark run and time the five step kinds on them.

Step kinds:

* ``plain``: synthesis with L_CL + L_TV (method 'base');
* ``ihc``: MimiQ synthesis, L_IHC + L_CL + L_TV (method 'mimiq');
* ``psaq``: PSAQ-ViT synthesis, patch-similarity entropy + L_CL + L_TV (method 'psaq');
* ``kd``: fine-tuning the quantized student with L_KL only;
* ``kd_had``: fine-tuning with L_KL + γ·L_HAD.

Ratios are step-time ratios: ``ihc`` and ``psaq`` against ``plain``, ``kd_had`` against ``kd``.
"""
import copy
import gc
import json
import os
import os.path as osp

import torch

from .steps import AMP_NAMES, DistillStep, SynthesisStep
from .timing import environment, time_interleaved, time_step

STEP_KINDS = ('plain', 'ihc', 'psaq', 'kd', 'kd_had')
SYNTHESIS_METHODS = {'plain': 'base', 'ihc': 'mimiq', 'psaq': 'psaq'}
BASELINE = {'plain': None, 'ihc': 'plain', 'psaq': 'plain', 'kd': None, 'kd_had': 'kd'}
DESCRIPTIONS = {
    'plain': 'synthesis L_CL+L_TV (base)',
    'ihc': 'synthesis L_IHC+L_CL+L_TV (mimiq)',
    'psaq': 'synthesis PSAQ+L_CL+L_TV',
    'kd': 'QAT step L_KL',
    'kd_had': 'QAT step L_KL+L_HAD',
}
# Issue 6 targets, for DeiT-S at batch 128 on one H100 (checked only there).
TARGETS = dict(ihc_image_steps_per_s=4500.0, ihc_vs_plain=1.25, kd_had_vs_kd=1.3, vit_b_peak_gib=40.0)
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


def _image_size(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def setup_from_timm(model_name, img_size=224, num_classes=1000, timm_kwargs=None, w_bits=4, a_bits=4,
                    act_method='minmax', had=None):
    """A timm model through mmpretrain's TimmClassifier, as ``configs/timm`` uses it."""
    from ..models.distiller import QuantDistiller
    import mmpretrain.models  # noqa: F401  (registers TimmClassifier)
    size = _image_size(img_size)
    kwargs = dict(timm_kwargs or {})
    kwargs.setdefault('img_size', size[0] if size[0] == size[1] else size)
    architecture = dict(type='mmpretrain.TimmClassifier', model_name=model_name, pretrained=False,
                        num_classes=num_classes, **kwargs)
    preprocessor = dict(type='mmpretrain.ClsDataPreprocessor', mean=IMAGENET_MEAN, std=IMAGENET_STD, to_rgb=True)
    distiller = QuantDistiller(architecture, quant=dict(w_bits=w_bits, a_bits=a_bits, act_method=act_method),
                               kd=dict(temperature=1.0, loss_weight=1.0), had=None, allow_random_teacher=True,
                               data_preprocessor=preprocessor)
    return BenchmarkSetup(distiller, size, num_classes, synthesis={}, had=dict(had or DEFAULT_HAD), name=model_name)


def setup_from_config(config, cfg_options=None, img_size=None, w_bits=None, a_bits=None):
    """The config's QuantDistiller (``model``) and synthesis options (``train_cfg.synthesis``)."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    import mimiq_mm  # noqa: F401
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if w_bits is not None or a_bits is not None:
        quant = dict(cfg.model.get('quant') or {})
        quant.update({k: v for k, v in dict(w_bits=w_bits, a_bits=a_bits).items() if v is not None})
        cfg.model.quant = quant
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    model_cfg = copy.deepcopy(cfg.model)
    had = model_cfg.get('had') or DEFAULT_HAD
    model_cfg['had'] = None
    if 'data_preprocessor' in cfg and 'data_preprocessor' not in model_cfg:
        model_cfg['data_preprocessor'] = cfg.data_preprocessor
    distiller = MODELS.build(model_cfg)
    synthesis = dict(cfg.get('train_cfg', {}).get('synthesis', {}) or {})
    size = img_size or synthesis.get('image_size') or 224
    num_classes = synthesis.get('num_classes') or distiller.task.num_classes(distiller.teacher)
    name = osp.splitext(osp.basename(config))[0]
    return BenchmarkSetup(distiller, _image_size(size), num_classes, synthesis=synthesis, had=dict(had), name=name)


def build_synthesizer(setup, method, precision, ihc_impl=None):
    from ..synthesis import ImageSynthesizer
    d = setup.distiller
    s = setup.synthesis
    pre = d.data_preprocessor
    ihc = dict(s.get('ihc') or {})
    if ihc_impl is not None:
        ihc['impl'] = ihc_impl
    options = {k: s[k] for k in ('lr', 'betas', 'alpha', 'beta', 'psaq', 'tv', 'augment') if s.get(k) is not None}
    return ImageSynthesizer(d.teacher, d.task, setup.image_size, pre.pixel_mean.flatten().tolist(),
                            pre.pixel_std.flatten().tolist(), method=method, steps=int(s.get('steps') or 2000),
                            ihc=ihc, amp_dtype=AMP_NAMES[precision], log_interval=0, **options)


def make_step(setup, kind, batch, precision, ihc_impl=None, seed=0):
    from ..losses import HeadAttentionDistillLoss
    if kind in SYNTHESIS_METHODS:
        synthesizer = build_synthesizer(setup, SYNTHESIS_METHODS[kind], precision, ihc_impl)
        return SynthesisStep(synthesizer, batch, setup.num_classes, seed=seed)
    had = HeadAttentionDistillLoss(**setup.had) if kind == 'kd_had' else None
    return DistillStep(setup.distiller, batch, setup.image_size, precision, had_loss=had, seed=seed)


def run_benchmark(setup, batch, precision='fp32', device='cpu', warmup=3, iters=10, kinds=STEP_KINDS,
                  ihc_impl=None, timer='wall', interleave=False, argv=None, log=print):
    """Time each step kind in ``kinds`` on ``setup``; returns the JSON-ready result dict.

    By default each kind is timed on its own (warm-up, then ``iters`` calls) with its own peak
    memory. ``interleave=True`` times the kinds in alternation (one call of each per round), so a
    shared machine's changing load affects all alike and the ratios are steadier; peak memory is
    then not attributed to a kind.
    """
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
        steps[kind] = timing
        if log:
            log(f'  {kind:7s} {timing["ms_median"]:10.2f} ms/step  {timing["image_steps_per_s"]:10.1f} img-steps/s')

    if interleave:
        calls = {kind: make_step(setup, kind, batch, precision, ihc_impl=ihc_impl) for kind in kinds}
        for kind, timing in time_interleaved(calls, device, warmup=warmup, iters=iters, timer=timer).items():
            finish(kind, calls[kind], timing)
        del calls
    else:
        for kind in kinds:
            step = make_step(setup, kind, batch, precision, ihc_impl=ihc_impl)
            finish(kind, step, time_step(step, device, warmup=warmup, iters=iters, timer=timer))
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
        ihc_impl=ihc_impl or 'fast',
        quant=dict(w_bits=d.quant_cfg.w_bits, a_bits=d.quant_cfg.a_bits, act_method=d.quant_cfg.act_method),
        had=setup.had, steps=steps, ratios=ratios, targets=TARGETS,
        environment=environment(device, argv))
    return result


def format_table(result):
    """A plain-text table of a result dict's steps."""
    lines = [f"{result['model']}  batch {result['batch']}  {result['precision']}  {result['device']} "
             f"({result['environment'].get('device_name')}), timer: {result.get('timer', 'wall')}",
             f"{'step':8s} {'what':34s} {'ms/step':>10s} {'img-steps/s':>12s} {'ratio':>12s} {'peak mem':>10s}"]
    for kind, t in result['steps'].items():
        ratio = f"{t['ratio']:.3f}x {t['ratio_vs']}" if t['ratio'] is not None else '-'
        peak = t['peak_memory_bytes']
        peak = f'{peak / 2 ** 30:.2f} GiB' if peak is not None else 'n/a (cpu)'
        lines.append(f"{kind:8s} {t['description']:34s} {t['ms_median']:10.2f} {t['image_steps_per_s']:12.1f} "
                     f"{ratio:>12s} {peak:>10s}")
    return '\n'.join(lines)


def default_out_path(result, root='benchmarks/results'):
    name = result['model'].replace('/', '_')
    return osp.join(root, f"synthesis_{name}_{result['device']}_{result['precision']}_b{result['batch']}.json")


def write_result(result, path):
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write('\n')
    return path
