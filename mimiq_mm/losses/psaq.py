"""PSAQ-ViT's synthesis objective (a baseline): the entropy of the patch tokens' similarities,
from a Gaussian kernel density on a grid, with the kernel sums computed without autograd's
(B, G, P) intermediates."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .ssim import upcast_half
from .utils import require_field, select_records


class _GaussianKDEOnGrid(torch.autograd.Function):
    """Kernel sums Σ_k exp(-(x_g - s_k)² / (2h²)) of (B, P) samples on a (G,) grid -> (B, G).

    Autograd would keep three (B, G, P) tensors per call for the backward pass (hundreds of MB for
    a PSAQ batch, the whole cost of the step); this works through chunks of samples and recomputes
    the kernel in the backward pass, so only (B, G, chunk) is ever alive.
    d/ds_k = Σ_g grad(g) · exp(-z²/2) · z / h with z = (x_g - s_k) / h.
    """

    @staticmethod
    def _offsets(grid, samples, start, chunk, bandwidth):
        """z = (x_g - s_k) / h for the samples [start, start + chunk): (B, G, chunk)."""
        return (grid.view(1, -1, 1) - samples[:, None, start:start + chunk]) / bandwidth

    @staticmethod
    def forward(ctx, samples, grid, bandwidth, chunk):
        sums = samples.new_zeros(samples.shape[0], grid.numel())
        for start in range(0, samples.shape[1], chunk):
            z = _GaussianKDEOnGrid._offsets(grid, samples, start, chunk, bandwidth)
            sums += torch.exp(-0.5 * z * z).sum(dim=-1)
        ctx.save_for_backward(samples, grid)
        ctx.bandwidth, ctx.chunk = bandwidth, chunk
        return sums

    @staticmethod
    def backward(ctx, grad_sums):
        samples, grid = ctx.saved_tensors
        h, chunk = ctx.bandwidth, ctx.chunk
        grad = torch.empty_like(samples)
        for start in range(0, samples.shape[1], chunk):
            z = _GaussianKDEOnGrid._offsets(grid, samples, start, chunk, h)
            weights = torch.exp(-0.5 * z * z) * z
            grad[:, start:start + chunk] = torch.einsum('bg,bgc->bc', grad_sums, weights) / h
        return grad, None, None, None


class _TruncatedGaussianKDEOnGrid(torch.autograd.Function):
    """The same kernel sums on a uniform grid (x_g = low + g·step), with each sample's kernel
    cut at ``radius`` bandwidths: a sample reaches only the W = 2·ceil(radius·h/step) + 2 grid
    points around it, so the work is B·P·W instead of B·P·G. With radius 8 the dropped
    tail is below exp(-32) ≈ 1e-14 of a kernel's peak.
    """

    @staticmethod
    def _window(samples, low, step, bandwidth, reach, num_points):
        """Grid indices (B, P, W), their validity and z = (x_g - s) / h around every sample."""
        first = torch.floor((samples - low) / step).long() - reach                  # (B, P)
        index = first.unsqueeze(-1) + torch.arange(2 * reach + 2, device=samples.device)
        valid = (index >= 0) & (index < num_points)
        index = index.clamp(0, num_points - 1)
        z = (low + index.to(samples.dtype) * step - samples.unsqueeze(-1)) / bandwidth
        return index, valid, z

    @staticmethod
    def forward(ctx, samples, low, step, bandwidth, reach, num_points):
        index, valid, z = _TruncatedGaussianKDEOnGrid._window(samples, low, step, bandwidth, reach, num_points)
        weights = torch.exp(-0.5 * z * z) * valid
        sums = samples.new_zeros(samples.shape[0], num_points)
        sums.scatter_add_(1, index.flatten(1), weights.flatten(1))
        ctx.save_for_backward(samples, low, step)
        ctx.bandwidth, ctx.reach, ctx.num_points = bandwidth, reach, num_points
        return sums

    @staticmethod
    def backward(ctx, grad_sums):
        samples, low, step = ctx.saved_tensors
        h = ctx.bandwidth
        index, valid, z = _TruncatedGaussianKDEOnGrid._window(samples, low, step, h, ctx.reach, ctx.num_points)
        upstream = grad_sums.gather(1, index.flatten(1)).view_as(z)
        grad = (upstream * torch.exp(-0.5 * z * z) * z * valid).sum(dim=-1) / h
        return grad, None, None, None, None, None


def _binned_kernel_sums(samples, low, step, num_points, bandwidth, resolution=32):
    """The kernel sums on the grid from linearly binned samples: each sample is split between the
    two nearest points of a fine grid (spacing at most h/``resolution``, the evaluation grid's
    points among its own), and the (B, F) bin weights are multiplied by the (F, G) kernel matrix.
    Cost B·P + B·F·G instead of B·P·G; the linear interpolation of each kernel between fine
    points errs by at most spacing²/(8h²) ≤ 1/(8·resolution²) of a kernel's peak (1.2e-4); the
    gradient is the kernel's difference quotient across a fine bin."""
    ratio = max(1, math.ceil(resolution * float(step) / bandwidth))
    fine = (num_points - 1) * ratio + 1
    fine_step = step / ratio
    position = (samples - low) / fine_step  # within [0, fine - 1]: the grid spans the samples
    left = position.detach().floor().clamp(0, fine - 2)
    right_weight = position - left                                              # (B, P), differentiable
    index = left.long()
    bins = samples.new_zeros(samples.shape[0], fine)
    bins = bins.scatter_add(1, index, 1 - right_weight).scatter_add(1, index + 1, right_weight)
    offsets = torch.arange(fine, device=samples.device, dtype=samples.dtype).view(-1, 1) \
        - ratio * torch.arange(num_points, device=samples.device, dtype=samples.dtype).view(1, -1)
    kernel = torch.exp(-0.5 * (offsets * fine_step / bandwidth) ** 2)           # (F, G)
    return bins @ kernel


def kde_differential_entropy(samples, bandwidth=0.01, num_points=200, eps=1e-10, method='binned', chunk=256,
                             radius=8.0):
    """Differential entropy per row, from a Gaussian kernel density evaluated on a grid.

    The grid spans the minimum to the maximum of all samples (all rows share it); the density is
    p(x) = 1/(P·h·√(2π)) Σ_k exp(-(x - s_k)² / (2h²)), and H ≈ -Σ_x p(x) log(p(x) + eps) · Δx.

    Args:
        samples (Tensor): (B, P) samples per row.
        bandwidth (float): kernel standard deviation h.
        num_points (int): grid points.
        eps (float): inside the log, so empty grid regions give finite gradients.
        method (str): how the kernel sums are computed: 'binned' (:func:`_binned_kernel_sums`,
            within 1.2e-4 of a kernel's peak), 'exact' (every kernel at every grid point, cut at
            ``radius`` bandwidths when that reaches fewer points than the grid has, else in
            chunks of ``chunk`` samples) or 'reference' (autograd over the whole (B, G, P) kernel).

    Returns:
        Tensor: (B,) entropies.
    """
    if method not in ('binned', 'exact', 'reference'):
        raise ValueError(f"KDE method must be 'binned', 'exact' or 'reference', got {method!r}")
    samples = upcast_half(samples)
    low, high = samples.min().detach(), samples.max().detach()
    grid = low + (high - low) * torch.linspace(0, 1, num_points, device=samples.device, dtype=samples.dtype)
    step = ((high - low) / (num_points - 1)).clamp_min(1e-12)
    reach = math.ceil(radius * bandwidth / float(step)) if radius is not None else num_points
    if method == 'reference':
        z = (grid.view(1, -1, 1) - samples.unsqueeze(1)) / bandwidth             # (B, G, P)
        sums = torch.exp(-0.5 * z.pow(2)).sum(dim=-1)
    elif method == 'binned':
        sums = _binned_kernel_sums(samples, low, step, num_points, float(bandwidth))
    elif 2 * reach + 2 < num_points:
        sums = _TruncatedGaussianKDEOnGrid.apply(samples, low, step, float(bandwidth), reach, int(num_points))
    else:
        sums = _GaussianKDEOnGrid.apply(samples, grid, float(bandwidth), int(chunk))
    density = sums / (samples.shape[-1] * bandwidth * math.sqrt(2 * math.pi))
    return -(density * torch.log(density + eps)).sum(dim=-1) * step


@MODELS.register_module()
class PatchSimilarityEntropyLoss(nn.Module):
    """PSAQ-ViT's synthesis objective: maximise the entropy of patch similarities.

    For each record: head outputs (B', H, N, D) are averaged over heads, prefix tokens dropped,
    and the cosine similarities between the remaining N' patch tokens form (B', N', N'). The
    distinct pairs i < j (self-similarity is always 1 and the matrix is symmetric) are the
    samples of a per-image Gaussian KDE (bandwidth 0.01) evaluated on ``num_points`` points
    between the batch's minimum and maximum similarity; loss = -Σ_blocks mean_batch H.

    ``num_points`` defaults to 200, so the grid step stays below the bandwidth for the similarity
    ranges typical of ViT tokens (spread < 2). The KDE costs B'·P·num_points, so at most
    ``max_pairs`` pairs (a random subset, shared by the batch) are used per block.

    Args:
        bandwidth (float): KDE kernel width.
        num_points (int): density grid points.
        max_pairs (int | None): cap on similarity pairs per image; None = all.
        layers (Sequence[int] | None): indices into the record list (negatives allowed).
        kde (str): 'binned' (fast, kernel sums within 1.2e-4 of a peak) or 'exact' (see
            :func:`kde_differential_entropy`).
        loss_weight (float): multiplies the result.
    """

    def __init__(self, bandwidth=0.01, num_points=200, max_pairs=4096, layers=None, kde='binned', loss_weight=1.0):
        super().__init__()
        if num_points < 2:
            raise ValueError(f'num_points must be at least 2, got {num_points}')
        self.bandwidth = float(bandwidth)
        self.num_points = int(num_points)
        self.max_pairs = max_pairs
        self.layers = None if layers is None else list(layers)
        self.kde = kde
        self.loss_weight = loss_weight

    def extra_repr(self):
        return (f'bandwidth={self.bandwidth}, num_points={self.num_points}, max_pairs={self.max_pairs}, '
                f'kde={self.kde}, loss_weight={self.loss_weight}')

    def patch_similarities(self, record):
        """(B', P) cosine similarities of the distinct patch-token pairs of one record."""
        outputs = upcast_half(require_field(record, 'outputs'))            # (B', H, N, D)
        tokens = outputs.mean(dim=1)[:, record.layout.num_prefix_tokens:]  # (B', N', D)
        tokens = F.normalize(tokens, dim=-1)
        sim = tokens @ tokens.transpose(-1, -2)                            # (B', N', N')
        num_tokens = sim.shape[-1]
        idx_i, idx_j = torch.triu_indices(num_tokens, num_tokens, offset=1, device=sim.device)
        if self.max_pairs is not None and idx_i.numel() > self.max_pairs:
            keep = torch.randperm(idx_i.numel(), device=sim.device)[:self.max_pairs]
            idx_i, idx_j = idx_i[keep], idx_j[keep]
        return sim[:, idx_i, idx_j]

    def forward(self, records):
        """
        Args:
            records (list[AttentionRecord]): with ``outputs`` (B', H, N, D).

        Returns:
            Tensor: scalar loss.
        """
        selected = select_records(records, self.layers)
        if not selected:
            raise ValueError('PatchSimilarityEntropyLoss got no attention records')
        entropies = [kde_differential_entropy(self.patch_similarities(r), self.bandwidth, self.num_points,
                                              method=self.kde).mean() for r in selected]
        return -self.loss_weight * torch.stack(entropies).sum()
