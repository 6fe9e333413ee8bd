"""The attention implementations the capture tests run on (test_attention_adapters.py): a tiny
randomly initialised model of each supported ViT / DeiT / Swin family with a NON-SQUARE image, the
token geometry its configuration implies, and a recomputation of its scores / probabilities /
per-head outputs from the module's own weights and input."""
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 2


# ============================================================================ expected geometry

@dataclass
class Expected:
    """What the layout of one attention module must say (computed from the config, not the code)."""
    grid: Tuple[int, int]
    num_prefix_tokens: int = 0
    window_size: Optional[Tuple[int, int]] = None
    shift_size: Optional[Tuple[int, int]] = None
    windows_per_image: int = 1


def global_layouts(img, patch, depth, prefix):
    grid = (img[0] // patch, img[1] // patch)
    return [Expected(grid=grid, num_prefix_tokens=prefix) for _ in range(depth)]


def swin_layouts(img, patch, window, depths, shift_rule):
    """``shift_rule(stage_hw, window)`` -> the (h, w) shift an odd (shifted) block really uses."""
    out = []
    h, w = img[0] // patch, img[1] // patch
    for depth in depths:
        per_image = math.ceil(h / window) * math.ceil(w / window)
        for j in range(depth):
            shift = shift_rule((h, w), window) if j % 2 == 1 else (0, 0)
            out.append(Expected(grid=(window, window), window_size=(window, window), shift_size=shift,
                                windows_per_image=per_image))
        h, w = (h + 1) // 2, (w + 1) // 2
    return out


def shift_always(hw, window):  # mmdet / mmseg: pad small maps, always shift
    return (window // 2, window // 2)


def shift_timm(hw, window):  # timm: no shift along a dim the window already covers
    return tuple(0 if r <= window else window // 2 for r in hw)


def shift_mmpretrain(hw, window):  # mmpretrain (pad_small_map=False): no shift once min(H, W) == window
    return (0, 0) if min(hw) <= window else (window // 2, window // 2)


# ============================================================================ recomputation

def heads(t, num_heads):
    b, n, c = t.shape
    return t.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def reference_qkv_linear(module, x, num_heads, scale, qk_norm=False, bias=None, mask=None):
    """Attention of a fused-qkv module recomputed from its own weights.

    Returns scores (q·kᵀ·scale, no bias/mask), probs (softmax with bias and mask) and outputs (probs·v).
    """
    w, b = module.qkv.weight, module.qkv.bias
    c3 = w.shape[0]
    qkv = F.linear(x, w, b)
    q, k, v = (heads(qkv[..., i * c3 // 3:(i + 1) * c3 // 3], num_heads) for i in range(3))
    if qk_norm:
        q, k = module.q_norm(q), module.k_norm(k)
    scores = (q @ k.transpose(-2, -1)) * scale
    logits = scores
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        n_w, n = mask.shape[0], mask.shape[-1]
        logits = (logits.view(-1, n_w, num_heads, n, n) + mask[None, :, None]).view(-1, num_heads, n, n)
    probs = logits.softmax(-1)
    return scores, probs, probs @ v


def relative_position_bias(module, window):
    n = window * window
    table = module.relative_position_bias_table
    bias = table[module.relative_position_index.reshape(-1)].reshape(n, n, -1)
    return bias.permute(2, 0, 1)[None]  # (1, H, N, N)


def ref_timm_vit(module, args, kwargs, cfg):
    x = args[0]
    head_dim = module.qkv.weight.shape[0] // 3 // cfg['num_heads']
    return reference_qkv_linear(module, x, cfg['num_heads'], head_dim ** -0.5, qk_norm=cfg.get('qk_norm', False))


def ref_mmpretrain_vit(module, args, kwargs, cfg):
    x = args[0]
    return reference_qkv_linear(module, x, cfg['num_heads'], (cfg['embed_dims'] // cfg['num_heads']) ** -0.5)


def ref_window(module, args, kwargs, cfg):
    x = args[0]
    mask = kwargs.get('mask', args[1] if len(args) > 1 else None)
    num_heads = module.relative_position_bias_table.shape[1]
    dim = module.qkv.weight.shape[1]
    scale = cfg.get('qk_scale') or (dim // num_heads) ** -0.5
    bias = relative_position_bias(module, cfg['window'])
    return reference_qkv_linear(module, x, num_heads, scale, bias=bias, mask=mask)


def ref_mmcv_mha(module, args, kwargs, cfg):
    x = args[0] if args else kwargs['query']  # (B, N, C), batch_first
    mha = module.attn
    c, h = cfg['embed_dims'], cfg['num_heads']
    w, b = mha.in_proj_weight, mha.in_proj_bias
    q, k, v = (heads(F.linear(x, w[i * c:(i + 1) * c], b[i * c:(i + 1) * c]), h) for i in range(3))
    scores = (q @ k.transpose(-2, -1)) * (c // h) ** -0.5
    probs = scores.softmax(-1)
    return scores, probs, probs @ v


# ============================================================================ the seven families

@dataclass
class Case:
    model: nn.Module
    image: torch.Tensor
    attn_type: type
    expected: List[Expected]
    reference: Callable
    cfg: dict = field(default_factory=dict)


def _image(hw, seed=0):
    return torch.randn(BATCH, 3, *hw, generator=torch.Generator().manual_seed(seed))


def case_timm_vit():
    timm = pytest.importorskip('timm')
    from timm.layers import Attention
    img, patch = (32, 48), 8
    cfg = dict(num_heads=4)
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=img, patch_size=patch,
                              embed_dim=32, depth=2, num_heads=4, mlp_ratio=2., num_classes=7)
    return Case(in_eval_mode(model), _image(img), Attention, global_layouts(img, patch, 2, 1), ref_timm_vit, cfg)


def case_timm_deit_distilled():
    timm = pytest.importorskip('timm')
    from timm.layers import Attention
    img, patch = (32, 48), 8
    cfg = dict(num_heads=4, qk_norm=True)
    torch.manual_seed(1)
    model = timm.create_model('deit_tiny_distilled_patch16_224', pretrained=False, img_size=img, patch_size=patch,
                              embed_dim=32, depth=3, num_heads=4, mlp_ratio=2., num_classes=7, qk_norm=True)
    # qk_norm LayerNorms start as identity; perturb them so the test sees whether they are applied
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return Case(in_eval_mode(model), _image(img), Attention, global_layouts(img, patch, 3, 2), ref_timm_vit, cfg)


def case_timm_swin():
    pytest.importorskip('timm')
    from timm.models.swin_transformer import SwinTransformer, WindowAttention
    img, patch, window, depths = (64, 96), 4, 4, (2, 2, 2)
    torch.manual_seed(2)
    model = SwinTransformer(img_size=img, patch_size=patch, window_size=window, embed_dim=16, depths=depths,
                            num_heads=(2, 2, 4), mlp_ratio=2., num_classes=7)
    _randomize_bias_tables(model)
    return Case(in_eval_mode(model), _image(img), WindowAttention,
                swin_layouts(img, patch, window, depths, shift_timm), ref_window, dict(window=window))


def case_mmpretrain_vit():
    pytest.importorskip('mmpretrain')
    from mmpretrain.models.utils.attention import MultiheadAttention
    from mmpretrain.registry import MODELS
    img, patch = (32, 48), 8
    arch = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)
    torch.manual_seed(3)
    model = MODELS.build(dict(type='VisionTransformer', arch=arch, img_size=img, patch_size=patch,
                              out_type='featmap', drop_path_rate=0.))
    return Case(in_eval_mode(model), _image(img), MultiheadAttention, global_layouts(img, patch, 2, 1),
                ref_mmpretrain_vit, arch)


def case_mmpretrain_deit_distilled():
    pytest.importorskip('mmpretrain')
    from mmpretrain.models.utils.attention import MultiheadAttention
    from mmpretrain.registry import MODELS
    img, patch = (32, 48), 8
    arch = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
    torch.manual_seed(4)
    model = MODELS.build(dict(type='DistilledVisionTransformer', arch=arch, img_size=img, patch_size=patch,
                              drop_path_rate=0.))
    return Case(in_eval_mode(model), _image(img), MultiheadAttention, global_layouts(img, patch, 2, 2),
                ref_mmpretrain_vit, arch)


def case_mmpretrain_swin():
    pytest.importorskip('mmpretrain')
    from mmpretrain.models.utils.attention import WindowMSA
    from mmpretrain.registry import MODELS
    img, patch, window, depths = (64, 96), 4, 4, (2, 2, 2)
    torch.manual_seed(5)
    model = MODELS.build(dict(type='SwinTransformer', arch=dict(embed_dims=16, depths=list(depths),
                                                                num_heads=[2, 2, 4]),
                              img_size=img, patch_size=patch, window_size=window, out_indices=(0, 1, 2),
                              drop_path_rate=0.))
    _randomize_bias_tables(model)
    return Case(in_eval_mode(model), _image(img), WindowMSA, swin_layouts(img, patch, window, depths, shift_mmpretrain),
                ref_window, dict(window=window))


def case_mmdet_swin():
    pytest.importorskip('mmdet')
    from mmdet.models.backbones.swin import WindowMSA
    from mmdet.registry import MODELS
    img, patch, window, depths = (56, 88), 4, 4, (2, 2)  # 14x22 and 7x11 tokens: padded windows
    torch.manual_seed(6)
    model = MODELS.build(dict(type='SwinTransformer', pretrain_img_size=img, embed_dims=16, patch_size=patch,
                              window_size=window, mlp_ratio=2, depths=depths, num_heads=(2, 4), strides=(4, 2),
                              out_indices=(0, 1), drop_path_rate=0.))
    _randomize_bias_tables(model)
    return Case(in_eval_mode(model), _image(img), WindowMSA, swin_layouts(img, patch, window, depths, shift_always),
                ref_window, dict(window=window))


def case_mmseg_vit():
    pytest.importorskip('mmcv')
    pytest.importorskip('mmseg')
    from mmcv.cnn.bricks.transformer import MultiheadAttention
    from mmseg.registry import MODELS
    img, patch = (32, 48), 8
    cfg = dict(embed_dims=32, num_heads=4)
    torch.manual_seed(7)
    model = MODELS.build(dict(type='VisionTransformer', img_size=img, patch_size=patch, embed_dims=32, num_layers=2,
                              num_heads=4, mlp_ratio=2, out_indices=(0, 1), final_norm=True))
    return Case(in_eval_mode(model), _image(img), MultiheadAttention, global_layouts(img, patch, 2, 1), ref_mmcv_mha, cfg)


def case_mmseg_swin():
    pytest.importorskip('mmseg')
    from mmseg.models.backbones.swin import WindowMSA
    from mmseg.registry import MODELS
    img, patch, window, depths = (64, 96), 4, 4, (2, 2)
    torch.manual_seed(8)
    model = MODELS.build(dict(type='SwinTransformer', pretrain_img_size=img, embed_dims=16, patch_size=patch,
                              window_size=window, mlp_ratio=2, depths=depths, num_heads=(2, 4), strides=(4, 2),
                              out_indices=(0, 1), qk_scale=0.3, drop_path_rate=0.))
    _randomize_bias_tables(model)
    return Case(in_eval_mode(model), _image(img), WindowMSA, swin_layouts(img, patch, window, depths, shift_always),
                ref_window, dict(window=window, qk_scale=0.3))


def in_eval_mode(model):
    model.eval()  # some mm backbones override train() without returning self
    return model


def _randomize_bias_tables(model):
    """mm WindowMSA starts with an all-zero bias table; give it values so its use is checked."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('relative_position_bias_table'):
                p.normal_(0, 0.5)


CASES = {
    'timm_vit': case_timm_vit,
    'timm_deit_distilled': case_timm_deit_distilled,
    'timm_swin': case_timm_swin,
    'mmpretrain_vit': case_mmpretrain_vit,
    'mmpretrain_deit_distilled': case_mmpretrain_deit_distilled,
    'mmpretrain_swin': case_mmpretrain_swin,
    'mmdet_swin': case_mmdet_swin,
    'mmseg_vit': case_mmseg_vit,
    'mmseg_swin': case_mmseg_swin,
}



# ============================================================================ helpers

def tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in tensors(o)]
    raise TypeError(type(out))


def attention_modules(model, attn_type):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, attn_type)]


def capture_inputs(model, attn_type):
    """Forward pre-hooks that keep (args, kwargs) of every call of every attention module."""
    seen, handles = {}, []
    for name, module in attention_modules(model, attn_type):
        def hook(mod, args, kwargs, name=name):
            seen.setdefault(name, []).append((args, dict(kwargs)))
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, handles


def assert_close(actual, expected, what, atol=1e-5, rtol=1e-4):
    assert actual.shape == expected.shape, f'{what}: {tuple(actual.shape)} vs {tuple(expected.shape)}'
    err = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), f'{what}: max abs err {err}'
