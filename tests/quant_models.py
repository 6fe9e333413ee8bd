"""Shared helpers of the quantization tests: tiny randomly initialised timm models, test images,
quantized copies and calibration.

CPU only, no downloads.
"""
import copy

import torch

from mimiq_mm.quant import calibration, quantize_model

IMG = (32, 48)
DEPTH = 2


def make_vit(seed=0):
    """A tiny timm ViT (non-square input, 8x8 patches -> 4x6 grid)."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=IMG, patch_size=8, embed_dim=48, depth=DEPTH, num_heads=4, mlp_ratio=2.,
                              num_classes=10)
    return model.eval()


def images(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *IMG, generator=g)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def quantized_copy(model, **cfg):
    return quantize_model(copy.deepcopy(model), **cfg).eval()


def calibrate(model, x):
    with torch.no_grad(), calibration(model):
        model(x)


def _channel_scaled_weight(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    scales = torch.logspace(-3, 1, shape[0]).view(-1, *([1] * (len(shape) - 1)))
    return w * scales


def make_swin(seed=0):
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(seed)
    model = SwinTransformer(img_size=(32, 32), patch_size=4, window_size=4, embed_dim=16, depths=(2, 2),
                            num_heads=(2, 4), mlp_ratio=2., num_classes=5)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, 'relative_position_bias_table'):
                m.relative_position_bias_table.normal_(0, 1)
    return model.eval()
