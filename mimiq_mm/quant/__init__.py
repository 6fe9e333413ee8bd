"""Uniform fake quantization with straight-through gradients, applied by in-place module swaps."""
from .modules import QuantConv2d, QuantLinear
from .quantize import (QuantConfig, calibration, quant_config_of, quantize_model, quantizers, quantizers_initialized,
                       reset_activation_ranges, set_quantization)
from .quantizers import (ActQuantizer, LSQActQuantizer, MinMaxActQuantizer, WeightQuantizer, build_act_quantizer,
                         check_bits, fake_quantize)

__all__ = ['ActQuantizer', 'QuantConfig', 'QuantConv2d', 'QuantLinear', 'LSQActQuantizer', 'MinMaxActQuantizer',
           'WeightQuantizer', 'build_act_quantizer', 'calibration', 'check_bits', 'fake_quantize', 'quant_config_of',
           'quantize_model', 'quantizers', 'quantizers_initialized', 'reset_activation_ranges', 'set_quantization']
