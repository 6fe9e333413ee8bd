"""Inter-head coherency loss L_IHC (MimiQ paper, Eq. 8-11)."""
import torch
import torch.nn as nn
from pytorch_msssim import ssim as windowed_ssim

from ..registry import MODELS
from .ihc_cpu import IHCLayerCPU, kernel_applies, load_kernel
from .ssim import DEFAULT_C1, DEFAULT_C2, minmax_normalize, ssim_from_moments
from .utils import AutocastFreeFunction, require_field, select_records

SIMILARITIES = ('abs', 'squared')


def spatial_scores(record):
    """(B', H, Q, K) view of the spatial query/key block of ``record.scores``."""
    scores = require_field(record, 'scores')
    layout = record.layout
    prefix = layout.num_prefix_tokens
    spatial = scores[:, :, prefix:, prefix:]
    if spatial.shape[-1] != layout.num_spatial_tokens or spatial.shape[-2] != layout.num_spatial_tokens:
        raise ValueError(f"record '{record.name}': scores {tuple(scores.shape)} do not match layout grid "
                         f'{layout.grid} with {prefix} prefix tokens')
    return spatial


def spatial_head_maps(record, eps=1e-8):
    """Per-query head maps over spatial keys, min-max normalised per head.

    Prefix tokens (class / distillation) are dropped as query and as key.

    Args:
        record (AttentionRecord): with ``scores`` (B', H, N, N).
        eps (float): guard of the min-max division.

    Returns:
        Tensor: (B', Q, H, K) fp32 maps in [0, 1], Q = K = h·w spatial tokens in row-major
        order of ``record.layout.grid``.
    """
    spatial = spatial_scores(record)
    # (B', H, Q, K) -> (B', Q, H, K): the heads of one query are compared with each other.
    return minmax_normalize(spatial.transpose(1, 2), dim=-1, eps=eps)


class _CenteredHeadGram(AutocastFreeFunction):
    """Per-query statistics of the heads' spatial score rows, in fp32, with a hand-written backward.

    Input: the scores (B', H, N, N) of one attention call (any float dtype) and the number of
    prefix tokens p; x = scores[:, :, p:, p:] is (B', H, Q, K). Outputs, per (sequence, query):

    * ``cov`` (B', Q, H, H): covariances over the keys between the heads' rows, xc·xcᵀ / K with
      xc = x - mean_k(x);
    * ``low``, ``high`` (B', Q, H): min and max over the keys of xc.

    The forward writes xc once, in fp32 and (B', Q, H, K) order (the upcast, the transpose and the
    centring in one pass), and keeps it for the backward, which is one batched matmul (the
    centring and min/max terms enter as its broadcast additive input), two scatters of B'·Q·H
    values and the write into the scores' gradient. No autograd graph of the elementwise chain,
    and none of its saved temporaries, is built.

    At an exact tie for a row's minimum (maximum), its gradient goes to one of the tied keys, as
    for ``torch.min(dim)``; ``amin`` would split it evenly. Both are valid subgradients and the
    loss value is the same; the split would cost several extra passes over the maps.
    """

    @staticmethod
    def _forward(ctx, scores, prefix):
        x = scores[:, :, prefix:, prefix:]
        b, h, q, k = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)
        mean = x.mean(dim=-1, keepdim=True, dtype=acc)
        xc = torch.empty((b, q, h, k), dtype=acc, device=x.device)
        torch.sub(x.transpose(1, 2), mean.transpose(1, 2), out=xc)
        low, arg_low = xc.min(dim=-1)
        high, arg_high = xc.max(dim=-1)
        cov = torch.matmul(xc, xc.transpose(-1, -2)).div_(k)
        ctx.save_for_backward(xc, arg_low, arg_high)
        ctx.mark_non_differentiable(arg_low, arg_high)
        ctx.prefix = prefix
        ctx.scores_shape, ctx.scores_dtype = scores.shape, scores.dtype
        return cov, low, high

    @staticmethod
    def _backward(ctx, grad_cov, grad_low, grad_high):
        xc, arg_low, arg_high = ctx.saved_tensors
        b, q, h, k = xc.shape
        # A row's min / max passes its gradient to its arg-min / arg-max key, minus the row mean
        # of that (the Jacobian of the centring); d cov / d x = (G + Gᵀ)·xc / K has zero row mean.
        grads = [(g, i) for g, i in ((grad_low, arg_low), (grad_high, arg_high)) if g is not None]
        shift = sum(g for g, _ in grads) / -k if grads else xc.new_zeros((b, q, h))
        if grad_cov is not None:
            sym = (grad_cov + grad_cov.transpose(-1, -2)).reshape(b * q, h, h)
            grad = torch.baddbmm(shift.reshape(b * q, h, 1), sym, xc.view(b * q, h, k), alpha=1.0 / k)
            grad = grad.view(b, q, h, k)
        else:
            grad = shift.unsqueeze(-1).expand(b, q, h, k).contiguous()
        for g, index in grads:
            grad.scatter_add_(-1, index.unsqueeze(-1), g.unsqueeze(-1).to(grad.dtype))
        p = ctx.prefix
        full = torch.empty(ctx.scores_shape, dtype=ctx.scores_dtype, device=xc.device)
        full[:, :, :p].zero_()  # only the prefix rows and columns: the rest is written next
        full[:, :, p:, :p].zero_()
        full[:, :, p:, p:].copy_(grad.transpose(1, 2))
        return full, None


def head_coherency(scores, prefix=0, similarity='abs', c1=DEFAULT_C1, c2=DEFAULT_C2, eps=1e-8):
    """D_q of paper Eq. 9 for every (sequence, query): the mean f(SSIM) over all H² pairs of the
    heads' min-max normalised score rows (self-pairs included), with global (whole-row) SSIM.

    This is the one definition of L_IHC's global-SSIM term: the loss is ``1 - D_q`` averaged
    over sequences, queries and layers, the analysis tools report ``D_q`` per image, and the C++
    kernel of :mod:`.ihc_cpu` computes the same values on float32 CPU scores.

    Min-max normalisation is affine per (sequence, head, query) row, m = (x - lo) / r with
    r = hi - lo + eps, so the statistics of the normalised rows follow from those of the raw
    scores: μ_m = (μ_x - lo) / r and cov_m(i, j) = cov_x(i, j) / (r_i r_j). Only the centred head
    Gram matrix per query (one batched matmul, :class:`_CenteredHeadGram`), the row minima and
    maxima and the means are computed over the keys (in fp32); the normalised maps are never built.

    Args:
        scores (Tensor): (B', H, N, K') pre-softmax scores (or any per-head rows); the first
            ``prefix`` queries and keys (class / distillation tokens) are dropped.
        prefix (int): prefix tokens.
        similarity (str): f = |SSIM| ('abs', paper) or SSIM² ('squared').
        c1, c2 (float): SSIM constants.
        eps (float): guard of the min-max normalisation.

    Returns:
        Tensor: (B', Q) values in [0, 1], at least fp32.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f'similarity must be one of {SIMILARITIES}, got {similarity!r}')
    cov, low, high = _CenteredHeadGram.apply(scores, prefix)
    r = high - low + eps
    mu = -low / r                                                      # mean of the normalised row
    cov = cov / (r.unsqueeze(-1) * r.unsqueeze(-2))
    var = cov.diagonal(dim1=-2, dim2=-1)
    ssim = ssim_from_moments(mu.unsqueeze(-1), mu.unsqueeze(-2), var.unsqueeze(-1), var.unsqueeze(-2), cov, c1, c2)
    ssim = ssim.abs() if similarity == 'abs' else ssim.pow(2)
    return ssim.mean(dim=(-2, -1))


@MODELS.register_module()
class InterHeadCoherencyLoss(nn.Module):
    """L_IHC = 1/(L·Q) Σ_l Σ_q (1 - D_{l,q}),  D_q = 1/H² Σ_i Σ_j f(SSIM(A_{q,i}, A_{q,j})).

    ``A_{q,i}`` is head i's pre-softmax score row of spatial query q over the spatial keys,
    min-max normalised. The loss is also averaged over the batch (B' sequences; Swin windows
    count as sequences).

    Args:
        similarity (str): f: ``'abs'`` = |SSIM| (paper) or ``'squared'`` = SSIM² (code lineage).
            Both score an inverted map as similar.
        ssim (str): ``'global'`` (whole-map statistics, C1 = 0.01², C2 = 0.03²; batched over all
            head pairs) or ``'windowed'`` (Gaussian-window SSIM of pytorch_msssim on the maps
            reshaped to the (h, w) grid, data range 1).
        layers (Sequence[int] | None): indices into the record list (negatives allowed); None = all.
        win_size (int): odd Gaussian window side for ``ssim='windowed'``; must not exceed the
            grid's smaller side (3 fits 4×4 grids and Swin's 7×7 windows).
        win_sigma (float): Gaussian sigma for ``ssim='windowed'``.
        c1, c2 (float): SSIM constants (the windowed path uses K = (√c1, √c2), data range 1).
        eps (float): guard of the min-max normalisation.
        max_chunk_elements (int): the windowed path processes queries in chunks so that the
            expanded head-pair tensor stays below this many elements.
        kernel (str): for the fast global path on float32 CPU scores: ``'auto'`` (the C++ kernel of
            :mod:`.ihc_cpu` where it builds, else PyTorch), ``'cpp'`` (the kernel, or an error) or
            ``'torch'`` (PyTorch ops only). GPU and half-precision scores always take PyTorch.
        loss_weight (float): multiplies the result.
    """

    def __init__(self, similarity='abs', ssim='global', layers=None, win_size=3, win_sigma=1.5,
                 c1=DEFAULT_C1, c2=DEFAULT_C2, eps=1e-8, max_chunk_elements=2 ** 25, kernel='auto', loss_weight=1.0):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f'similarity must be one of {SIMILARITIES}, got {similarity!r}')
        if ssim not in ('global', 'windowed'):
            raise ValueError(f"ssim must be 'global' or 'windowed', got {ssim!r}")
        if kernel not in ('auto', 'cpp', 'torch'):
            raise ValueError(f"kernel must be 'auto', 'cpp' or 'torch', got {kernel!r}")
        if win_size < 1 or win_size % 2 == 0:
            raise ValueError(f'win_size must be a positive odd number, got {win_size}')
        self.similarity = similarity
        self.ssim = ssim
        self.layers = None if layers is None else list(layers)
        self.win_size = int(win_size)
        self.win_sigma = float(win_sigma)
        self.c1 = float(c1)
        self.c2 = float(c2)
        self.eps = float(eps)
        self.max_chunk_elements = int(max_chunk_elements)
        self.kernel = kernel
        self.loss_weight = loss_weight

    def extra_repr(self):
        return (f'similarity={self.similarity}, ssim={self.ssim}, layers={self.layers}, '
                f'kernel={self.kernel}, loss_weight={self.loss_weight}')

    def _f(self, s):
        return s.abs() if self.similarity == 'abs' else s.pow(2)

    def forward(self, records):
        """
        Args:
            records (list[AttentionRecord]): with ``scores`` (B', H, N, N).

        Returns:
            Tensor: scalar loss.
        """
        selected = select_records(records, self.layers)
        if not selected:
            raise ValueError('InterHeadCoherencyLoss got no attention records')
        layer_loss = self._layer_loss_global if self.ssim == 'global' else self._layer_loss_windowed
        per_layer = torch.stack([layer_loss(record) for record in selected])
        return self.loss_weight * per_layer.mean()

    def _check_window(self, grid):
        if self.win_size > min(grid):
            raise ValueError(f'win_size={self.win_size} does not fit the token grid {tuple(grid)}; '
                             'choose a smaller odd win_size')

    def _windowed_pair_ssim(self, x, y, grid):
        """x, y: (M, h·w) maps -> (M,) Gaussian-window SSIM."""
        h, w = grid
        k = (self.c1 ** 0.5, self.c2 ** 0.5)
        return windowed_ssim(x.reshape(-1, 1, h, w), y.reshape(-1, 1, h, w), data_range=1.0, size_average=False,
                             win_size=self.win_size, win_sigma=self.win_sigma, K=k)

    def _layer_loss_windowed(self, record):
        """Windowed-SSIM L_IHC of one layer, vectorised over the head pairs."""
        maps = spatial_head_maps(record, self.eps)            # (B', Q, H, K)
        num_heads = maps.shape[2]
        grid = record.layout.grid
        self._check_window(grid)
        flat = maps.reshape(-1, num_heads, maps.shape[-1])     # (M, H, K), M = B'·Q
        if num_heads == 1:
            return flat.sum() * 0  # a single head is trivially coherent; keep the graph
        # SSIM is symmetric and SSIM(x, x) = 1, so only the H(H-1)/2 pairs i < j are evaluated:
        # D_q = (H·f(1) + 2 Σ_{i<j} f(SSIM_ij)) / H², with f(1) = 1 for both options.
        idx_i, idx_j = torch.triu_indices(num_heads, num_heads, offset=1, device=flat.device)
        num_pairs = idx_i.numel()
        chunk = max(1, self.max_chunk_elements // (num_pairs * flat.shape[-1]))
        pair_sums = []
        for start in range(0, flat.shape[0], chunk):
            part = flat[start:start + chunk]
            sim = self._windowed_pair_ssim(part[:, idx_i], part[:, idx_j], grid)  # (m·P,)
            pair_sums.append(self._f(sim).view(part.shape[0], num_pairs).sum(dim=-1))
        coherency = (num_heads + 2 * torch.cat(pair_sums)) / num_heads ** 2
        return (1 - coherency).mean()

    def _layer_loss_global(self, record):
        """Global-SSIM L_IHC of one layer: 1 - :func:`head_coherency`, averaged; on float32 CPU
        scores the C++ kernel computes the same value and its gradient in one pass."""
        spatial_scores(record)                                        # checks the layout
        prefix = record.layout.num_prefix_tokens
        if self.kernel != 'torch' and kernel_applies(record.scores) and load_kernel(self.kernel == 'cpp'):
            return IHCLayerCPU.apply(record.scores, prefix, self.c1, self.c2, self.eps, self.similarity == 'squared')
        return (1 - head_coherency(record.scores, prefix, self.similarity, self.c1, self.c2, self.eps)).mean()
