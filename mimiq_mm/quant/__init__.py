"""Uniform fake quantization with straight-through gradients, applied by in-place module swaps."""
from .fake_quantize import fake_quantize
from .modules import QuantConv2d, QuantLinear
from .quantize import (QuantConfig, calibration, describe_calibration, quant_config_of, quantize_model, quantizers, quantizers_initialized,
                       reset_activation_ranges, set_quantization, uncalibrated_quantizers)
from .quantizers import (ActQuantizer, LSQActQuantizer, MinMaxActQuantizer, UncalibratedQuantizerError,
                         WeightQuantizer, build_act_quantizer, check_bits)

__all__ = ['ActQuantizer', 'QuantConfig', 'QuantConv2d', 'QuantLinear', 'LSQActQuantizer', 'MinMaxActQuantizer',
           'UncalibratedQuantizerError', 'WeightQuantizer', 'build_act_quantizer', 'calibration', 'check_bits',
           'describe_calibration',
           'fake_quantize', 'quant_config_of', 'quantize_model', 'quantizers', 'quantizers_initialized',
           'reset_activation_ranges', 'set_quantization', 'uncalibrated_quantizers']
