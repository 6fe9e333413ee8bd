"""An independent L_IHC for the tests: explicit loops over head pairs on the min-max normalised
maps (paper Eq. 8-11), with autograd, against which the loss (and its C++ kernel) is checked."""
import torch
from pytorch_msssim import ssim as windowed_ssim

from mimiq_mm.losses import global_ssim, spatial_head_maps
from mimiq_mm.losses.ssim import DEFAULT_C1, DEFAULT_C2


def ihc_reference(records, similarity='abs', ssim='global', c1=DEFAULT_C1, c2=DEFAULT_C2, eps=1e-8, win_size=3,
                  win_sigma=1.5):
    """L_IHC of ``records`` (a scalar tensor): one f(SSIM) per pair of heads (i, j), all H² pairs."""
    per_layer = []
    for record in records:
        maps = spatial_head_maps(record, eps)                  # (B', Q, H, K)
        batch, queries, num_heads, _ = maps.shape
        h, w = record.layout.grid
        total = 0
        for i in range(num_heads):
            for j in range(num_heads):
                a, b = maps[:, :, i, :], maps[:, :, j, :]
                if ssim == 'global':
                    s = global_ssim(a, b, c1, c2, dim=-1)
                else:
                    s = windowed_ssim(a.reshape(-1, 1, h, w), b.reshape(-1, 1, h, w), data_range=1.0,
                                      size_average=False, win_size=win_size, win_sigma=win_sigma,
                                      K=(c1 ** 0.5, c2 ** 0.5)).view(batch, queries)
                total = total + (s.abs() if similarity == 'abs' else s.pow(2))
        per_layer.append((1 - total / num_heads ** 2).mean())
    return torch.stack(per_layer).mean()
