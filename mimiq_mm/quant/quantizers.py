"""Uniform fake quantizers with straight-through gradients (MimiQ paper, Eq. 4).

``x_int = clamp(round(x / step + offset), q_min, q_max)`` and the fake-quantized value is
``(x_int - offset) * step``. Rounding passes gradients straight through; clamping does not
(values clipped beyond the range get no gradient).

Three quantizers:

* :class:`WeightQuantizer` — per output channel, symmetric, min-max of the current weight.
* :class:`MinMaxActQuantizer` — per tensor, asymmetric, EMA of the batch min/max.
* :class:`LSQActQuantizer` — per tensor, learnable step and offset (LSQ / LSQ+), initialised
  from the first batch it sees.

All quantizers carry an ``enabled`` switch and tolerate a state_dict without their own keys, so an
ordinary full-precision checkpoint loads into a quantized model.
"""
import math

import torch
import torch.nn as nn

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits, what='bit-width'):
    """Return ``bits`` as int, or raise a ValueError that names the supported range."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f'{what} must be an integer from {MIN_BITS} to {MAX_BITS} (got {bits!r}); '
            f'set e.g. quant=dict(w_bits=4, a_bits=4).')
    return bits


def round_ste(x):
    """Round with a straight-through (identity) gradient."""
    return (x.round() - x).detach() + x


def grad_scale(x, scale):
    """Identity in the forward pass, gradient multiplied by ``scale`` (LSQ's g)."""
    return (x - x * scale).detach() + x * scale


def fake_quantize(x, step, offset, q_min, q_max):
    """Uniform fake quantization; ``step``/``offset`` broadcast against ``x``.

    The gradient w.r.t. ``x`` is 1 wherever ``x / step + offset`` lies in ``[q_min, q_max]``
    (boundaries included) and 0 where it is clipped. Clamping happens before rounding (same
    forward result for integer bounds): ``torch.clamp`` passes no gradient at a bound, so clamping
    the rounded value would zero the gradient of the whole outermost bins (e.g. every weight that
    rounds to the largest level).
    """
    z = x / step + offset
    inside = (z >= q_min) & (z <= q_max)
    z = torch.where(inside, z, z.detach().clamp(q_min, q_max))
    return (round_ste(z) - offset) * step


class _Quantizer(nn.Module):
    """Common state of every quantizer: bit-width, integer range, on/off switch."""

    def __init__(self, bits, signed):
        super().__init__()
        self.bits = check_bits(bits)
        self.signed = signed
        self.enabled = True

    @property
    def q_min(self):
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def q_max(self):
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    def extra_repr(self):
        return f'bits={self.bits}, signed={self.signed}, enabled={self.enabled}'

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A full-precision checkpoint has no quantizer state: keep ours (still uncalibrated)
        # instead of reporting missing keys.
        own = [prefix + name for name, _ in self.named_parameters(recurse=False)]
        own += [prefix + name for name, _ in self.named_buffers(recurse=False)]
        if not any(key in state_dict for key in own):
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class WeightQuantizer(_Quantizer):
    """Per-output-channel symmetric min-max weight quantizer (no state to calibrate).

    Args:
        bits (int): bit-width, 2 to 8.
        channel_dim (int): the output-channel dimension of the weight (0 for Linear/Conv2d).
    """

    def __init__(self, bits, channel_dim=0):
        super().__init__(bits, signed=True)
        self.channel_dim = channel_dim

    def forward(self, weight):
        if not self.enabled:
            return weight
        reduce_dims = [d for d in range(weight.dim()) if d != self.channel_dim]
        max_abs = weight.detach().abs().amax(dim=reduce_dims, keepdim=True)
        step = (max_abs / self.q_max).clamp_min(1e-8)
        return fake_quantize(weight, step, 0.0, self.q_min, self.q_max)


class MinMaxActQuantizer(_Quantizer):
    """Per-tensor asymmetric activation quantizer with an EMA of the observed min/max.

    The range is updated while ``observing`` is True (calibration, and QAT when
    ``update_in_training``), and frozen otherwise.
    """

    def __init__(self, bits, momentum=0.1, update_in_training=True):
        super().__init__(bits, signed=False)
        self.momentum = momentum
        self.update_in_training = update_in_training
        self.observing = False
        self.register_buffer('min_val', torch.zeros(()))
        self.register_buffer('max_val', torch.zeros(()))
        self.register_buffer('initialized', torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def observe(self, x):
        x = x.detach().float()
        lo, hi = x.min(), x.max()
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def forward(self, x):
        if not self.enabled:
            return x
        if self.observing or (self.training and self.update_in_training) or not bool(self.initialized):
            self.observe(x)
        lo = torch.minimum(self.min_val, torch.zeros_like(self.min_val))
        hi = torch.maximum(self.max_val, torch.zeros_like(self.max_val))
        step = ((hi - lo) / (self.q_max - self.q_min)).clamp_min(1e-8)
        offset = torch.round(self.q_min - lo / step)
        return fake_quantize(x, step.to(x.dtype), offset.to(x.dtype), self.q_min, self.q_max)


class LSQActQuantizer(_Quantizer):
    """Per-tensor activation quantizer with learnable step and offset (LSQ, LSQ+).

    Initialised from the first batch: the signedness from the batch minimum, the step as
    ``2 * mean|x| / sqrt(q_max)`` and the offset 0. Gradients of step and offset are scaled by
    ``1 / sqrt(numel * q_max)`` as in LSQ.
    """

    def __init__(self, bits, learn_offset=True):
        super().__init__(bits, signed=False)
        self.learn_offset = learn_offset
        self.observing = False
        self.step = nn.Parameter(torch.ones(()))
        self.offset = nn.Parameter(torch.zeros(()), requires_grad=learn_offset)
        self.register_buffer('initialized', torch.zeros((), dtype=torch.bool))
        self.register_buffer('signed_flag', torch.zeros((), dtype=torch.bool))

    @property
    def q_min(self):
        return -(2 ** (self.bits - 1)) if bool(self.signed_flag) else 0

    @property
    def q_max(self):
        return 2 ** (self.bits - 1) - 1 if bool(self.signed_flag) else 2 ** self.bits - 1

    @torch.no_grad()
    def initialize(self, x):
        x = x.detach().float()
        self.signed_flag.fill_(bool(x.min() < 0))
        self.step.copy_((2 * x.abs().mean() / math.sqrt(self.q_max)).clamp_min(1e-6))
        self.offset.zero_()
        self.initialized.fill_(True)

    def forward(self, x):
        if not self.enabled:
            return x
        if not bool(self.initialized):
            self.initialize(x)
        scale = 1.0 / math.sqrt(x.numel() * self.q_max)
        step = grad_scale(self.step, scale).abs().clamp_min(1e-8)
        offset = grad_scale(self.offset, scale)
        offset = round_ste(offset)
        return fake_quantize(x, step.to(x.dtype), offset.to(x.dtype), self.q_min, self.q_max)

    def extra_repr(self):
        return f'bits={self.bits}, learn_offset={self.learn_offset}, enabled={self.enabled}'


ACT_QUANTIZERS = {'minmax': MinMaxActQuantizer, 'lsq': LSQActQuantizer}


def build_act_quantizer(bits, method):
    """Build a per-tensor activation quantizer by method name ('minmax' or 'lsq')."""
    if method not in ACT_QUANTIZERS:
        raise ValueError(f'unknown activation quantizer {method!r}; choose one of {sorted(ACT_QUANTIZERS)}')
    return ACT_QUANTIZERS[method](bits)
