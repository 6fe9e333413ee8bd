"""Head-wise attention distillation loss L_HAD (MimiQ paper, Eq. 12)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .ssim import ssim_from_moments, upcast_half
from .utils import AutocastFreeFunction, require_field, select_records

HAD_METRICS = ('dssim', 'mse', 'l1', 'kl')


@MODELS.register_module()
class HeadAttentionDistillLoss(nn.Module):
    """L_HAD = 1/(L·N) Σ_l Σ_i g(H^T_{l,i}, H^S_{l,i}), also averaged over the batch.

    ``H_{l,i}`` is head i's output attn·v of layer l, (N', D) after dropping prefix tokens.

    Metrics ``g`` (each computed per (sequence, head) over the head's N'·D values):

    * ``'dssim'`` (paper): 1 - |SSIM| with whole-map statistics. Head outputs are not in [0, 1],
      so the SSIM constants are scaled by the teacher map's dynamic range L = max - min per
      (sequence, head): c1 = (k1·L)², c2 = (k2·L)² (k1 = 0.01, k2 = 0.03), as SSIM prescribes for a
      data range L. This keeps the metric invariant to the scale of the activations.
    * ``'mse'``, ``'l1'``: mean squared / absolute difference.
    * ``'kl'``: KL(softmax(teacher) ‖ softmax(student)) over the flattened values.

    Teacher tensors are targets (detached).

    Args:
        metric (str): one of 'dssim', 'mse', 'l1', 'kl'.
        layers (Sequence[int] | None): indices into the record lists (negatives allowed).
        k1, k2 (float): SSIM constants relative to the data range.
        min_range (float): floor of L so constant teacher maps do not give 0/0.
        loss_weight (float): multiplies the result (γ of Eq. 13).
    """

    def __init__(self, metric='dssim', layers=None, k1=0.01, k2=0.03, min_range=1e-6, loss_weight=1.0):
        super().__init__()
        if metric not in HAD_METRICS:
            raise ValueError(f'metric must be one of {HAD_METRICS}, got {metric!r}')
        self.metric = metric
        self.layers = None if layers is None else list(layers)
        self.k1 = float(k1)
        self.k2 = float(k2)
        self.min_range = float(min_range)
        self.loss_weight = loss_weight

    def extra_repr(self):
        return f'metric={self.metric}, layers={self.layers}, loss_weight={self.loss_weight}'

    def forward(self, teacher_records, student_records):
        """
        Args:
            teacher_records, student_records (list[AttentionRecord]): matching records with
                ``outputs`` (B', H, N, D).

        Returns:
            Tensor: scalar loss.
        """
        teacher_records, student_records = list(teacher_records), list(student_records)
        if len(teacher_records) != len(student_records):
            raise ValueError(f'teacher has {len(teacher_records)} attention records but student has '
                             f'{len(student_records)}')
        teacher_sel = select_records(teacher_records, self.layers)
        student_sel = select_records(student_records, self.layers)
        if not teacher_sel:
            raise ValueError('HeadAttentionDistillLoss got no attention records')
        per_layer = [self._layer_distance(t, s) for t, s in zip(teacher_sel, student_sel)]
        return self.loss_weight * torch.stack(per_layer).mean()

    def _layer_distance(self, teacher, student):
        t_out = require_field(teacher, 'outputs')
        s_out = require_field(student, 'outputs')
        if t_out.shape != s_out.shape:
            raise ValueError(f"attention outputs differ in shape: teacher '{teacher.name}' {tuple(t_out.shape)} "
                             f"vs student '{student.name}' {tuple(s_out.shape)}")
        prefix = teacher.layout.num_prefix_tokens
        if student.layout.num_prefix_tokens != prefix:
            raise ValueError(f"teacher '{teacher.name}' and student '{student.name}' disagree on prefix tokens "
                             f'({prefix} vs {student.layout.num_prefix_tokens})')
        if self.metric == 'dssim':
            # (B', H, N, D) -> (B', H, N'·D): one map per (sequence, head); a view, no copy.
            t = t_out.detach()[:, :, prefix:, :].flatten(2)
            s = s_out[:, :, prefix:, :].flatten(2)
            return self._dssim(t, s).mean()
        t = upcast_half(t_out.detach()[:, :, prefix:, :]).flatten(2)
        s = upcast_half(s_out[:, :, prefix:, :]).flatten(2)
        if self.metric == 'mse':
            dist = (t - s).pow(2).mean(dim=-1)
        elif self.metric == 'l1':
            dist = (t - s).abs().mean(dim=-1)
        else:  # kl, teacher distribution as target
            dist = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction='none',
                            log_target=True).sum(dim=-1)
        return dist.mean()  # over sequences and heads

    def _dssim(self, t, s):
        """1 - |SSIM(t, s)| per (sequence, head) with whole-map fp32 statistics: (B', H).

        Same value as ``1 - |global_ssim(t, s, c1, c2)|`` on fp32 copies, computed from the maps'
        moments (:class:`_StudentMoments`) so only the per-map statistics join the autograd graph.
        """
        with torch.no_grad(), torch.autocast(t.device.type, enabled=False):
            t32 = upcast_half(t)
            var_t, mu_t = _var_mean(t32)
            if t32.is_cuda:
                low, high = torch.aminmax(t32, dim=-1)
            else:
                low, high = t32.amin(dim=-1), t32.amax(dim=-1)
            data_range = (high - low).clamp_min(self.min_range)                  # (B', H)
        c1 = (self.k1 * data_range).pow(2)
        c2 = (self.k2 * data_range).pow(2)
        mu_s, var_s, cov = _StudentMoments.apply(s, t32, mu_t)
        return 1 - ssim_from_moments(mu_t, mu_s, var_t, var_s, cov, c1, c2).abs()


def _var_mean(x):
    """Population variance and mean over the last dimension (two-pass, fp32 inputs)."""
    if x.is_cuda:
        return torch.var_mean(x, dim=-1, correction=0)  # one fused pass
    mu = x.mean(dim=-1)
    xc = x - mu.unsqueeze(-1)
    return _row_dot(xc, xc).div_(x.shape[-1]), mu  # the CPU var_mean kernel is several times slower


def _row_dot(a, b):
    """Σ_k a[..., k]·b[..., k]."""
    if a.is_cuda:
        return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).view(a.shape[:-1])  # batched GEMV, no temporary
    return torch.linalg.vecdot(a, b)


class _StudentMoments(AutocastFreeFunction):
    """Mean and variance of the student maps ``s`` and their covariance with the teacher maps
    ``t`` (both (..., M), any float dtype; computed in at least fp32), differentiable in ``s`` only;
    ``mu_t`` is the teacher maps' mean.

    Forward: one variance/mean pass over s and one centred dot product with t. Backward:
    ∂L/∂s = (g_μ + 2 g_var (s - μ_s) + g_cov (t - μ_t)) / M, one fused pass; nothing of size M is
    saved beyond references to the inputs.
    """

    @staticmethod
    def _forward(ctx, s, t, mu_t):
        num = s.shape[-1]
        s32, t32 = upcast_half(s), upcast_half(t)
        var_s, mu_s = _var_mean(s32)
        cov = _row_dot(t32 - mu_t.unsqueeze(-1), s32).div_(num)
        ctx.save_for_backward(s, t, mu_s, mu_t)
        return mu_s, var_s, cov

    @staticmethod
    def _backward(ctx, grad_mu, grad_var, grad_cov):
        s, t, mu_s, mu_t = ctx.saved_tensors
        num = s.shape[-1]
        zeros = torch.zeros_like(mu_s)
        grad_mu = zeros if grad_mu is None else grad_mu
        grad_var = zeros if grad_var is None else grad_var
        grad_cov = zeros if grad_cov is None else grad_cov
        a = (2.0 / num) * grad_var                                    # coefficient of s
        b = grad_cov / num                                             # coefficient of t
        c = grad_mu / num - a * mu_s - b * mu_t                        # constant
        grad = torch.addcmul(c.unsqueeze(-1), s, a.unsqueeze(-1))      # fp32 (type promotion)
        grad.addcmul_(t, b.unsqueeze(-1))
        return grad.to(s.dtype), None, None
