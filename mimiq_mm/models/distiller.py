"""Teacher (frozen, full precision) + student (its fake-quantized copy) as one mmengine model.

``forward(mode='loss')`` returns the fine-tuning losses L_T = L_KL + γ·L_HAD (paper Eq. 13), so
mmengine's standard ``train_step`` — and DDP — work unchanged; ``val_step``/``test_step``
evaluate the student with the task model's own data pipeline and evaluator.
"""
import copy
import os
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS

from ..apis.checkpoint import checkpoint_state_dict, load_checkpoint, load_matching_weights
from ..attention import AttentionRecorder, install_attention_capture
from ..losses import HeadAttentionDistillLoss
from ..quant import (LSQActQuantizer, MinMaxActQuantizer, QuantConfig, UncalibratedQuantizerError, calibration,
                     quantize_model, quantizers, quantizers_initialized, uncalibrated_quantizers)
from ..registry import MODELS
from ..tasks import build_task
from .data_preprocessor import DistillDataPreprocessor


def build_student_loss(cfg):
    """A registered student loss (:mod:`mimiq_mm.losses.dfq`) from its config, or a built module."""
    if isinstance(cfg, nn.Module):
        return cfg
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    # The class from this scope's registry: Registry.build would search the config's default scope
    # (mmpretrain, mmseg, ...) first, which has no such losses.
    loss_cls = MODELS.get(kind) if kind else None
    if loss_cls is None:
        raise ValueError(f'unknown student loss type {kind!r} in model.student_losses; e.g. '
                         "'mimiq_mm.LabelCrossEntropyLoss' or 'mimiq_mm.DifferenceEntropyLoss'")
    loss = loss_cls(**cfg)
    if not hasattr(loss, 'name'):
        raise ValueError(f'{type(loss).__name__} cannot be a student loss: it has no `name` to log it under')
    return loss


@torch.no_grad()
def calibrate_activations(student, batches, forward, only_uncalibrated=False):
    """The calibration pass: run ``forward(student, inputs)`` in eval mode on each of ``batches``
    (preprocessed inputs (B, 3, H, W)) while the activation quantizers observe (with
    ``only_uncalibrated``, only those that are not calibrated yet). What
    :meth:`QuantDistiller.calibrate`, the fine-tuning loop's calibration
    (:mod:`mimiq_mm.engine.calibration`) and the analysis tools run."""
    was_training = student.training
    student.eval()
    with calibration(student, only_uncalibrated):
        for inputs in batches:
            forward(student, inputs)
    student.train(was_training)


@MODELS.register_module()
class QuantDistiller(BaseModel):
    """Args:
        architecture (dict): config of the full-precision task model (mmpretrain classifier,
            mmseg segmentor, mmdet detector), as in the base config's ``model``.
        teacher_checkpoint (str | None): path (or URL) of the teacher's weights. Required for
            training unless ``allow_random_teacher`` (tests only).
        quant (dict): :class:`mimiq_mm.quant.QuantConfig` options (w_bits, a_bits, act_method…).
        kd (dict): output distillation, ``temperature`` and ``loss_weight``.
        had (dict | None): :class:`HeadAttentionDistillLoss` options (``metric``, ``loss_weight`` =
            γ); None or loss_weight 0 disables L_HAD.
        student_losses (list[dict] | None): further terms of the student's loss on generated batches
            that carry labels (``targets``), each a registered loss called
            ``loss(student_out, teacher_out, targets)`` and logged under its ``name``: the baselines'
            ``LabelCrossEntropyLoss`` (GDFQ, Qimera) and ``DifferenceEntropyLoss`` (AdaDFQ), see
            :mod:`mimiq_mm.losses.dfq`. ``kd.loss_weight=0`` drops L_KL (AdaDFQ's student has none).
        task (str | dict): 'auto', 'classification', 'segmentation' or 'detection', or
            ``dict(type=<one of these>, **adapter options)`` (see :func:`build_task`).
        augment (dict | None): :class:`BatchAugment` options for synthetic batches.
        data_preprocessor (dict | None): the task model's preprocessor (filled from the base
            config by the runner).
    """

    def __init__(self, architecture: dict, teacher_checkpoint: Optional[str] = None, quant: Optional[dict] = None,
                 kd: Optional[dict] = None, had: Optional[dict] = None, student_losses: Optional[list] = None,
                 task: str = 'auto',
                 augment: Optional[dict] = None, allow_random_teacher: bool = False,
                 data_preprocessor: Optional[dict] = None, init_cfg=None):
        architecture = copy.deepcopy(architecture)
        if data_preprocessor is not None:
            architecture.setdefault('data_preprocessor', copy.deepcopy(data_preprocessor))
        teacher = ROOT_MODELS.build(architecture) if isinstance(architecture, dict) else architecture
        super().__init__(init_cfg=init_cfg,
                         data_preprocessor=DistillDataPreprocessor(
                             getattr(teacher, 'data_preprocessor', nn.Identity()), augment))
        self.task = build_task(teacher, task)
        install_attention_capture(teacher)
        self.quant_cfg = QuantConfig.from_any(quant).with_task_starts(self.task)
        student = copy.deepcopy(teacher)
        quantize_model(student, self.quant_cfg)
        self.teacher = teacher
        self.student = student
        self._freeze_teacher()
        self.teacher_checkpoint = teacher_checkpoint
        self.allow_random_teacher = allow_random_teacher
        kd = dict(dict(temperature=1.0, loss_weight=1.0), **(kd or {}))
        self.kd_temperature, self.kd_weight = kd['temperature'], kd['loss_weight']
        # had=None (or loss_weight 0) switches L_HAD off; any dict, even empty, switches it on.
        self.had_loss = (HeadAttentionDistillLoss(**had)
                         if had is not None and had.get('loss_weight', 1.0) > 0 else None)
        self.student_losses = nn.ModuleList(build_student_loss(cfg) for cfg in (student_losses or []))
        self._register_load_state_dict_pre_hook(self._route_plain_state_dict)

    # ------------------------------------------------------------------ set-up
    def _freeze_teacher(self):
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode (dropout, BN)
        return self

    def init_weights(self):
        """Load the teacher checkpoint and copy it into the student (called by the runner)."""
        ckpt = self.teacher_checkpoint
        if ckpt is None:
            if not self.allow_random_teacher:
                raise ValueError('no teacher checkpoint: set model.teacher_checkpoint to the full-precision '
                                 'checkpoint (path or URL) of the model to quantize')
            print_log('QuantDistiller: using a randomly initialised teacher (allow_random_teacher=True)',
                      logger='current', level=30)
        else:
            if not (os.path.isfile(ckpt) or '://' in ckpt):
                raise FileNotFoundError(f'teacher checkpoint {ckpt!r} not found; set model.teacher_checkpoint to '
                                        'an existing file (e.g. --cfg-options model.teacher_checkpoint=PATH)')
            state = checkpoint_state_dict(load_checkpoint(ckpt))
            source = f'teacher checkpoint {ckpt}'
            if any(k.startswith('teacher.') for k in state):  # a distiller checkpoint: its teacher part,
                # loaded through this module so that nested keys are routed as in load_state_dict
                unexpected = load_matching_weights(self, {k: v for k, v in state.items() if k.startswith('teacher.')},
                                                   source, 'model.architecture', prefix='teacher.')
            else:
                unexpected = load_matching_weights(self.teacher, state, source, 'model.architecture')
            if unexpected:
                print_log(f'teacher checkpoint: ignored {len(unexpected)} unexpected keys, e.g. {unexpected[:3]}',
                          logger='current', level=30)
        self.student.load_state_dict(self.teacher.state_dict(), strict=False)
        self._freeze_teacher()

    def _route_plain_state_dict(self, state_dict, prefix, *args):
        """Runs before the children load their parts.

        * A plain task-model checkpoint (a student-only export, an FP checkpoint) goes to the student.
        * mmpretrain's TimmClassifier strips its ``model.`` prefix when saved on its own but not
          when nested (torch ignores a nested module's state_dict-hook result), while its load
          hook always adds one: drop the extra ``model.`` of nested keys so they round-trip.
        """
        own = [k for k in state_dict if k.startswith(prefix)]
        if own and not any(k[len(prefix):].startswith(('student.', 'teacher.')) for k in own):
            for key in own:
                state_dict[f'{prefix}student.{key[len(prefix):]}'] = state_dict.pop(key)
        for part in ('teacher', 'student'):
            if hasattr(getattr(self, part), '_add_state_dict_prefix'):
                nested = f'{prefix}{part}.model.'
                for key in [k for k in state_dict if k.startswith(nested)]:
                    state_dict[f'{prefix}{part}.{key[len(nested):]}'] = state_dict.pop(key)

    # ------------------------------------------------------------------ quantizers
    def calibrate(self, batches, only_uncalibrated=False):
        """Initialise activation quantizers on ``batches`` of preprocessed inputs (B, 3, H, W)
        (with ``only_uncalibrated``, only those that are not calibrated yet)."""
        calibrate_activations(self.student, batches, self.task.forward_tensor, only_uncalibrated)

    def quantizers_initialized(self):
        return quantizers_initialized(self.student)

    # ------------------------------------------------------------------ forward
    def forward(self, inputs, data_samples=None, mode='tensor'):
        if mode == 'loss':
            targets = data_samples.get('targets') if isinstance(data_samples, dict) else None
            return self.distill_losses(inputs, targets)
        if mode == 'tensor':
            return self.task.forward_tensor(self.student, inputs)
        if mode == 'predict':
            return self.student(inputs, data_samples, mode='predict')
        raise RuntimeError(f'Invalid mode "{mode}"')

    def distill_losses(self, inputs, targets=None):
        """L_T on normalised ``inputs`` (B, 3, H, W): {'loss_kd', 'loss_had'}, and the
        ``student_losses`` towards ``targets`` (the labels of a generated batch, (B,) or (B, C))."""
        fields = ('outputs',) if self.had_loss is not None else ()
        with torch.no_grad():
            with AttentionRecorder(self.teacher, fields=fields, detach=True) if fields else nullcontext() as t_rec:
                teacher_out = self.task.forward_tensor(self.teacher, inputs)
        # The task may run the student on the teacher's intermediate results (the detector's proposals).
        with AttentionRecorder(self.student, fields=fields) if fields else nullcontext() as s_rec:
            student_out = self.task.forward_student(self.student, inputs, teacher_out)
        losses = {}
        if self.kd_weight:
            kd = self.task.distill_loss(student_out, teacher_out, temperature=self.kd_temperature)
            if isinstance(kd, dict):
                losses.update({k: self.kd_weight * v for k, v in kd.items()})
            else:
                losses['loss_kd'] = self.kd_weight * kd
        if self.had_loss is not None:
            losses['loss_had'] = self.had_loss(t_rec.records, s_rec.records)
        for loss in self.student_losses:
            if targets is None:
                raise ValueError(f'{type(loss).__name__} (model.student_losses) needs batches with labels: a '
                                 'generator of train_cfg.generator (GDFQ, Qimera, AdaDFQ) makes them')
            losses[loss.name] = loss(student_out, teacher_out, targets)
        if not losses:
            raise ValueError('the student has no loss: model.kd.loss_weight is 0, L_HAD is off and there are no '
                             'model.student_losses')
        return losses

    def holdout_distance(self, dataset, batch_size=64) -> float:
        """The output distillation loss of the student against the teacher on a synthetic
        ``dataset`` (:meth:`output_distance`): how far the student is from the teacher, without
        real data."""
        def batches():
            for start in range(0, len(dataset), batch_size):
                stop = min(start + batch_size, len(dataset))
                pixels = torch.stack([dataset[i]['pixels'] for i in range(start, stop)])
                yield self.data_preprocessor(dict(pixels=pixels), False)['inputs']

        return self.output_distance(batches())

    @torch.no_grad()
    def output_distance(self, batches) -> float:
        """The task's KD term (summed over its parts) of the student against the teacher, in eval
        mode, averaged over the images of ``batches`` (preprocessed inputs (B, 3, H, W))."""
        was_training = self.student.training
        self.student.eval()
        total, count = 0.0, 0
        for inputs in batches:
            teacher_out = self.task.forward_tensor(self.teacher, inputs)
            student_out = self.task.forward_student(self.student, inputs, teacher_out)
            kd = self.task.distill_loss(student_out, teacher_out, temperature=self.kd_temperature)
            total += float(sum(kd.values()) if isinstance(kd, dict) else kd) * len(inputs)
            count += len(inputs)
        self.student.train(was_training)
        return total / max(count, 1)

    def val_step(self, data):
        with self._calibration_required():
            return self.student.val_step(data)

    def test_step(self, data):
        with self._calibration_required():
            return self.student.test_step(data)

    @contextmanager
    def _calibration_required(self):
        """Evaluating a student that was never calibrated is an error that names the fix (its
        quantizers would otherwise fit their ranges to the first test batch)."""
        try:
            yield
        except UncalibratedQuantizerError as err:
            missing = uncalibrated_quantizers(self.student)
            total = len(quantizers(self.student, (MinMaxActQuantizer, LSQActQuantizer)))
            raise UncalibratedQuantizerError(
                f'{len(missing)} of the student\'s {total} activation quantizers were never calibrated '
                f'(e.g. {missing[:3]}): the checkpoint holds no quantized student (a full-precision '
                'checkpoint?). Evaluate the student that tools/train.py saved (work_dirs/<config>/'
                'student_w<W>a<A>.pth or an iter_<N>.pth), or make one without fine-tuning: tools/train.py '
                'CONFIG --cfg-options model.teacher_checkpoint=CKPT train_cfg.max_iters=0') from err

    def student_state_dict(self):
        """The student's weights and quantizer state, with the task model's own keys."""
        return self.student.state_dict()

