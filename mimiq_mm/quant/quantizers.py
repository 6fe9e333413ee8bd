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

from .fake_quantize import fake_quantize, grad_scale, round_ste
from .ranges import mse_clip_ratios, mse_range

MIN_BITS, MAX_BITS = 2, 8
WEIGHT_FITS = ('minmax', 'mse')


def check_bits(bits, what='bit-width'):
    """Return ``bits`` as int, or raise a ValueError that names the supported range."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f'{what} must be an integer from {MIN_BITS} to {MAX_BITS} (got {bits!r}); '
            f'set e.g. quant=dict(w_bits=4, a_bits=4).')
    return bits


class _Quantizer(nn.Module):
    """Common state of every quantizer: bit-width, integer range, on/off switch."""

    def __init__(self, bits, signed):
        super().__init__()
        self.bits = check_bits(bits)
        self.signed = signed
        self.enabled = True
        self.drop_memo()

    def drop_memo(self):
        """Forget the memoised derived tensors (quantized weight, step/offset)."""
        self.__dict__['_memo'] = (None, None)

    def memo(self, tensors, compute):
        """``compute()`` (under no_grad), reused while ``tensors`` keep their storage, version
        counter (bumped by every in-place update: calibration, optimiser steps,
        ``load_state_dict``), dtype, device and shape, and the bit-width stays.

        For what is a pure function of those tensors; the memo holds exactly what ``compute``
        returns. Inference tensors have no version counter: computed every time.
        """
        if any(t.is_inference() for t in tensors):
            with torch.no_grad():
                return compute()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in tensors) + (
            self.bits, torch.is_inference_mode_enabled())
        memo_key, value = self.__dict__['_memo']
        if key != memo_key:
            self.drop_memo()
            with torch.no_grad():
                value = compute()
            self.__dict__['_memo'] = (key, value)
        return value

    def train(self, mode=True):
        self.drop_memo()  # training changes the tensors at every step: hold nothing stale
        return super().train(mode)

    def __getstate__(self):
        # deepcopy / pickling: memoised tensors are derived data
        state = self.__dict__.copy()
        state['_memo'] = (None, None)
        return state

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
    """Per-output-channel symmetric weight quantizer: step ``clip · max|w_c| / q_max``.

    ``clip`` (one ratio per channel, a buffer) is 1 (min-max, nothing clipped) unless fitted:
    with ``fit='mse'`` the ratio of each channel is chosen to minimise the weight's quantization
    error (:func:`~mimiq_mm.quant.ranges.mse_clip_ratios`) the first time the quantizer runs
    within :func:`mimiq_mm.quant.calibration` — on the weight alone, no data needed. The ratio
    stays fixed afterwards, the step follows the weight as it is fine-tuned.

    Without autograd (evaluation, calibration, a frozen weight) the quantized weight is computed
    once and reused until the weight changes (:meth:`memo`: keyed on the weight's storage and
    version counter, dropped when the module switches to training mode); it is exactly what the
    per-call computation returns. With autograd (training) the weight is quantized at every call.

    Args:
        bits (int): bit-width, 2 to 8.
        channels (int): output channels of the weight (the length of ``clip``).
        channel_dim (int): the output-channel dimension of the weight (0 for Linear/Conv2d).
        fit (str): 'minmax' (clip 1) or 'mse'.
    """

    def __init__(self, bits, channels=1, channel_dim=0, fit='minmax'):
        super().__init__(bits, signed=True)
        if fit not in WEIGHT_FITS:
            raise ValueError(f'unknown weight range fit {fit!r}; choose one of {list(WEIGHT_FITS)}')
        self.channel_dim, self.fit = channel_dim, fit
        self.observing = False
        self.register_buffer('clip', torch.ones(channels))
        self.register_buffer('fitted', torch.zeros((), dtype=torch.bool))

    def _broadcast(self, values, weight):
        shape = [1] * weight.dim()
        shape[self.channel_dim] = -1
        return values.view(shape)

    def step_of(self, weight):
        """The per-channel step, shaped to broadcast against ``weight`` (e.g. (C_out, 1))."""
        reduce_dims = [d for d in range(weight.dim()) if d != self.channel_dim]
        max_abs = weight.detach().abs().amax(dim=reduce_dims, keepdim=True)
        return (max_abs * self._broadcast(self.clip, weight) / self.q_max).clamp_min(1e-8)

    @torch.no_grad()
    def fit_clipping(self, weight):
        """Choose ``clip`` for ``weight`` (by ``fit``) and mark the quantizer fitted."""
        if self.fit == 'mse':
            w = weight.detach().float().movedim(self.channel_dim, 0).flatten(1)  # (C, K)
            self.clip.copy_(mse_clip_ratios(w, self.q_min, self.q_max))
        self.fitted.fill_(True)

    def quantize(self, weight):
        """The fake-quantized weight, computed now."""
        # Without clipping the symmetric range holds the largest magnitude, so nothing is clipped
        # and the straight-through gradient is the identity (a mask would zero the largest weight
        # wherever w / step rounds to just above q_max in floating point); clipped weights keep
        # their gradient too, their quantized value stays at the end of the range.
        step = self.step_of(weight).float()
        return fake_quantize(weight, step, 0.0, self.q_min, self.q_max, mask_grad=False)

    def forward(self, weight):
        if not self.enabled:
            return weight
        if self.observing and not bool(self.fitted):
            self.fit_clipping(weight)
        if torch.is_grad_enabled() and weight.requires_grad:
            return self.quantize(weight)
        return self.memo((weight, self.clip), lambda: self.quantize(weight))

    def extra_repr(self):
        return f'bits={self.bits}, channel_dim={self.channel_dim}, fit={self.fit}, enabled={self.enabled}'


class UncalibratedQuantizerError(ValueError):
    """An activation quantizer was asked to quantize in evaluation before it was calibrated
    (a ValueError: it comes from the model given, e.g. a full-precision checkpoint)."""


class ActQuantizer(_Quantizer):
    """Base of the per-tensor activation quantizers: ``forward(x, out=None)``.

    An uncalibrated quantizer initialises itself from the batch it sees while calibrating
    (:func:`mimiq_mm.quant.calibration`) or training (QAT from the first batch, as in LSQ); in
    evaluation it raises :class:`UncalibratedQuantizerError` instead, so that a model that was
    never calibrated cannot report a figure computed on ranges fitted to its own test batch.

    ``out`` (a tensor of ``x``'s shape and dtype, possibly ``x`` itself) receives the result when
    no autograd graph is recorded, so a caller that owns ``x`` can quantize it without a new
    allocation; it is ignored under autograd.
    """

    def qparams_for(self, x):
        """(step, offset) to apply to ``x``: 0-dim float32 tensors (observing/initialising first)."""
        raise NotImplementedError

    def may_initialize(self):
        """Whether an uncalibrated quantizer may initialise on the batch it sees now."""
        if self.observing or self.training:
            return True
        raise UncalibratedQuantizerError(
            'an activation quantizer was never calibrated: calibrate the model first (within '
            'mimiq_mm.quant.calibration(model)) or load a calibrated student')

    def forward(self, x, out=None):
        if not self.enabled:
            return x
        step, offset = self.qparams_for(x)
        return fake_quantize(x, step, offset, self.q_min, self.q_max, out=out)


class MinMaxActQuantizer(ActQuantizer):
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
        lo, hi = torch.aminmax(x.detach())  # exact in any dtype; one pass
        lo, hi = lo.float(), hi.float()
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def qparams(self):
        """(step, offset): 0-dim float32 tensors; the range always includes zero."""
        return self.memo((self.min_val, self.max_val), self._compute_qparams)

    def _compute_qparams(self):
        lo = torch.minimum(self.min_val, torch.zeros_like(self.min_val))
        hi = torch.maximum(self.max_val, torch.zeros_like(self.max_val))
        step = ((hi - lo) / (self.q_max - self.q_min)).clamp_min(1e-8)
        offset = torch.round(self.q_min - lo / step)
        return step, offset

    def qparams_for(self, x):
        if (self.observing or (self.training and self.update_in_training)
                or (not bool(self.initialized) and self.may_initialize())):
            self.observe(x)
        return self.qparams()


LSQ_INITS = ('mse', 'mean_abs', 'minmax')


class LSQActQuantizer(ActQuantizer):
    """Per-tensor activation quantizer with learnable step and offset (LSQ, LSQ+).

    Initialised on the calibration batches, by ``init``:

    * ``'mse'`` (LSQ+'s initialisation, the default): an unsigned range with an offset, clipped
      where the quantization error of each calibration batch is smallest
      (:func:`~mimiq_mm.quant.ranges.mse_range`), averaged over the batches;
    * ``'mean_abs'`` (LSQ; the implementation notes' lineage): from the first batch, signed if its
      minimum is negative, step ``2 * mean|x| / sqrt(q_max)``, offset 0;
    * ``'minmax'``: the step and offset of :class:`MinMaxActQuantizer` over every calibration
      batch (EMA with ``momentum``), so that fine-tuning starts from the min-max PTQ state.

    Gradients of step and offset are scaled by ``1 / sqrt(numel * q_max)`` as in LSQ.
    """

    def __init__(self, bits, learn_offset=True, init='mse', momentum=0.1):
        super().__init__(bits, signed=False)
        if init not in LSQ_INITS:
            raise ValueError(f'unknown LSQ initialisation {init!r}; choose one of {list(LSQ_INITS)}')
        self.learn_offset = learn_offset
        self.init, self.momentum = init, momentum
        self._range = None  # (min, max, batches) of the calibration so far, 'minmax'/'mse' (not saved)
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
        """Set step and offset from the batch ``x`` (and, for 'minmax'/'mse', the calibration
        batches before it)."""
        if self.init == 'mean_abs':
            x = x.detach().float()
            self.signed_flag.fill_(bool(x.min() < 0))
            self.step.copy_((2 * x.abs().mean() / math.sqrt(self.q_max)).clamp_min(1e-6))
            self.offset.zero_()
            self.initialized.fill_(True)
            return
        self.signed_flag.fill_(False)
        # 'minmax' averages the raw extremes as MinMaxActQuantizer does, zero is included after
        lo, hi = torch.aminmax(x.detach().float()) if self.init == 'minmax' else mse_range(x, self.q_max + 1)
        if bool(self.initialized) and self._range is not None:
            prev_lo, prev_hi, seen = self._range
            weight = self.momentum if self.init == 'minmax' else 1.0 / (seen + 1)  # EMA / running mean
            lo, hi = prev_lo.lerp(lo, weight), prev_hi.lerp(hi, weight)
            self._range = (lo, hi, seen + 1)
        else:
            self._range = (lo, hi, 1)
        lo, hi = lo.clamp_max(0), hi.clamp_min(0)
        step = ((hi - lo) / self.q_max).clamp_min(1e-6)
        self.step.copy_(step)
        self.offset.copy_(torch.round(-lo / step))
        self.initialized.fill_(True)

    def qparams(self, numel=1):
        """(step, offset) as used on an input of ``numel`` elements: the step's magnitude, the
        offset rounded (both with LSQ's gradient scale)."""
        scale = 1.0 / math.sqrt(numel * self.q_max)
        step = grad_scale(self.step, scale).abs().clamp_min(1e-8)
        offset = round_ste(grad_scale(self.offset, scale))
        return step, offset

    def qparams_for(self, x):
        if (not bool(self.initialized) and self.may_initialize()) or (self.observing and self.init != 'mean_abs'):
            self.initialize(x)
        if torch.is_grad_enabled() and (self.step.requires_grad or self.offset.requires_grad):
            return self.qparams(x.numel())
        # no graph: the gradient scale is irrelevant and the values are those of qparams()
        return self.memo((self.step, self.offset, self.signed_flag), self.qparams)

    def extra_repr(self):
        return f'bits={self.bits}, learn_offset={self.learn_offset}, init={self.init}, enabled={self.enabled}'


ACT_QUANTIZERS = {'minmax': MinMaxActQuantizer, 'lsq': LSQActQuantizer}


def build_act_quantizer(bits, method, lsq_init='mse'):
    """Build a per-tensor activation quantizer by method name ('minmax' or 'lsq')."""
    if method not in ACT_QUANTIZERS:
        raise ValueError(f'unknown activation quantizer {method!r}; choose one of {sorted(ACT_QUANTIZERS)}')
    return LSQActQuantizer(bits, init=lsq_init) if method == 'lsq' else ACT_QUANTIZERS[method](bits)
