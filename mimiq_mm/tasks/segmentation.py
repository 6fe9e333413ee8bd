"""Semantic segmentation: mmseg ``EncoderDecoder`` models (UPerNet etc.).

Synthesis prior (``train_cfg.synthesis.prior`` None / 'head'): per-pixel cross entropy of the
decode head's logits towards the image's target class. Distillation: per-pixel KL between
teacher and student class distributions of the decode head, plus the auxiliary head's per-pixel
KL (weight 0.4, its training weight; it keeps every parameter in the graph and calibrates the
auxiliary head's quantizers). BatchNorm and dropout of the student stay in eval mode
(:func:`freeze_stochastic_and_norm`). ``class_balance=True`` weights the pixels so that every
class the teacher predicts in the batch carries the same share of the KL (not in the paper: a
test of why real images, mostly background, distil a less faithful student).
"""
import torch
import torch.nn as nn

from ..losses import ClassPriorLoss, KLDistillLoss
from ..registry import TASKS
from .base import TaskAdapter, freeze_stochastic_and_norm


@TASKS.register_module(name='segmentation')
class SegmentorTask(TaskAdapter):
    """mmseg ``EncoderDecoder`` (UPerNet etc.).

    ``forward_tensor`` returns ``dict(seg=decode logits (B, C, h, w), aux=[auxiliary logits])``.

    Args:
        aux_weight (float): weight of the auxiliary heads' per-pixel KL (0 drops it).
        class_balance (bool): weight each pixel's KL by the inverse frequency, in the batch, of the
            class the teacher predicts there (each predicted class then carries an equal share);
            False (the paper) averages over pixels.
    """
    name = 'segmentation'
    priority = 10

    def __init__(self, aux_weight=0.4, class_balance=False):
        self.aux_weight = aux_weight
        self.class_balance = class_balance
        self._prior = ClassPriorLoss()

    @classmethod
    def matches(cls, model):
        return hasattr(model, 'decode_head') and hasattr(model, 'extract_feat')

    def num_classes(self, model):
        head = model.decode_head
        head = head[-1] if isinstance(head, nn.ModuleList) else head
        return head.num_classes

    @staticmethod
    def _aux_heads(model):
        aux = getattr(model, 'auxiliary_head', None)
        if aux is None:
            return []
        return list(aux) if isinstance(aux, nn.ModuleList) else [aux]

    def forward_backbone(self, model, inputs):
        return model.extract_feat(inputs)

    def forward_prior(self, model, inputs):
        """Decode-head logits only (the synthesis prior)."""
        if isinstance(model.decode_head, nn.ModuleList):  # cascade: the model's own path
            return model(inputs, mode='tensor')
        return model.decode_head.forward(model.extract_feat(inputs))

    def forward_tensor(self, model, inputs):
        if isinstance(model.decode_head, nn.ModuleList):
            return dict(seg=model(inputs, mode='tensor'), aux=[])
        feats = model.extract_feat(inputs)
        out = dict(seg=model.decode_head.forward(feats), aux=[])
        if self.aux_weight:
            out['aux'] = [head.forward(feats) for head in self._aux_heads(model)]
        return out

    def forward_student(self, model, inputs, teacher_outputs):
        freeze_stochastic_and_norm(model)
        return self.forward_tensor(model, inputs)

    def prior_loss(self, outputs, targets):
        logits = outputs['seg'] if isinstance(outputs, dict) else outputs
        return self._prior(logits, targets)

    @staticmethod
    def class_balanced_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) logits -> (B, h, w) pixel weights ∝ 1 / (pixels of the teacher's class in
        the batch), mean 1."""
        predicted = teacher_logits.argmax(dim=1)
        counts = torch.bincount(predicted.flatten(), minlength=teacher_logits.shape[1]).to(teacher_logits.dtype)
        present = (counts > 0).sum()
        return (predicted.numel() / present) / counts[predicted]

    def distill_loss(self, student_outputs, teacher_outputs, temperature=1.0):
        kl = KLDistillLoss(temperature=temperature)

        def pixel_kl(student, teacher):
            weight = self.class_balanced_weights(teacher.detach()) if self.class_balance else None
            return kl(student, teacher, weight)

        losses = dict(loss_kd=pixel_kl(student_outputs['seg'], teacher_outputs['seg']))
        aux_s, aux_t = student_outputs.get('aux', []), teacher_outputs.get('aux', [])
        if self.aux_weight and aux_s:
            losses['loss_kd_aux'] = self.aux_weight * sum(pixel_kl(s, t) for s, t in zip(aux_s, aux_t)) / len(aux_s)
        return losses
