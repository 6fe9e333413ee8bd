"""Export mode: a fake-quantized model that runs ONNX Q/DQ operators with its own quantization.

Inside :func:`qdq_export_mode` every quantizer of the model (and the two places that need more
than a quantizer) computes with the ``quantized_decomposed`` operators that torch's ONNX
exporter writes as ``QuantizeLinear`` / ``DequantizeLinear``:

* an activation quantizer (per tensor, min-max or LSQ) becomes QuantizeLinear to uint8 with the
  calibrated or learned step and offset, then DequantizeLinear. Every range, signed or unsigned,
  of 2 to 8 bits is held in uint8 with a shifted zero point; below 8 bits a ``Clip`` in float
  before the QuantizeLinear keeps the codes inside the n-bit range, so integer kernels compute
  on exactly the student's levels;
* a weight quantizer (per output channel, symmetric) becomes int8 codes stored as a constant and
  a per-channel DequantizeLinear; codes of weights of 4 bits or fewer fit INT4 (see
  :mod:`.onnx_export`);
* the attention core computes q·kᵀ with the softmax scale folded into q's dequantization scale
  and k quantized after its transpose, and mmseg's packed q/k/v projection uses one constant per
  projection, so ONNX Runtime finds DequantizeLinear → MatMul on both inputs of every matmul;
* the OpenMMLab Swins (mmpretrain, mmseg, mmdet ``ShiftWindowMSA``) reverse their windows with
  the batch left to the reshape: theirs computes it with ``int()``, which the exporter records
  as the example's batch, and the file then mixes the images of any other batch size.

The codes are those the fake quantizer rounds to (``clamp(round(x / step + offset))``): the
exported graph computes what the student computes, up to rounding ties (ONNX rounds
``x / step`` before adding the zero point) and floating-point summation order.
"""
import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..attention import AttentionCore
from ..attention.adapters import PackedInProjection
from ..quant import ActQuantizer, WeightQuantizer, quantizers

UINT8_MAX = 255


class DeployError(ValueError):
    """A model or option that cannot be exported; the message says what to do instead."""


def _ops():
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed)
    return torch.ops.quantized_decomposed


@dataclass
class ActQDQ:
    """How one activation quantizer is written: uint8 codes ``round(x / scale) + zero_point``.

    ``clip`` (lo, hi) in float keeps an n-bit range (n < 8) inside uint8; ``step``/``offset`` are
    the quantizer's own parameters, ``shift`` the distance from its levels to the uint8 codes.
    """
    scale: float
    zero_point: int
    clip: Optional[Tuple[float, float]]
    step: float
    offset: int
    shift: int


def act_qdq(quantizer: ActQuantizer, name: str = '') -> ActQDQ:
    """The Q/DQ parameters of a calibrated activation quantizer."""
    if not bool(quantizer.initialized):
        raise DeployError(f'activation quantizer {name} is not calibrated: export a trained student '
                          '(student_wXaY.pth or a QuantDistiller checkpoint), or calibrate the model first')
    with torch.no_grad():
        step, offset = quantizer.qparams()
    step, offset = float(step), int(round(float(offset)))
    q_min, q_max = quantizer.q_min, quantizer.q_max
    # codes = levels + shift must lie in 0..255, and so must the zero point offset + shift
    low, high = max(-q_min, -offset), min(UINT8_MAX - q_max, UINT8_MAX - offset)
    if low > high:
        raise DeployError(f'quantizer {name}: offset {offset} with levels {q_min}..{q_max} has no uint8 zero point; '
                          'this LSQ offset drifted outside the quantization range and cannot be exported exactly')
    shift = low
    clip = None
    if (q_min + shift, q_max + shift) != (0, UINT8_MAX):
        bounds = torch.tensor([q_min - offset, q_max - offset], dtype=torch.float32) * torch.tensor(step)
        clip = (float(bounds[0]), float(bounds[1]))
    return ActQDQ(scale=step, zero_point=offset + shift, clip=clip, step=step, offset=offset, shift=shift)


def quantize_dequantize(x, p: ActQDQ, dq_scale: Optional[float] = None):
    """QuantizeLinear (uint8) then DequantizeLinear of ``x``; ``dq_scale`` replaces the scale of
    the dequantization (a constant factor folded in)."""
    ops = _ops()
    if p.clip is not None:
        x = x.clamp(*p.clip)
    codes = ops.quantize_per_tensor(x, p.scale, p.zero_point, 0, UINT8_MAX, torch.uint8)
    return ops.dequantize_per_tensor(codes, dq_scale if dq_scale is not None else p.scale, p.zero_point, 0,
                                     UINT8_MAX, torch.uint8)


def weight_codes(quantizer: WeightQuantizer, weight: torch.Tensor):
    """(int8 codes, float32 per-channel step (C,)) with ``codes * step`` equal to the quantizer's
    fake-quantized weight."""
    with torch.no_grad():
        step = quantizer.step_of(weight).float()
        levels = torch.div(weight.float(), step).clamp_(quantizer.q_min, quantizer.q_max).round_()
    return levels.to(torch.int8), step.flatten()


def dequantize_weight(codes, step, axis):
    return _ops().dequantize_per_channel(codes, step, torch.zeros_like(step, dtype=torch.int64), axis, -128, 127,
                                         torch.int8)


# ----------------------------------------------------------------------------- export forwards

def _params(quantizer):
    """The quantizer's :class:`ActQDQ`, computed at its first call: a quantizer that the exported
    function never calls (an auxiliary head, a detector's RoI heads) need not be calibrated."""
    if quantizer.__dict__.get('_qdq') is None:
        quantizer.__dict__['_qdq'] = act_qdq(quantizer, quantizer.__dict__.get('_export_name', ''))
    return quantizer.__dict__['_qdq']


def _act_forward(self, x, out=None):
    return quantize_dequantize(x, _params(self))


def _weight_forward(self, weight):
    return dequantize_weight(self.export_codes, self.export_step, self.channel_dim)


def _scores_forward(self, q, k, scale):
    # (DQ(q) · scale) @ DQ(kᵀ) == DQ_{scale_q · scale}(q) @ DQ(kᵀ): the multiplication moves into
    # the dequantization, leaving DequantizeLinear → MatMul on both sides
    q_p, k_p = _params(self.query_quantizer), _params(self.key_quantizer)
    return quantize_dequantize(q, q_p, dq_scale=q_p.scale * scale) @ quantize_dequantize(k.transpose(-2, -1), k_p)


def _packed_project(self, x, index):
    # one constant per projection: slicing the dequantized packed weight would sit between
    # DequantizeLinear and MatMul
    part = slice(index * self.embed_dim, (index + 1) * self.embed_dim)
    weight = dequantize_weight(getattr(self, f'export_codes_{index}'), self.weight_quantizer.export_step[part], 0)
    bias = None if self.in_proj_bias is None else self.in_proj_bias[part]
    return nn.functional.linear(self.input_quantizer(x), weight, bias)


def _window_reverse(window_size):
    """``ShiftWindowMSA.window_reverse`` (mmpretrain: ``(windows, H, W, window_size)``, mmseg and
    mmdet: ``(windows, H, W)``) with the batch from the reshape."""
    def window_reverse(windows, H, W, size=window_size):
        channels = windows.shape[-1]
        x = windows.view(-1, H // size, W // size, size, size, channels)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, channels)
    return window_reverse


def check_exportable(model: nn.Module):
    """Raise :class:`DeployError` unless ``model`` is a fake-quantized, calibrated model."""
    found = quantizers(model)
    if not found:
        raise DeployError(f'{type(model).__name__} has no quantizers: export the quantized student of a mimiq_mm '
                          'config (init_model(config, checkpoint, part="student")), not a full-precision model')
    acts = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    if acts and not any(bool(m.initialized) for m in acts):
        raise DeployError('no activation quantizer of the student is calibrated: the checkpoint holds no quantizer '
                          'state (a full-precision checkpoint?). Export the student_wXaY.pth written by training, or '
                          'a QuantDistiller checkpoint of tools/train.py')
    disabled = [name for name, m in model.named_modules() if isinstance(m, (ActQuantizer, WeightQuantizer))
                and not m.enabled]
    if disabled:
        raise DeployError(f'{len(disabled)} quantizers are switched off (e.g. {disabled[:3]}); switch them on '
                          '(mimiq_mm.quant.set_quantization(model, True, True)) before exporting')


def _weight_owners(model):
    """(owner module, weight quantizer, weight) of every quantized weight."""
    for module in model.modules():
        wq = getattr(module, 'weight_quantizer', None)
        if isinstance(wq, WeightQuantizer):
            weight = module.in_proj_weight if isinstance(module, PackedInProjection) else module.weight
            yield module, wq, weight


@contextmanager
def qdq_export_mode(model: nn.Module):
    """Within this context ``model`` computes with Q/DQ operators (see the module docstring);
    everything is restored on exit. The model must be calibrated (:func:`check_exportable`); an
    uncalibrated quantizer is an error when it is first called."""
    check_exportable(model)
    patched, buffers = [], []

    def patch(obj, attr, fn, bind=True):
        patched.append((obj, attr, obj.__dict__.get(attr)))
        obj.__dict__[attr] = types.MethodType(fn, obj) if bind else fn

    def add_buffer(module, name, tensor):
        module.register_buffer(name, tensor, persistent=False)
        buffers.append((module, name))

    try:
        for name, m in model.named_modules():
            if isinstance(m, ActQuantizer):
                m.__dict__['_export_name'] = name
                patch(m, 'forward', _act_forward)
        for owner, wq, weight in _weight_owners(model):
            codes, step = weight_codes(wq, weight)
            add_buffer(wq, 'export_codes', codes)
            add_buffer(wq, 'export_step', step)
            if isinstance(owner, PackedInProjection):
                c = owner.embed_dim
                for index in range(3):
                    add_buffer(owner, f'export_codes_{index}', codes[index * c:(index + 1) * c].clone())
                patch(owner, 'project', _packed_project)
            else:
                patch(wq, 'forward', _weight_forward)
        for core in model.modules():
            if isinstance(core, AttentionCore) and core.quantized:
                patch(core, 'quantized_scores', _scores_forward)
        for module in model.modules():
            size = getattr(module, 'window_size', None)
            if callable(getattr(module, 'window_reverse', None)) and isinstance(size, int):
                patch(module, 'window_reverse', _window_reverse(size), bind=False)
        yield model
    finally:
        for obj, attr, previous in reversed(patched):
            if previous is None:
                obj.__dict__.pop(attr, None)
            else:
                obj.__dict__[attr] = previous
        for module, name in buffers:
            delattr(module, name)
        for m in model.modules():
            m.__dict__.pop('_qdq', None)
            m.__dict__.pop('_export_name', None)
