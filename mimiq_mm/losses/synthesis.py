"""Image-synthesis losses of MimiQ's L_G besides L_IHC: total variation (L_TV) and the class
prior (L_CL). PSAQ-ViT's patch-similarity entropy (a baseline) is in :mod:`.psaq`."""
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .ssim import upcast_half


def _neighbour_differences(images):
    """Differences to the right, down, down-right and down-left neighbours of (B, C, H, W)."""
    return (images[:, :, :, 1:] - images[:, :, :, :-1],
            images[:, :, 1:, :] - images[:, :, :-1, :],
            images[:, :, 1:, 1:] - images[:, :, :-1, :-1],
            images[:, :, 1:, :-1] - images[:, :, :-1, 1:])


@MODELS.register_module()
class TotalVariationLoss(nn.Module):
    """Total variation over right, down and both diagonal neighbours (paper Eq. 6).

    Reductions:

    * ``'sum'`` (default): squared differences summed per image (all channels, pixels and the
      four directions), then averaged over the batch; the magnitude β = 2.5e-5 is tuned for.
    * ``'mean'``: mean squared difference of each direction, summed over the four directions.
    * ``'norm'``: DeepInversion-style Σ_directions ‖diff‖₂ (L2 norms of the whole batch tensor,
      not squared).

    Args:
        reduction (str): 'sum', 'mean' or 'norm'.
        loss_weight (float): multiplies the result (β of Eq. 10).
    """

    def __init__(self, reduction='sum', loss_weight=1.0):
        super().__init__()
        if reduction not in ('sum', 'mean', 'norm'):
            raise ValueError(f"reduction must be 'sum', 'mean' or 'norm', got {reduction!r}")
        self.reduction = reduction
        self.loss_weight = loss_weight

    def extra_repr(self):
        return f'reduction={self.reduction}, loss_weight={self.loss_weight}'

    def forward(self, images):
        """
        Args:
            images (Tensor): (B, C, H, W).

        Returns:
            Tensor: scalar loss.
        """
        diffs = _neighbour_differences(upcast_half(images))
        if self.reduction == 'sum':
            loss = sum(d.pow(2).flatten(1).sum(dim=1) for d in diffs).mean()
        elif self.reduction == 'mean':
            loss = sum(d.pow(2).mean() for d in diffs)
        else:
            loss = sum(d.norm() for d in diffs)
        return self.loss_weight * loss


@MODELS.register_module()
class ClassPriorLoss(nn.Module):
    """Cross entropy towards a target class per image (L_CL of Eq. 10).

    Classification logits (B, C) use the targets (B,) directly. Dense logits (B, C, H, W) (a
    segmentor teacher) broadcast each image's target class to every pixel and average the
    per-pixel cross entropy.

    Args:
        loss_weight (float): multiplies the result (α of Eq. 10).
    """

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, logits, targets):
        """
        Args:
            logits (Tensor): (B, C) or (B, C, *spatial).
            targets (Tensor): (B,) integer class indices.

        Returns:
            Tensor: scalar loss.
        """
        logits = upcast_half(logits)
        targets = targets.long()
        if logits.dim() > 2:
            targets = targets.view(-1, *([1] * (logits.dim() - 2))).expand(logits.shape[0], *logits.shape[2:])
        return self.loss_weight * F.cross_entropy(logits, targets)
