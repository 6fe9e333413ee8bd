"""What "the model's output" means for each task, for synthesis priors and distillation.

A task adapter knows how to run a task model on a batch of normalised images and get the tensor
that the teacher's knowledge is read from (classifier logits, per-pixel segmentation logits,
detector features), how to turn that into a synthesis prior against target labels, and how to
compare teacher and student outputs.
"""
import torch.nn as nn

from ..losses import ClassPriorLoss, KLDistillLoss


class TaskAdapter:
    """Interface. ``model`` is an OpenMMLab task model (or any nn.Module for classifiers)."""
    name = ''

    @staticmethod
    def matches(model) -> bool:
        raise NotImplementedError

    def forward_tensor(self, model, inputs):
        """Run ``model`` on normalised images (B, 3, H, W); returns the task output tensor(s)."""
        raise NotImplementedError

    def num_classes(self, model):
        raise NotImplementedError

    def prior_loss(self, outputs, targets):
        """Synthesis prior L_CL: how well the outputs express the target labels (B,)."""
        raise NotImplementedError

    def distill_loss(self, student_outputs, teacher_outputs, temperature=1.0):
        """Output distillation term between student and teacher outputs."""
        raise NotImplementedError


def _find_num_classes(module):
    for m in module.modules():
        n = getattr(m, 'num_classes', None)
        if isinstance(n, int) and n > 0:
            return n
    last_linear = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if last_linear:
        return last_linear[-1].out_features
    raise ValueError('cannot tell the number of classes of the teacher; set synthesis.num_classes')


class ClassifierTask(TaskAdapter):
    """mmpretrain ImageClassifier / TimmClassifier, or a plain classifier nn.Module (logits (B, C))."""
    name = 'classification'

    def __init__(self):
        self._prior = ClassPriorLoss()

    @staticmethod
    def matches(model):
        return not (SegmentorTask.matches(model) or DetectorTask.matches(model))

    def forward_tensor(self, model, inputs):
        if _is_mm_model(model):
            out = model(inputs, mode='tensor')
        else:
            out = model(inputs)
        if isinstance(out, (tuple, list)):  # heads returning (logits, ...) e.g. distilled DeiT
            out = out[0]
        return out

    def num_classes(self, model):
        return _find_num_classes(getattr(model, 'head', model))

    def prior_loss(self, outputs, targets):
        return self._prior(outputs, targets)

    def distill_loss(self, student_outputs, teacher_outputs, temperature=1.0):
        return KLDistillLoss(temperature=temperature)(student_outputs, teacher_outputs)


def _is_mm_model(model):
    from mmengine.model import BaseModel
    return isinstance(model, BaseModel)


# Dense tasks live in .dense (they import the base classes above).
from .dense import DetectorTask, SegmentorTask  # noqa: E402

TASKS = [SegmentorTask, DetectorTask, ClassifierTask]


def build_task(model, task=None):
    """The task adapter for ``model`` (auto-detected unless ``task`` names one).

    ``task`` may also be a dict ``dict(type=NAME_OR_'auto', **options)``; the options go to the
    adapter's constructor (e.g. ``dict(type='detection', num_rois=256)``).
    """
    options = {}
    if isinstance(task, dict):
        options = dict(task)
        task = options.pop('type', 'auto')
    if task not in (None, 'auto'):
        for cls in TASKS:
            if cls.name == task:
                return cls(**options)
        raise ValueError(f'unknown task {task!r}; choose one of {[c.name for c in TASKS]} or "auto"')
    for cls in TASKS:
        if cls.matches(model):
            return cls(**options)
    raise ValueError(f'cannot tell the task of {type(model).__name__}')
