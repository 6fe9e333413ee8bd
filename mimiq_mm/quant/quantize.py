"""Quantizing a model in place, and the small API to switch and calibrate it.

What is quantized (implementation notes): every nn.Linear and nn.Conv2d — patch embedding and
heads included — on its weight (per output channel, symmetric min-max) and its input activation
(per tensor), the packed q/k/v projection of mmseg's ViT attention, and both inputs of each
attention matmul (q and k of q·kᵀ; probabilities and v of attn·v). LayerNorm, softmax, GELU and
residual additions stay in floating point, and the raw image entering the first layer is not
quantized.
"""
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..attention import AttentionCore, install_attention_capture
from ..attention.adapters import PackedInProjection
from ..utils.wrappers import unwrap_model
from .modules import to_quant_module
from .quantizers import (ACT_QUANTIZERS, LSQ_INITS, WEIGHT_FITS, ActQuantizer, LSQActQuantizer, MinMaxActQuantizer,
                         WeightQuantizer, _Quantizer, build_act_quantizer, check_bits)


@dataclass
class QuantConfig:
    """Bit-widths and methods of a fake-quantized model.

    Args:
        w_bits (int): weight bits, 2–8.
        a_bits (int): activation bits, 2–8 (attention matmul inputs included).
        act_method (str): 'lsq' (learnable step and offset, the default) or 'minmax'
            (EMA-calibrated, the implementation notes' lineage).
        lsq_init (str): where LSQ quantizers start: 'mse' (default; LSQ+'s initialisation: the
            clipped range with the smallest quantization error on the calibration batches),
            'mean_abs' (LSQ: ``2·mean|x|/√q_max``, the notes' lineage) or 'minmax' (the min-max
            PTQ range; fine-tuning from it can end far below it, benchmarks/cifar10/README.md).
        module_lsq_init (dict | None): regexes of module names → LSQ start of the activation
            quantizers of those modules (the first that matches); the others start by ``lsq_init``.
            None (default): the task's own (:attr:`TaskAdapter.activation_starts`, e.g. the
            detector's box head starts from min-max) where a task is known, else none; ``{}``:
            ``lsq_init`` everywhere.
        w_fit (str): weight ranges: 'mse' (default; per channel, the clipping with the smallest
            quantization error, fitted on the weight itself) or 'minmax' (the notes' lineage).
        keep_first_last_8bit (bool): keep the first and last layer at 8 bits.
        quantize_attention (bool): quantize both inputs of both attention matmuls.
        skip (Sequence[str]): regexes of module names left in floating point.
    """
    w_bits: int = 4
    a_bits: int = 4
    act_method: str = 'lsq'
    lsq_init: str = 'mse'
    module_lsq_init: Optional[dict] = None
    w_fit: str = 'mse'
    keep_first_last_8bit: bool = False
    quantize_attention: bool = True
    skip: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self):
        check_bits(self.w_bits, 'w_bits (weight bit-width)')
        check_bits(self.a_bits, 'a_bits (activation bit-width)')
        if self.act_method not in ACT_QUANTIZERS:
            raise ValueError(f'act_method must be one of {sorted(ACT_QUANTIZERS)} (got {self.act_method!r})')
        if self.lsq_init not in LSQ_INITS:
            hint = "; 'auto' (a choice between two starts) was replaced by 'mse'" if self.lsq_init == 'auto' else ''
            raise ValueError(f'lsq_init must be one of {list(LSQ_INITS)} (got {self.lsq_init!r}){hint}')
        for pattern, init in dict(self.module_lsq_init or {}).items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f'module_lsq_init: {pattern!r} is not a regular expression of module names '
                                 f"({err}); e.g. r'roi_head\\.bbox_head\\.'") from err
            if init not in LSQ_INITS:
                raise ValueError(f'module_lsq_init[{pattern!r}] must be one of {list(LSQ_INITS)} (got {init!r})')
        if self.w_fit not in WEIGHT_FITS:
            raise ValueError(f'w_fit must be one of {list(WEIGHT_FITS)} (got {self.w_fit!r})')

    def with_task_starts(self, task):
        """This config, with the task's LSQ starts (``task.activation_starts``) where
        ``module_lsq_init`` is None."""
        if self.module_lsq_init is not None:
            return self
        return replace(self, module_lsq_init=dict(getattr(task, 'activation_starts', {}) or {}))

    @classmethod
    def from_any(cls, cfg):
        if isinstance(cfg, cls):
            return cfg
        cfg = dict(cfg or {})
        cfg.pop('type', None)
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f'unknown quantization options {sorted(unknown)}; '
                             f'known: {sorted(cls.__dataclass_fields__)}')
        return cls(**cfg)


def _weight_layers(model):
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, PackedInProjection))]


def quantize_model(model: nn.Module, cfg=None, **kwargs) -> nn.Module:
    """Fake-quantize ``model`` in place according to ``cfg`` (a :class:`QuantConfig` or dict).

    Module objects, parameters and state_dict keys of the float model are kept, so a float
    checkpoint loads into the result; quantizer state adds keys of its own.
    """
    cfg = QuantConfig.from_any(cfg if cfg is not None else kwargs)
    skip = [re.compile(p) for p in cfg.skip]
    starts = [(re.compile(p), init) for p, init in dict(cfg.module_lsq_init or {}).items()]

    def act_quantizer(name, bits):
        init = next((i for p, i in starts if p.search(name)), cfg.lsq_init)
        return build_act_quantizer(bits, cfg.act_method, init)

    if cfg.quantize_attention:
        install_attention_capture(model)
    layers = [(n, m) for n, m in _weight_layers(model) if not any(p.search(n) for p in skip)]
    first = layers[0][0] if layers else None
    last = layers[-1][0] if layers else None
    for name, module in layers:
        edge = name in (first, last)
        w_bits = 8 if edge and cfg.keep_first_last_8bit else cfg.w_bits
        a_bits = 8 if edge and cfg.keep_first_last_8bit else cfg.a_bits
        weight = module.in_proj_weight if isinstance(module, PackedInProjection) else module.weight
        weight_q = WeightQuantizer(w_bits, channels=weight.shape[0], fit=cfg.w_fit)
        # The raw image entering the first layer stays in floating point.
        input_q = nn.Identity() if name == first else act_quantizer(name, a_bits)
        if isinstance(module, PackedInProjection):
            module.weight_quantizer, module.input_quantizer = weight_q, input_q
        else:
            to_quant_module(module, weight_q, input_q)
    if cfg.quantize_attention:
        for name, core in model.named_modules():
            if isinstance(core, AttentionCore) and not any(p.search(name) for p in skip):
                for slot in ('query_quantizer', 'key_quantizer', 'prob_quantizer', 'value_quantizer'):
                    setattr(core, slot, act_quantizer(name, cfg.a_bits))
    model.__dict__['_mimiq_quant_cfg'] = cfg
    return model


def quant_config_of(model):
    """The :class:`QuantConfig` a model was quantized with, or None."""
    return unwrap_model(model).__dict__.get('_mimiq_quant_cfg')


def quantizers(model, kind=_Quantizer):
    """All quantizer modules of ``model`` of type ``kind``."""
    return [m for m in model.modules() if isinstance(m, kind)]


def set_quantization(model, weights=True, activations=True):
    """Switch weight and activation fake quantization on or off."""
    for q in quantizers(model):
        q.enabled = weights if isinstance(q, WeightQuantizer) else activations
    return model


@contextmanager
def calibration(model, only_uncalibrated=False):
    """Within this context, min-max quantizers observe every batch (EMA), uninitialised LSQ
    quantizers initialise from the first batch they see, and weight quantizers not yet fitted fit
    their clipping to their weight; with ``only_uncalibrated``, only the activation quantizers
    that are not calibrated yet observe (a resumed run keeps what it learned)."""
    observers = quantizers(model, (MinMaxActQuantizer, LSQActQuantizer))
    if only_uncalibrated:
        observers = [q for q in observers if not bool(q.initialized)]
    observers += [q for q in quantizers(model, WeightQuantizer) if not bool(q.fitted)]
    for q in observers:
        q.observing = True
    try:
        yield model
    finally:
        for q in observers:
            q.observing = False


def reset_activation_ranges(model, lsq_init=None):
    """Forget calibrated ranges / LSQ initialisation, so the next calibration starts afresh
    (LSQ quantizers with ``lsq_init``, one of ``LSQ_INITS``, if given)."""
    if lsq_init is not None and lsq_init not in LSQ_INITS:
        raise ValueError(f'lsq_init must be one of {list(LSQ_INITS)} (got {lsq_init!r})')
    for q in quantizers(model, (MinMaxActQuantizer, LSQActQuantizer)):
        q.initialized.fill_(False)
        if lsq_init is not None and isinstance(q, LSQActQuantizer):
            q.init, q._range = lsq_init, None


def uncalibrated_quantizers(model):
    """Names of the activation quantizers of ``model`` that are not calibrated (nor restored)."""
    return [name for name, q in model.named_modules()
            if isinstance(q, (MinMaxActQuantizer, LSQActQuantizer)) and not bool(q.initialized)]


def quantizers_initialized(model) -> bool:
    """Whether ``model`` has activation quantizers and all of them are calibrated (or restored)."""
    flags = [bool(q.initialized) for q in quantizers(model) if hasattr(q, 'initialized')]
    return bool(flags) and all(flags)


def describe_calibration(model) -> str:
    """One line on how ``model``'s quantizers were started: each activation quantizer kind with its
    start, and the weight ranges (for clipped ones, the median and range of the per-channel ratio of
    the step to the min-max step), e.g. for the calibration log."""
    acts = {}
    for q in quantizers(model, ActQuantizer):
        kind = f"{type(q).__name__}(init='{q.init}')" if isinstance(q, LSQActQuantizer) else type(q).__name__
        acts[kind] = acts.get(kind, 0) + 1
    weights = quantizers(model, WeightQuantizer)
    clipped = [q.clip for q in weights if q.fit != 'minmax']
    text = 'activations: ' + ', '.join(f'{n} {k}' for k, n in acts.items())
    by_module = getattr(quant_config_of(model), 'module_lsq_init', None)
    if by_module:
        text += ' (started by module: ' + ', '.join(f"{p} → {i}" for p, i in by_module.items()) + ')'
    text += f'; weights: {len(weights)} quantizers'
    if clipped:
        ratios = torch.cat([c.flatten() for c in clipped]).float()
        text += (f", {len(clipped)} with least-squared-error steps (w_fit='mse'; step / min-max step: median "
                 f'{ratios.median():.2f}, {ratios.min():.2f}–{ratios.max():.2f})')
    else:
        text += ' with min-max steps'
    return text
