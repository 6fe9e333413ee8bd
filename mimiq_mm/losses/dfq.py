"""Losses of the generator-based data-free baselines (GDFQ, Qimera, AdaDFQ) and of PSAQ-ViT V2's
sample updates: what their generators (or samples) minimise and what their quantized students
add to the distillation.

Student-side losses are registered modules with one signature, ``loss(student_logits,
teacher_logits, targets)``, which :class:`mimiq_mm.models.QuantDistiller` runs from its
``student_losses`` list on batches that carry ``targets`` (a generator's labels, one-hot or
soft (B, C)).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .ssim import upcast_half


def as_soft_targets(targets, num_classes):
    """(B,) class indices or (B, C) class weights -> (B, C) float class weights."""
    if targets.dim() == 1:
        return F.one_hot(targets.long(), num_classes).float()
    return targets.float()


def soft_cross_entropy(logits, targets):
    """Cross entropy of (B, C) logits towards (B,) labels or (B, C) soft targets (Qimera's
    superposed samples carry a mixture of two classes), averaged over the batch."""
    logits = upcast_half(logits)
    targets = as_soft_targets(targets, logits.shape[1]).to(logits.device)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def difference_entropy(teacher_logits, student_logits, temperature=1.0):
    """AdaDFQ's adaptability of each sample: the entropy of softmax((t - s) / T), (B,). Low when
    teacher and student disagree sharply on one class, log C when they differ by a constant."""
    z = (upcast_half(teacher_logits) - upcast_half(student_logits)) / temperature
    return -(F.softmax(z, dim=1) * F.log_softmax(z, dim=1)).sum(dim=1)


def normalised_adaptability(teacher_logits, student_logits):
    """AdaDFQ's normalised adaptability h' = (h - min h) / (log C - min h) of each sample of the
    batch (h: :func:`difference_entropy` at T = 1), in [0, 1]; the least adaptable sample of the
    batch is at 0 by construction."""
    h = difference_entropy(teacher_logits, student_logits)
    max_entropy = math.log(teacher_logits.shape[1])
    return (h - h.min()) / (max_entropy - h.min()).clamp_min(1e-12)


def adaptability_margin_loss(teacher_logits, student_logits, lower, upper):
    """AdaDFQ's margin loss: the samples' normalised adaptability h' (:func:`normalised_adaptability`)
    is held within [lower, upper] (λ_l, λ_u): mean(relu(λ_l - h')) + mean(relu(h' - λ_u)); zero for
    samples inside the band, growing linearly outside it."""
    if not 0 <= lower <= upper <= 1:
        raise ValueError(f'AdaDFQ margins need 0 <= lower <= upper <= 1, got lower={lower}, upper={upper}')
    h = normalised_adaptability(teacher_logits, student_logits)
    return F.relu(lower - h).mean() + F.relu(h - upper).mean()


@MODELS.register_module()
class LabelCrossEntropyLoss(nn.Module):
    """The student's cross entropy towards the generator's labels (GDFQ; Qimera's soft labels of
    superposed samples): ``loss_weight · CE(student, targets)``. Classification logits only.

    Args:
        loss_weight (float): multiplies the result.
    """
    name = 'loss_ce'

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, student_logits, teacher_logits, targets):
        if not torch.is_tensor(student_logits) or student_logits.dim() != 2:
            raise ValueError('LabelCrossEntropyLoss needs classification logits (B, C) (GDFQ / Qimera students)')
        return self.loss_weight * soft_cross_entropy(student_logits, targets)


@MODELS.register_module()
class DifferenceEntropyLoss(nn.Module):
    """AdaDFQ's student loss, its side of the zero-sum game with the generator:
    ``-loss_weight · T² · mean H(softmax((t - s) / T))``. Maximising the entropy of the difference
    makes the student's logits the teacher's up to a constant (it agrees), where the generator
    drives the difference to one class (it disagrees). Classification logits only.

    Args:
        temperature (float): T (AdaDFQ's code: 5 on ImageNet, 20 on CIFAR).
        loss_weight (float): multiplies the result.
    """
    name = 'loss_agreement'

    def __init__(self, temperature=5.0, loss_weight=1.0):
        super().__init__()
        self.temperature = float(temperature)
        self.loss_weight = loss_weight

    def forward(self, student_logits, teacher_logits, targets=None):
        if not torch.is_tensor(student_logits) or student_logits.dim() != 2:
            raise ValueError('DifferenceEntropyLoss needs classification logits (B, C) (AdaDFQ students)')
        t = self.temperature
        entropy = difference_entropy(teacher_logits.detach(), student_logits, t)
        return -self.loss_weight * t * t * entropy.mean()


def output_divergence(teacher_out, student_out):
    """KL(teacher ‖ student) of a task's outputs with gradients through both (PSAQ-ViT V2's sample
    update makes them disagree): classification logits (B, C), or a segmentor's dict of dense
    logits ('seg', and 'aux' heads at their training weight 0.4, averaged over pixels)."""
    def kl(t, s):
        log_t = F.log_softmax(upcast_half(t), dim=1)
        log_s = F.log_softmax(upcast_half(s), dim=1)
        return F.kl_div(log_s, log_t, reduction='none', log_target=True).sum(dim=1).mean()

    if torch.is_tensor(teacher_out):
        return kl(teacher_out, student_out)
    if isinstance(teacher_out, dict) and 'seg' in teacher_out:
        total = kl(teacher_out['seg'], student_out['seg'])
        aux_t, aux_s = teacher_out.get('aux', []), student_out.get('aux', [])
        if aux_t:
            total = total + 0.4 * sum(kl(t, s) for t, s in zip(aux_t, aux_s)) / len(aux_t)
        return total
    raise ValueError('the teacher-student divergence of sample updates supports classifiers and segmentors '
                     f'(got outputs of type {type(teacher_out).__name__})')
