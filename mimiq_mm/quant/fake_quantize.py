"""Uniform fake quantization with straight-through gradients (MimiQ paper, Eq. 4), as functions.

``x_int = clamp(round(x / step + offset), q_min, q_max)`` and the fake-quantized value is
``(x_int - offset) * step``. Rounding passes gradients straight through; clamping does not
(values clipped beyond the range get no gradient). The quantizer modules of
:mod:`mimiq_mm.quant.quantizers` hold the state (bits, step, offset) and call these.
"""
import torch

def round_ste(x):
    """Round with a straight-through (identity) gradient."""
    return (x.round() - x).detach() + x


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass (the value itself, not a recomputation), gradient × ``scale``."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def grad_scale(x, scale):
    """Identity in the forward pass, gradient multiplied by ``scale`` (LSQ's g)."""
    return _ScaleGrad.apply(x, scale)


_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _has_offset(offset):
    return isinstance(offset, torch.Tensor) or offset != 0


def _quantize_levels(x, step, offset, out=None):
    """``x / step + offset``, the unclamped, unrounded level, written into ``out`` or a new
    contiguous tensor (so a matmul that consumes a quantized, permuted q/k/v needs no copy).
    Computed in float32 for half-precision ``x``, where 8 mantissa bits (bf16) cannot tell level
    130.4 from 130.6."""
    if x.dtype in _HALF_DTYPES:
        x = out = x.float()  # our own copy: divided in place
    elif out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    z = torch.div(x, step, out=out)
    return z.add_(offset) if _has_offset(offset) else z


def _dequantize_(levels, step, offset):
    """In place: rounded, clamped ``levels`` back to values, ``(levels - offset) * step``."""
    if _has_offset(offset):
        levels.sub_(offset)
    return levels.mul_(step)


class _FakeQuantizeSTE(torch.autograd.Function):
    """Fake quantization with the straight-through estimator, in few passes over ``x``.

    Forward: the same arithmetic as the no-grad path (``x / step + offset``, clamp, round,
    ``- offset``, ``* step``), so both give identical values. Backward (Eq. 4 and LSQ/LSQ+):

    * ``x``: the incoming gradient where ``x / step + offset`` lies in ``[q_min, q_max]``
      (boundaries included), 0 where it is clipped; everywhere when ``mask_grad`` is False;
    * ``step``: ``round(z) - z`` inside, ``clamp(z) - offset`` outside, i.e.
      ``(out - x·inside) / step`` per element, summed;
    * ``offset``: 0 inside, ``-step`` outside, summed.

    The mask is kept as a float 1/0 tensor: on CPU, multiplying by it is several times faster
    than ``masked_fill``/``where`` with a bool mask.
    """

    @staticmethod
    def forward(ctx, x, step, offset, q_min, q_max, mask_grad):
        z = _quantize_levels(x, step, offset)
        if mask_grad:
            levels = z.clamp(q_min, q_max)
            # a new tensor: comparing into one of the operands takes a slow path
            inside = torch.eq(levels, z, out=torch.empty_like(z))  # NaN: unequal, so no gradient
            del z
        else:
            levels, inside = z.clamp_(q_min, q_max), None
        out = _dequantize_(levels.round_(), step, offset)
        want_qparams = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.save_for_backward(inside, x if want_qparams else None, out if want_qparams else None,
                              step if want_qparams else None)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        inside, x, out, step = ctx.saved_tensors
        grad_x = grad_step = grad_offset = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            grad_x = grad if inside is None else grad * inside
        if ctx.needs_input_grad[1]:
            error = x * inside if inside is not None else x.float()
            error = error.sub_(out).mul_(grad)  # (x·inside - out) · grad, in float32
            grad_step = -error.sum_to_size(step.shape).div_(step)
        if ctx.needs_input_grad[2] and inside is not None:
            outside_sum = (grad - grad_x).sum()  # exact zeros inside: no cancellation in the sum
            grad_offset = (-step * outside_sum).sum_to_size(step.shape)
        return grad_x if ctx.needs_input_grad[0] else None, grad_step, grad_offset, None, None, None


def fake_quantize(x, step, offset, q_min, q_max, mask_grad=True, out=None):
    """Uniform fake quantization; ``step``/``offset`` broadcast against ``x``.

    ``out = (clamp(round(x / step + offset), q_min, q_max) - offset) * step``, computed in float32
    for half-precision ``x`` and returned in ``x``'s dtype. The gradient w.r.t. ``x`` is 1 wherever
    ``x / step + offset`` lies in ``[q_min, q_max]`` (boundaries included) and 0 where it is
    clipped; ``mask_grad=False`` passes it everywhere (for ranges that clip nothing by
    construction). ``step`` and ``offset`` get LSQ's gradients when they require them.

    Without autograd (evaluation, calibration) the value is computed in one allocation and five
    in-place passes, or written into ``out`` (a tensor of ``x``'s shape and dtype, ``x`` itself
    included) to spare the allocation; with autograd (``out`` ignored), by :class:`_FakeQuantizeSTE`
    (same arithmetic, same values).
    torch's own ``fake_quantize_per_*_affine`` kernels are not used: on CPU they are several
    times slower, they multiply by ``1 / step`` (a different rounding at near-ties) and pass
    gradients by the rounded level (benchmarks/results/README.md, "Fake-quantize kernels").
    """
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (x, step, offset))
    if needs_grad:
        return _FakeQuantizeSTE.apply(x, step, offset, q_min, q_max, mask_grad)
    levels = _dequantize_(_quantize_levels(x, step, offset, out).clamp_(q_min, q_max).round_(), step, offset)
    if levels.dtype == x.dtype:
        return levels
    return levels.to(x.dtype) if out is None else out.copy_(levels)
