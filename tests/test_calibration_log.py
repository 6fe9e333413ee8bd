"""The calibration log says how the quantizers were started and on what figures."""
import timm
import torch

from mimiq_mm.quant import calibration, describe_calibration, quantize_model


def _calibrated(**quant):
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, num_classes=10, depth=1)
    quantize_model(model, w_bits=3, a_bits=3, **quant)
    with calibration(model):
        model(torch.randn(2, 3, 32, 32))
    return model


def test_the_default_start_and_weight_clipping_are_named_with_their_figures():
    line = describe_calibration(_calibrated())
    assert "LSQActQuantizer(init='mse')" in line and "w_fit='mse'" in line
    median = float(line.split('median ')[1].split(',')[0])
    assert 0 < median < 1  # 3-bit Gaussian-like weights: the best step is well under the min-max one


def test_min_max_quantizers_are_named_as_such():
    line = describe_calibration(_calibrated(act_method='minmax', w_fit='minmax'))
    assert 'MinMaxActQuantizer' in line and 'LSQ' not in line and 'with min-max steps' in line
