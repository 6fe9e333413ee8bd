"""Quantized Linear and Conv2d made by changing the class of an existing module in place.

The module object, its parameters, hooks and state_dict keys stay; it gains two children,
``weight_quantizer`` and ``input_quantizer``.
"""
import torch.nn as nn
import torch.nn.functional as F


class QuantLinear(nn.Linear):
    """nn.Linear whose weight (per output channel) and input (per tensor) are fake-quantized."""

    def forward(self, x):
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantConv2d(nn.Conv2d):
    """nn.Conv2d whose weight (per output channel) and input (per tensor) are fake-quantized."""

    def forward(self, x):
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


QUANT_CLASSES = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}


def to_quant_module(module, weight_quantizer, input_quantizer):
    """Turn ``module`` (an nn.Linear or nn.Conv2d, or subclass) into its quantized class in place."""
    for float_cls, quant_cls in QUANT_CLASSES.items():
        if isinstance(module, quant_cls):
            break
        if isinstance(module, float_cls):
            # Subclasses (e.g. NonDynamicallyQuantizableLinear) keep only what nn.Linear defines.
            module.__class__ = quant_cls
            break
    else:
        raise TypeError(f'cannot quantize {type(module).__name__}')
    module.weight_quantizer = weight_quantizer
    module.input_quantizer = input_quantizer
    return module
