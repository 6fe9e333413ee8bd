"""Logit distillation loss L_KL (MimiQ paper, Eq. 13)."""
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .ssim import upcast_half


@MODELS.register_module()
class KLDistillLoss(nn.Module):
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), summed over classes and averaged over samples.

    Works for classification logits (B, C) and dense logits (B, C, *spatial) (class dim 1; the
    KL is then averaged over batch and pixels). The T² factor keeps gradient magnitudes
    comparable across temperatures. The teacher is detached.

    Args:
        temperature (float): softening temperature T.
        loss_weight (float): multiplies the result.
    """

    def __init__(self, temperature=1.0, loss_weight=1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'temperature must be positive, got {temperature}')
        self.temperature = float(temperature)
        self.loss_weight = loss_weight

    def extra_repr(self):
        return f'temperature={self.temperature}, loss_weight={self.loss_weight}'

    def forward(self, student_logits, teacher_logits, weight=None):
        """
        Args:
            student_logits (Tensor): (B, C) or (B, C, *spatial).
            teacher_logits (Tensor): same shape.
            weight (Tensor, optional): (B, *spatial) non-negative weights of the samples / pixels;
                the loss is then their weighted mean.

        Returns:
            Tensor: scalar loss.
        """
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f'student logits {tuple(student_logits.shape)} and teacher logits '
                             f'{tuple(teacher_logits.shape)} differ in shape')
        temp = self.temperature
        log_s = F.log_softmax(upcast_half(student_logits) / temp, dim=1)
        log_t = F.log_softmax(upcast_half(teacher_logits.detach()) / temp, dim=1)
        per_sample = F.kl_div(log_s, log_t, reduction='none', log_target=True).sum(dim=1)  # (B, *spatial)
        if weight is None:
            return self.loss_weight * temp ** 2 * per_sample.mean()
        if weight.shape != per_sample.shape:
            raise ValueError(f'weight {tuple(weight.shape)} must have the shape of the logits without the class '
                             f'dim, {tuple(per_sample.shape)}')
        weight = weight.to(per_sample)
        return self.loss_weight * temp ** 2 * (per_sample * weight).sum() / weight.sum().clamp_min(1e-12)
