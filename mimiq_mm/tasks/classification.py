"""Image classification: mmpretrain ImageClassifier / TimmClassifier, or a plain nn.Module
classifier returning logits (B, C)."""
import torch.nn as nn

from ..losses import ClassPriorLoss, KLDistillLoss
from ..registry import TASKS
from .base import TaskAdapter, is_openmmlab_model


def find_num_classes(module: nn.Module) -> int:
    """The first ``num_classes`` attribute in ``module``, else the width of its last Linear."""
    for m in module.modules():
        n = getattr(m, 'num_classes', None)
        if isinstance(n, int) and n > 0:
            return n
    last_linear = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if last_linear:
        return last_linear[-1].out_features
    raise ValueError('cannot tell the number of classes of the teacher; set synthesis.num_classes')


@TASKS.register_module(name='classification')
class ClassifierTask(TaskAdapter):
    """Logits (B, C); L_CL is cross entropy to the target labels, L_KD the KL of the logits.

    The catch-all task: any model that is neither a segmentor nor a detector.
    """
    name = 'classification'
    priority = -100

    def __init__(self):
        self._prior = ClassPriorLoss()

    @classmethod
    def matches(cls, model):
        return True

    def forward_tensor(self, model, inputs):
        out = model(inputs, mode='tensor') if is_openmmlab_model(model) else model(inputs)
        if isinstance(out, (tuple, list)):  # heads returning (logits, ...) e.g. distilled DeiT
            out = out[0]
        return out

    def num_classes(self, model):
        return find_num_classes(getattr(model, 'head', model))

    def prior_loss(self, outputs, targets):
        return self._prior(outputs, targets)

    def distill_loss(self, student_outputs, teacher_outputs, temperature=1.0):
        return KLDistillLoss(temperature=temperature)(student_outputs, teacher_outputs)
