"""A benchmark recipe (e.g. ``configs/cifar10/benchmark.py``) and the configs of its units.

The recipe names the teachers, the synthetic sets, the rows of the table (each a way to
quantize the teacher: a data source, fine-tuning or not, L_HAD or not, plus any config
overrides), the bit-widths, the checks and the scale presets that size everything. Every unit's
config is a config file plus overrides:

* a teacher trains with its config file (``scale.teacher_configs``) and the scale's schedule;
* a quantization unit runs the teacher config wrapped by :func:`quantization_config` (the
  recipe of ``configs/_base_/mimiq_dfq.py``, the same as every config in ``configs/``) with the
  row's and the scale's overrides.
"""
import copy
import os.path as osp
from typing import List, Optional

from mmengine.config import Config

from ..paths import repo_path
from .plan import NO_SET, reads_set, set_seed

DFQ_BASE = 'configs/_base_/mimiq_dfq.py'
#: the synthesis seed of a set of seed s is the recipe's plus s times this: batch b draws from
#: ``seed + b``, so sets of different seeds share no batch (a set has far fewer batches)
SET_SEED_STRIDE = 1_000_000


def parse_bits(tag: str):
    """'w3a3' -> (3, 3)."""
    tag = tag.lower().replace('/', '')
    if not (tag.startswith('w') and 'a' in tag):
        raise ValueError(f'bit-width {tag!r}: write it as w<bits>a<bits>, e.g. w3a3')
    w, a = tag[1:].split('a')
    return int(w), int(a)


def bits_label(tag: str) -> str:
    return 'W{}/A{}'.format(*parse_bits(tag))


def load_teacher_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """A teacher config (file or ``pkg::path``), with ``mimiq_mm`` among its custom imports."""
    import mimiq_mm  # noqa: F401  (registers components, safe checkpoint loading)
    if '::' in path:
        from mmengine.hub import get_config
        cfg = get_config(path)
    else:
        path = repo_path(path)
        if not osp.isfile(path):
            raise FileNotFoundError(f'teacher config {path} not found')
        cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('default_scope') is None:
        cfg.default_scope = 'mmpretrain'
    imports = dict(cfg.get('custom_imports') or dict(imports=[], allow_failed_imports=False))
    imports['imports'] = list(dict.fromkeys(list(imports['imports']) + ['mimiq_mm']))
    cfg.custom_imports = imports
    return cfg


def quantization_config(teacher: Config, teacher_checkpoint: Optional[str] = None) -> Config:
    """The teacher's config turned into a MimiQ config with the recipe of
    ``configs/_base_/mimiq_dfq.py``, exactly as the per-model configs of ``configs/`` do it: the
    teacher's model becomes the ``architecture`` of a ``QuantDistiller``, the recipe's loop,
    optimiser, schedule and hooks replace the teacher's training settings."""
    recipe = Config.fromfile(repo_path(DFQ_BASE))
    cfg = copy.deepcopy(teacher)
    cfg.model = dict(recipe.mimiq_model, architecture=teacher.model, teacher_checkpoint=teacher_checkpoint)
    cfg.train_cfg = copy.deepcopy(recipe.mimiq_train_cfg)
    cfg.optim_wrapper = copy.deepcopy(recipe.mimiq_optim_wrapper)
    cfg.param_scheduler = copy.deepcopy(recipe.mimiq_param_scheduler)
    cfg.default_hooks = dict(cfg.get('default_hooks') or {}, **copy.deepcopy(recipe.mimiq_default_hooks))
    cfg.log_processor = copy.deepcopy(recipe.mimiq_log_processor)
    cfg.custom_hooks = copy.deepcopy(recipe.mimiq_custom_hooks)
    cfg.pop('auto_scale_lr', None)
    return cfg


class Recipe:
    """The recipe file and one of its scale presets, with the selection of the command line.

    Args:
        path (str): the recipe file.
        scale (str): a key of its ``scales``.
        overrides (dict): ``{'<section>.<key>': value}`` changes of the scale (recorded).
    """

    def __init__(self, path: str, scale: str, overrides: Optional[dict] = None):
        self.path = repo_path(path)
        data = Config.fromfile(self.path).to_dict()
        if scale not in data['scales']:
            raise ValueError(f'unknown scale {scale!r}; {self.path} has {", ".join(data["scales"])}')
        self.raw = data
        self.name = data.get('benchmark', 'benchmark')
        self.scale_name = scale
        self.scale = copy.deepcopy(data['scales'][scale])
        self.overrides = dict(overrides or {})
        for key, value in self.overrides.items():
            section, _, field = key.partition('.')
            self.scale[section][field] = value
        self.rows = data['rows']
        self.sets = data['synthetic_sets']
        self.set_per_seed = bool(data.get('synthetic_set_per_seed', True))
        self.metrics = data['metrics']
        self.data = data['data']
        self.checks = data.get('checks', [])

    # ------------------------------------------------------------------ selection
    def bits(self, chosen: Optional[List[str]] = None) -> List[str]:
        out = []
        for tag in chosen or self.scale['bits']:
            if tag in ('all', 'headline'):
                out += self.raw[f'{tag}_bits']
            else:
                out.append('w{}a{}'.format(*parse_bits(tag)))
        return list(dict.fromkeys(out))

    def select(self, what: str, chosen: Optional[List[str]], known) -> List[str]:
        chosen = list(chosen or [])
        bad = [c for c in chosen if c not in known]
        if bad:
            raise ValueError(f'unknown {what} {bad}; known: {", ".join(known)}')
        return chosen

    def teacher_labels(self) -> dict:
        """{name: label} of every teacher of the recipe and the scale (a report covers teachers of
        earlier invocations too)."""
        return dict({t: spec.get('label', t) for t, spec in self.raw['teachers'].items()},
                    **self.scale.get('teacher_labels', {}))

    def teachers(self, chosen=None) -> dict:
        """{name: dict(label, config, checkpoint, model)} of the scale's (or the chosen) teachers.

        ``checkpoint`` (``scale.teacher_checkpoints``) is a teacher trained elsewhere (e.g. an
        mmdet/mmseg model trained with tools/train.py), else None: the driver trains it. ``model``
        (``teachers.<name>.model``) holds QuantDistiller options of this teacher (its task's)."""
        names = self.select('teachers', chosen, self.scale['teacher_configs']) or list(self.scale['teachers'])
        labels = self.teacher_labels()
        checkpoints = self.scale.get('teacher_checkpoints', {})
        return {t: dict(label=labels.get(t, t), config=self.scale['teacher_configs'][t],
                        checkpoint=checkpoints.get(t) and osp.abspath(repo_path(checkpoints[t])),
                        model=self.raw['teachers'].get(t, {}).get('model', {})) for t in names}

    # ------------------------------------------------------------------ per-unit settings
    def set_seed(self, seed: int) -> int:
        """The seed of the synthetic sets a unit of seed ``seed`` reads (``synthetic_set_per_seed``)."""
        return set_seed(seed, self.set_per_seed)

    def set_options(self, set_name: str, seed: int = 0) -> dict:
        """``train_cfg.synthesis`` of a synthetic set of seed ``seed`` at this scale (image size
        and folder are added by the driver): seed 0 has the recipe's synthesis seed, seed s that
        plus s x :data:`SET_SEED_STRIDE`. A set selected from another (``source``, ``order``
        'top' / 'bottom' / 'random' by the teacher's inter-head similarity, ``fraction``) carries
        the options of its source of the same seed instead."""
        spec, s = dict(self.sets[set_name]), self.scale['synthesis']
        offset = int(seed) * SET_SEED_STRIDE
        if 'source' in spec:
            return dict(spec, fraction=float(spec.get('fraction', 0.5)), seed=int(spec.get('seed', 0)) + offset,
                        source_options=self.set_options(spec['source'], seed))
        size_key = spec.pop('size', 'num_images')
        options = dict(self.raw.get('synthesis_common', {}), **spec)
        options.update(num_images=int(s[size_key]), batch_size=int(min(s['batch_size'], s[size_key])),
                       steps=int(s['steps']), log_interval=s.get('log_interval', 200))
        if 'amp_dtype' in s:  # the scale's synthesis precision (None: float32), else the synthesizer's 'auto'
            options['amp_dtype'] = s['amp_dtype']
        options.update(spec.get('options', {}))
        options.pop('options', None)
        if offset:  # seed 0's options stay as they were: its sets of earlier runs stay valid
            options['seed'] = int(options.get('seed', 0)) + offset
        return options

    def finetune_settings(self, teacher: Optional[str] = None) -> dict:
        """The scale's fine-tuning settings, with a teacher's own changes (``finetune_overrides``:
        e.g. fewer iterations for a costly detector)."""
        return dict(self.settings('finetune'), **self.scale.get('finetune_overrides', {}).get(teacher, {}))

    def seeds_of(self, bits: str, seeds: List[int]) -> List[int]:
        """The seeds of a bit-width: ``scale.bits_seeds`` may give a column more (or fewer) seeds."""
        return list(self.scale.get('bits_seeds', {}).get(bits, seeds))

    def quant_overrides(self, row_name: str, bits: str, seed: int, teacher: Optional[str] = None) -> dict:
        """The overrides of a quantization unit on top of :func:`quantization_config`."""
        row, ft, ptq = self.rows[row_name], self.finetune_settings(teacher), self.scale['ptq']
        w_bits, a_bits = parse_bits(bits)
        finetune = row.get('finetune', True)
        act_method = ft['act_method'] if finetune else ptq['act_method']
        quant = dict(w_bits=w_bits, a_bits=a_bits, act_method=act_method)
        for key in ('lsq_init', 'w_fit'):  # the scale's, else the library's defaults (a row may change them)
            if (ft if finetune else ptq).get(key):
                quant[key] = (ft if finetune else ptq)[key]
        o = {'model.quant': quant,
             'model.kd': dict(temperature=ft['kd_temperature'], loss_weight=1.0),
             'model.had': dict(metric='dssim', loss_weight=ft['had_gamma']) if row.get('had') else None,
             'model.augment': ft.get('augment') if finetune and reads_set(row) else None,
             'randomness': dict(seed=int(seed), deterministic=False),
             'train_cfg.data_source': row['data'] if row['data'] in NO_SET else 'synthetic',
             'train_cfg.val_interval': 10 ** 9}
        if finetune:
            iters = int(ft['iters'])
            o.update({'train_cfg.batch_size': int(ft['batch_size']), 'train_cfg.max_iters': iters,
                      'train_cfg.calibration_batches': int(ft['calibration_batches']),
                      'optim_wrapper.optimizer.lr': ft['lr']})
            if row['data'] == 'real':  # the real loader is the config's: the same batch as on synthetic images
                o['train_dataloader.batch_size'] = int(ft['batch_size'])
            if ft.get('drop_path_rate') is not None:  # the teachers' configs (TimmClassifier kwargs)
                o['model.architecture.drop_path_rate'] = ft['drop_path_rate']
            if ft.get('schedule') == 'paper':
                o['param_scheduler'] = [dict(type='MultiStepLR', by_epoch=False, milestones=list(ft['milestones']),
                                             gamma=0.1)]
            else:
                o['param_scheduler'] = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=iters,
                                             T_max=iters, eta_min=ft['lr'] * 0.01)]
        else:  # post-training quantization: calibrate on the whole (small) set
            o.update({'train_cfg.batch_size': int(ptq['batch_size']), 'train_cfg.max_iters': 0,
                      'train_cfg.calibration_batches': 10 ** 6, 'param_scheduler': None})
        if row.get('real_images'):  # a random part of the train split: a count, or a synthesis size key
            count = row['real_images']
            o['train_dataloader.dataset.num_samples'] = int(self.scale['synthesis'][count] if isinstance(count, str)
                                                            else count)
        if row.get('keep_best'):  # choose the student on held-out synthetic images (BestStudentHook)
            o.update({'train_cfg.holdout_images': int(ft.get('holdout_images', 64)),
                      'custom_hooks': [dict(type='mimiq_mm.StudentExportHook'),
                                       dict(type='mimiq_mm.BestStudentHook',
                                            interval=int(ft.get('best_interval', max(1, ft['iters'] // 10))))]})
        o.update(row.get('cfg_options', {}))
        return o

    def settings(self, section: str) -> dict:
        return copy.deepcopy(self.scale[section])

    def teacher_settings(self, teacher: str) -> dict:
        """The scale's teacher schedule, with this teacher's own changes (``teacher_overrides``,
        e.g. a longer-trained copy of a teacher)."""
        return dict(self.settings('teacher'), **self.scale.get('teacher_overrides', {}).get(teacher, {}))
