"""SSIM helpers shared by the attention losses.

All helpers compute in at least fp32: half-precision inputs are upcast, because SSIM divides
small variances and bf16 statistics are too coarse for that.
"""
import torch

DEFAULT_C1 = 0.01 ** 2
DEFAULT_C2 = 0.03 ** 2


def upcast_half(x):
    """Upcast fp16/bf16 tensors to fp32; fp32/fp64 tensors are returned unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def minmax_normalize(x, dim=-1, eps=1e-8):
    """Rescale ``x`` to [0, 1] along ``dim`` (int or tuple of ints).

    A constant slice maps to zeros (``eps`` guards the division).

    Args:
        x (Tensor): any shape.
        dim (int | tuple[int]): dimensions holding one map.
        eps (float): added to the range.

    Returns:
        Tensor: same shape as ``x``, at least fp32.
    """
    x = upcast_half(x)
    low = x.amin(dim=dim, keepdim=True)
    high = x.amax(dim=dim, keepdim=True)
    return (x - low) / (high - low + eps)


def ssim_from_moments(mu_x, mu_y, var_x, var_y, cov, c1=DEFAULT_C1, c2=DEFAULT_C2):
    """SSIM = (2 μx μy + c1)(2 σxy + c2) / ((μx² + μy² + c1)(σx² + σy² + c2)) from the maps'
    means, variances and covariance (broadcastable tensors; c1, c2 floats or tensors)."""
    luminance = (2 * mu_x * mu_y + c1) / (mu_x.pow(2) + mu_y.pow(2) + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return luminance * contrast_structure


def global_ssim(x, y, c1=DEFAULT_C1, c2=DEFAULT_C2, dim=-1):
    """SSIM with whole-map statistics (no sliding window).

    SSIM = (2 μx μy + c1)(2 σxy + c2) / ((μx² + μy² + c1)(σx² + σy² + c2)), with population
    (1/n) variance and covariance over ``dim``.

    Args:
        x, y (Tensor): broadcastable maps; ``dim`` (int or tuple) indexes the map's values.
        c1, c2 (float | Tensor): stabilising constants; tensors must broadcast to the output
            (the input shape with ``dim`` removed), e.g. per-map constants scaled by a data range.
        dim (int | tuple[int]): dimensions reduced.

    Returns:
        Tensor: input shape without ``dim``.
    """
    x, y = upcast_half(x), upcast_half(y)
    mu_x = x.mean(dim=dim, keepdim=True)
    mu_y = y.mean(dim=dim, keepdim=True)
    xc, yc = x - mu_x, y - mu_y
    var_x = xc.pow(2).mean(dim=dim)
    var_y = yc.pow(2).mean(dim=dim)
    cov = (xc * yc).mean(dim=dim)
    return ssim_from_moments(mu_x.squeeze(dim), mu_y.squeeze(dim), var_x, var_y, cov, c1, c2)


def pairwise_global_ssim(maps, c1=DEFAULT_C1, c2=DEFAULT_C2):
    """Global SSIM between every pair of maps along the second-to-last dimension.

    Statistics are computed once per map and the covariances of all pairs with one batched
    matmul, so no (..., H, H, K) tensor is built.

    Args:
        maps (Tensor): (..., H, K): H maps of K values each (e.g. heads × keys).
        c1, c2 (float): stabilising constants.

    Returns:
        Tensor: (..., H, H) symmetric SSIM matrix; the diagonal is exactly 1.
    """
    x = upcast_half(maps)
    num_values = x.shape[-1]
    mu = x.mean(dim=-1)                                        # (..., H)
    xc = x - mu.unsqueeze(-1)                                  # (..., H, K)
    cov = xc @ xc.transpose(-1, -2) / num_values               # (..., H, H)
    var = cov.diagonal(dim1=-2, dim2=-1)                       # (..., H)
    return ssim_from_moments(mu.unsqueeze(-1), mu.unsqueeze(-2), var.unsqueeze(-1), var.unsqueeze(-2), cov, c1, c2)
