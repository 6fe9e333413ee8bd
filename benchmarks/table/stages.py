"""Running one unit of each kind: train a teacher, make a synthetic set, quantize, evaluate.

Every unit builds its config from a config file plus overrides (see :mod:`.recipe`), runs
through mmengine's Runner or :func:`mimiq_mm.apis.init_model`, and returns what its record
holds; ``None`` means it stopped at the time budget and resumes next time.
"""
import copy
import glob
import os
import os.path as osp
import time

import torch
from mmengine.config import Config

from mimiq_mm.apis import init_model
from mimiq_mm.datasets import SyntheticImageDataset
from mimiq_mm.evaluation.fidelity import SUFFIX as FIDELITY_SUFFIX
from mimiq_mm.evaluation.fidelity import fidelity_metric, metric_list, reference_format, reference_writer
from mimiq_mm.synthesis import SyntheticSet, SyntheticSetMaker, file_sha256, load_manifest
from mimiq_mm.utils.wrappers import unwrap_model

from ..teachers import training_settings
from .hooks import DeadlineHook, TrainingTimeGuardHook
from .plan import reads_set
from .recipe import load_teacher_config, parse_bits, quantization_config
from .selection import head_similarity_summary, select_synthetic_set
from .state import latest_checkpoint

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
_SHA = {}


def cached_sha256(path):
    """sha256 of a file, remembered per (path, size, mtime): teacher files are hashed for every unit."""
    if not path or not osp.isfile(path):
        return None
    stat = os.stat(path)
    key = (osp.abspath(path), stat.st_size, stat.st_mtime)
    if key not in _SHA:
        _SHA[key] = file_sha256(path)
    return _SHA[key]


class UnitRunner:
    """Runs units for a benchmark.

    Args:
        recipe (Recipe): the recipe and scale.
        work (WorkDir): where units keep their output.
        teachers (dict): {name: dict(label, config, checkpoint)}.
        data_root (str | None): the dataset (bound into every config by the recipe's
            ``data_bindings``).
        image_size (int | tuple): the teachers' input size (synthesis size).
        deadline (float | None): ``time.time()`` at which units stop, resumably.
        workers (int): dataloader workers.
        log (callable): progress lines.
    """

    def __init__(self, recipe, work, teachers, data_root, image_size, deadline=None, workers=0, log=print):
        self.recipe, self.work, self.teachers = recipe, work, teachers
        self.data_root, self.image_size, self.deadline = data_root, image_size, deadline
        self.workers, self.log = workers, log
        self.live_runners = {}  # unit key -> the runner of a just finished teacher/quant unit (for its eval)
        self._count = 0

    # ------------------------------------------------------------------ configs
    def teacher_checkpoint(self, t):
        return self.teachers[t]['checkpoint'] or osp.join(self.work.teacher_dir(t), 'teacher.pth')

    def teacher_config(self, t) -> Config:
        cfg = load_teacher_config(self.teachers[t]['config'])
        self.bind_data(cfg)
        return cfg

    def bind_data(self, cfg):
        """Point the config's datasets at ``data_root`` and keep decoded images in memory."""
        if self.data_root:  # the bindings a config has (a recipe may mix detection and segmentation)
            cfg.merge_from_dict({key: value.format(data_root=self.data_root)
                                 for key, value in self.recipe.data['bindings'].items() if _has_key(cfg, key)})
        for name in LOADERS:
            loader = cfg.get(name)
            if not loader:
                continue
            loader.update(num_workers=self.workers, persistent_workers=False, pin_memory=torch.cuda.is_available())
            if self.recipe.data.get('decode_once') and loader.dataset.get('type') != 'mimiq_mm.DecodedImageDataset':
                loader.dataset = dict(type='mimiq_mm.DecodedImageDataset', dataset=loader.dataset,
                                      decode_steps=self.recipe.data.get('decode_steps', 1))
        cfg.test_dataloader.batch_size = self.recipe.scale['eval']['batch_size']
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None  # the test split is read once, at the end

    def distiller_config(self, t) -> Config:
        """The teacher's config wrapped into a QuantDistiller (with the teacher's model options)."""
        cfg = quantization_config(self.teacher_config(t), osp.abspath(self.teacher_checkpoint(t)))
        cfg.merge_from_dict({f'model.{k}': v for k, v in self.teachers[t].get('model', {}).items()})
        return cfg

    def quant_config(self, unit) -> Config:
        t = unit.teacher
        cfg = self.distiller_config(t)
        cfg.merge_from_dict(self.recipe.quant_overrides(unit.row, unit.bits, unit.seed, t))
        data = self.recipe.rows[unit.row]['data']
        cfg.train_cfg.synthesis = dict(image_size=self.image_size)
        if reads_set(self.recipe.rows[unit.row]):  # the set its synth unit made: of its seed
            cfg.train_cfg.synthetic_set = self.work.synth_dir(t, data, self.recipe.set_seed(unit.seed))
        cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, max_keep_ckpts=1, save_last=False,
                                            interval=int(self.recipe.finetune_settings(t).get('checkpoint_interval',
                                                                                              1000)))
        cfg.default_hooks.logger = dict(type='LoggerHook', interval=50)
        if self.scores_agreement(cfg):  # the student's predictions also scored against the teacher's
            cfg.test_evaluator = metric_list(cfg.test_evaluator) + [
                fidelity_metric(cfg.test_evaluator, self.teacher_predictions_path(t, cfg.test_evaluator))]
        return cfg

    def scores_agreement(self, cfg) -> bool:
        """Whether the recipe asks for fidelity to the teacher and the config can give it (a
        segmentor scored by mmseg's IoUMetric, a detector by mmdet's CocoMetric)."""
        asked = bool(self.recipe.data.get('teacher_agreement'))
        return asked and reference_format(cfg.get('test_evaluator')) is not None

    def teacher_predictions_path(self, t, evaluator) -> str:
        """Named after the split and the checkpoint, so that a retrained teacher writes its own;
        label maps (.npz) or detections (.json) as the task's ``evaluator`` scores them."""
        split, teacher = self.recipe.data.get('test_split', 'test'), cached_sha256(self.teacher_checkpoint(t))
        suffix = FIDELITY_SUFFIX[reference_format(evaluator)]
        return osp.join(self.work.teacher_dir(t), f'predictions_{split}_{(teacher or "missing")[:12]}{suffix}')

    def write_teacher_predictions(self, t):
        """The teacher's predictions on the test split (the reference of the fidelity metric),
        written once."""
        cfg = self.teacher_config(t)
        path = self.teacher_predictions_path(t, cfg.test_evaluator)
        if osp.isfile(path):
            return
        cfg.load_from = osp.abspath(self.teacher_checkpoint(t))
        cfg.test_evaluator = reference_writer(cfg.test_evaluator, path)
        _test_only(cfg)
        self.log(f'[{t}] writing the teacher\'s predictions on the test split to {path}')
        self.build_runner(cfg, osp.join(self.work.teacher_dir(t), 'predictions'), f'predictions-{t}').test()

    def build_runner(self, cfg, work_dir, tag):
        from mmengine.runner import Runner
        self._count += 1
        cfg.work_dir = work_dir
        cfg.experiment_name = f'{tag.replace("/", "-")}_{time.strftime("%Y%m%d_%H%M%S")}_{self._count}'
        os.makedirs(work_dir, exist_ok=True)
        cfg.dump(osp.join(work_dir, 'config.py'))
        return Runner.from_cfg(cfg)

    # ------------------------------------------------------------------ units
    def run_teacher(self, unit):
        t, folder = unit.teacher, self.work.teacher_dir(unit.teacher)
        if self.teachers[t]['checkpoint']:
            if not osp.isfile(self.teachers[t]['checkpoint']):
                raise FileNotFoundError(f'--teacher-checkpoint {self.teachers[t]["checkpoint"]} not found')
            return dict(external=True, checkpoint=self.teachers[t]['checkpoint'])
        ts = self.recipe.teacher_settings(t)
        epochs, warmup = int(ts['epochs']), int(ts['warmup_epochs'])
        cfg = self.teacher_config(t)
        cfg.train_cfg = dict(by_epoch=True, max_epochs=epochs)
        cfg.train_dataloader.batch_size = int(ts['batch_size'])
        cfg.merge_from_dict({'optim_wrapper.optimizer': dict(type='AdamW', lr=ts['lr'], weight_decay=ts['weight_decay'],
                                                             betas=(0.9, 0.999))})
        cfg.optim_wrapper.type = 'AmpOptimWrapper' if torch.cuda.is_available() else 'OptimWrapper'
        if not torch.cuda.is_available():
            cfg.optim_wrapper.pop('dtype', None)
        cfg.param_scheduler = ([dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=warmup,
                                     convert_to_iter_based=True)] if warmup else []) + [
            dict(type='CosineAnnealingLR', by_epoch=True, begin=warmup, end=epochs, T_max=max(1, epochs - warmup),
                 eta_min=1e-5, convert_to_iter_based=True)]
        cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1, max_keep_ckpts=1, save_last=True)
        cfg.randomness = dict(seed=0, deterministic=False)
        resume_from = latest_checkpoint(folder, 'epoch')
        cfg.load_from, cfg.resume = (resume_from, True) if resume_from else (None, False)
        runner = self.build_runner(cfg, folder, f'teacher-{t}')
        guard = TrainingTimeGuardHook(ts.get('max_seconds'), self.deadline)
        runner.register_hook(guard, priority='LOWEST')
        start = time.time()
        runner.train()
        if guard.stopped_by_deadline:
            return None
        model = unwrap_model(runner.model)
        info = dict(epochs=epochs, epochs_trained=guard.cut_at_epoch or epochs, cut=guard.cut_at_epoch is not None,
                    train_seconds=round(time.time() - start, 1), params=sum(p.numel() for p in model.parameters()))
        torch.save(dict(state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                        meta=dict(info, mimiq_benchmark_teacher=True)), osp.join(folder, 'teacher.pth'))
        for path in glob.glob(osp.join(folder, 'epoch_*.pth')):
            os.remove(path)  # resume checkpoints are not needed any more
        self.live_runners[unit.key] = runner
        return dict(info, checkpoint='teacher.pth')

    def run_synth(self, unit):
        t = unit.teacher
        seed = unit.seed or 0
        options = dict(self.recipe.set_options(unit.set_name, seed), image_size=self.image_size)
        distiller = init_model(self.distiller_config(t), device='cuda' if torch.cuda.is_available() else 'cpu')
        root = self.work.synth_dir(t, unit.set_name, seed)
        if 'source' in options:  # the source set of the same seed
            select_synthetic_set(distiller, self.work.synth_dir(t, options['source'], seed), root, options)
            sset = SyntheticSet(root, load_manifest(root)['settings'])
        else:
            maker = SyntheticSetMaker.from_config(options, distiller, root=root)
            sset = maker.synthetic_set
            if not maker.make(should_stop=lambda: self.deadline is not None and time.time() > self.deadline):
                return None
        seconds = sum(b.get('seconds') or 0 for b in sset.finished_batches().values())
        steps = options.get('steps', 0) if options.get('method') != 'noise' else 0
        method = options.get('method') or f'{options["order"]} {options["fraction"]:g} of {options["source"]}'
        return dict(set_name=unit.set_name, num_images=sset.num_images, steps=steps, batch_size=sset.batch_size,
                    method=method, synthesis_seed=image_seed(options), synthesis_seconds=round(seconds, 1),
                    head_similarity=head_similarity_summary(distiller, SyntheticImageDataset(root)))

    def run_quant(self, unit):
        folder = self.work.unit_dir(unit)
        cfg = self.quant_config(unit)
        resume_from = latest_checkpoint(folder, 'iter')
        cfg.load_from, cfg.resume = (resume_from, True) if resume_from else (None, False)
        runner = self.build_runner(cfg, folder, f'quant-{unit.key}')
        hook = DeadlineHook(self.deadline)
        runner.register_hook(hook, priority='LOWEST')
        runner.train()
        if hook.stopped:
            return None
        for path in glob.glob(osp.join(folder, 'iter_*.pth')):
            os.remove(path)  # resume checkpoints (teacher + student + optimizer) are not needed any more
        self.live_runners[unit.key] = runner
        w, a = parse_bits(unit.bits)
        row = self.recipe.rows[unit.row]
        return dict(row=unit.row, label=row['label'], bits=unit.bits, seed=unit.seed, data=row['data'],
                    iters=cfg.train_cfg.max_iters, batch_size=cfg.train_cfg.batch_size,
                    act_method=cfg.model.quant['act_method'], student=f'student_w{w}a{a}.pth', config='config.py')

    def run_eval(self, unit):
        runner = self.live_runners.pop(unit.key, None)
        if runner is None:  # trained in an earlier invocation: load the saved weights
            if unit.row is None:
                cfg = self.teacher_config(unit.teacher)
                cfg.load_from = osp.abspath(self.teacher_checkpoint(unit.teacher))
                folder = osp.join(self.work.teacher_dir(unit.teacher), 'eval')
            else:
                cfg = self.quant_config(unit)
                w, a = parse_bits(unit.bits)
                cfg.load_from = osp.join(self.work.unit_dir(unit), f'student_w{w}a{a}.pth')
                cfg.custom_hooks = []
                folder = osp.join(self.work.unit_dir(unit), 'eval')
            _test_only(cfg)
            runner = self.build_runner(cfg, folder, f'eval-{unit.key}')
        if unit.row is not None and self.scores_agreement(runner.cfg):
            self.write_teacher_predictions(unit.teacher)
        start = time.time()
        metrics = {k: float(v) for k, v in runner.test().items()}
        return dict(metrics=metrics, eval_seconds=round(time.time() - start, 2),
                    test_images=len(runner.test_dataloader.dataset))

    def run(self, unit):
        return getattr(self, f'run_{unit.kind}')(unit)

    def forget(self, keep_key=None):
        """Drop live runners except the one kept for the unit ``keep_key``."""
        for key in [k for k in self.live_runners if k != keep_key]:
            self.live_runners.pop(key)

    def settings(self, unit, sha256):
        """What a unit's result depends on (its identity in the records)."""
        if unit.kind == 'teacher':
            spec = self.teachers[unit.teacher]
            if spec['checkpoint']:
                return dict(external_checkpoint_sha256=sha256(spec['checkpoint']))
            return training_settings(self.recipe, unit.teacher, spec['config'])  # what the registry matches
        teacher = sha256(self.teacher_checkpoint(unit.teacher))
        if unit.kind == 'synth':
            return dict(teacher_sha256=teacher, synthesis=self.recipe.set_options(unit.set_name, unit.seed or 0),
                        image_size=self.image_size)
        if unit.row is None:
            return dict(teacher_sha256=teacher, data=self.recipe.data.get('test_split'))
        row = self.recipe.rows[unit.row]
        quant = dict(teacher_sha256=teacher, row=copy.deepcopy(row), bits=unit.bits, seed=unit.seed,
                     overrides=self.recipe.quant_overrides(unit.row, unit.bits, unit.seed, unit.teacher))
        if reads_set(row):
            synth = type(unit)('synth', unit.teacher, set_name=row['data'], seed=self.recipe.set_seed(unit.seed))
            quant['synthetic_set'] = self.settings(synth, sha256)
        if unit.kind == 'quant':
            return quant
        return dict(quant=quant, data=self.recipe.data.get('test_split'))


def image_seed(options: dict) -> int:
    """The synthesis seed of a set's images (of its source's, for a set selected from another)."""
    while 'source_options' in options:
        options = options['source_options']
    return int(options.get('seed', 0))


def _test_only(cfg):
    """Strip the training parts of a config that only tests a loaded checkpoint."""
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
        cfg[key] = None
    cfg.resume = False


def _has_key(cfg, dotted):
    """Whether ``cfg`` (a Config or dict) holds the dotted key ``a.b.c``."""
    node = cfg.to_dict() if isinstance(cfg, Config) else cfg
    for part in dotted.split('.'):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
