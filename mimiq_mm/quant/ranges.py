"""Estimating quantization ranges: an activation's from calibration data, a weight's from itself."""
import torch

MSE_CANDIDATES = 80        # clipping ratios tried, geometric from MSE_SMALLEST_RATIO to 1
MSE_SMALLEST_RATIO = 0.01
MSE_SAMPLES = 1 << 16      # values of a batch the search scores (a fixed random subset of larger batches)


def minmax_range(x):
    """(lo, hi) 0-dim float32 tensors: the extremes of ``x`` widened to include zero."""
    lo, hi = torch.aminmax(x.detach().float())
    return lo.clamp_max(0), hi.clamp_min(0)


def mse_range(x, levels: int):
    """(lo, hi): the clipped range ``[r·min(x), r·max(x)]`` (zero included) whose uniform
    quantization into ``levels`` levels, with a zero point, has the smallest mean squared error
    on ``x`` — LSQ+'s initialisation. The min-max range (r = 1) spends its few levels on rare
    extremes; LSQ's ``2·mean|x|/√q_max`` ignores them whatever their weight; this weighs both.
    """
    values = x.detach().float().flatten()
    if values.numel() > MSE_SAMPLES:  # a fixed subset: channels-last layouts make strides alias
        pick = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:MSE_SAMPLES]
        values = values[pick.to(values.device)]
    lo, hi = minmax_range(values)
    ratios = torch.logspace(torch.log10(torch.tensor(MSE_SMALLEST_RATIO)), 0, MSE_CANDIDATES,
                            device=values.device).unsqueeze(1)  # (R, 1)
    step = ((hi - lo) * ratios / (levels - 1)).clamp_min(1e-8)
    zero = torch.round(-lo * ratios / step)
    errors = torch.empty(len(ratios), device=values.device)
    for chunk in range(0, len(ratios), 16):  # (16, N) at a time
        s, z = step[chunk:chunk + 16], zero[chunk:chunk + 16]
        quantized = (torch.clamp(torch.round(values / s + z), 0, levels - 1) - z) * s
        errors[chunk:chunk + 16] = (quantized - values).square().mean(dim=1)
    best = ratios[int(torch.argmin(errors))].squeeze()
    return lo * best, hi * best


WEIGHT_CLIP_RATIOS = torch.linspace(0.3, 1.0, 36)  # 2 % apart; below 0.3 no weight tensor gains


def mse_clip_ratios(weight, q_min: int, q_max: int):
    """Per row of ``weight`` (C, K): the ratio ``r`` of the symmetric step ``r · max|w| / q_max``
    whose quantization has the smallest squared error. Min-max (r = 1) is far from it at low bits:
    for Gaussian weights the best 3-bit step is about half the min-max one."""
    max_abs = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)  # (C, 1)
    best_error = torch.full((weight.shape[0], ), float('inf'), device=weight.device)
    best_ratio = torch.ones(weight.shape[0], device=weight.device)
    for ratio in WEIGHT_CLIP_RATIOS.tolist():
        step = max_abs * ratio / q_max
        error = (torch.clamp(torch.round(weight / step), q_min, q_max) * step - weight).square().sum(dim=1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio
