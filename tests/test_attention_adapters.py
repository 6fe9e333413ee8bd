"""Per-head attention capture on every supported ViT / DeiT / Swin implementation.

For each implementation a tiny randomly initialised model is built on CPU (no downloads) and fed a
NON-SQUARE image. The captured scores / probabilities / per-head outputs of every attention module
are checked against a recomputation written here from the module's own weights and its own input
(taken by a forward pre-hook), and the reported token layout against the geometry implied by the
model's configuration.
"""
import copy
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mimiq_mm.attention import (AttentionCore, AttentionRecorder, UnsupportedBackboneError, attention_cores,
                                install_attention_capture, supported_families)
from mimiq_mm.quant import calibration, quantize_model

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
    return Case(_eval(model), _image(img), Attention, global_layouts(img, patch, 2, 1), ref_timm_vit, cfg)


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
    return Case(_eval(model), _image(img), Attention, global_layouts(img, patch, 3, 2), ref_timm_vit, cfg)


def case_timm_swin():
    pytest.importorskip('timm')
    from timm.models.swin_transformer import SwinTransformer, WindowAttention
    img, patch, window, depths = (64, 96), 4, 4, (2, 2, 2)
    torch.manual_seed(2)
    model = SwinTransformer(img_size=img, patch_size=patch, window_size=window, embed_dim=16, depths=depths,
                            num_heads=(2, 2, 4), mlp_ratio=2., num_classes=7)
    _randomize_bias_tables(model)
    return Case(_eval(model), _image(img), WindowAttention,
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
    return Case(_eval(model), _image(img), MultiheadAttention, global_layouts(img, patch, 2, 1),
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
    return Case(_eval(model), _image(img), MultiheadAttention, global_layouts(img, patch, 2, 2),
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
    return Case(_eval(model), _image(img), WindowMSA, swin_layouts(img, patch, window, depths, shift_mmpretrain),
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
    return Case(_eval(model), _image(img), WindowMSA, swin_layouts(img, patch, window, depths, shift_always),
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
    return Case(_eval(model), _image(img), MultiheadAttention, global_layouts(img, patch, 2, 1), ref_mmcv_mha, cfg)


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
    return Case(_eval(model), _image(img), WindowMSA, swin_layouts(img, patch, window, depths, shift_always),
                ref_window, dict(window=window, qk_scale=0.3))


def _eval(model):
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


@pytest.fixture(params=list(CASES), scope='module')
def case(request):
    return CASES[request.param]()


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


# ============================================================================ tests

@torch.no_grad()
def test_install_keeps_outputs(case):
    model = copy.deepcopy(case.model)
    before = tensors(model(case.image))
    context = install_attention_capture(model)
    assert len(context.cores) == len(case.expected)
    after = tensors(model(case.image))
    assert len(before) == len(after)
    for a, b in zip(after, before):
        assert_close(a, b, 'model output after install')
    # while recording (explicit softmax path) the outputs are unchanged as well
    with AttentionRecorder(model):
        recorded = tensors(model(case.image))
    for a, b in zip(recorded, before):
        assert_close(a, b, 'model output while recording')
    # idempotent: a second install changes nothing
    assert install_attention_capture(model) is context
    assert len(attention_cores(model)) == len(case.expected)
    assert len([m for m in model.modules() if isinstance(m, AttentionCore)]) == len(case.expected)


@torch.no_grad()
def test_records_match_recomputation_and_layout(case):
    model = copy.deepcopy(case.model)
    install_attention_capture(model)
    modules = attention_modules(model, case.attn_type)
    assert len(modules) == len(case.expected), 'the config defines this many attention blocks'
    seen, handles = capture_inputs(model, case.attn_type)
    with AttentionRecorder(model) as rec:
        model(case.image)
    for h in handles:
        h.remove()

    # every block is seen exactly once, in order, shifted ones included
    assert [r.name for r in rec.records] == [n for n, _ in modules]
    assert all(len(seen[n]) == 1 for n, _ in modules)

    for (name, module), record, exp in zip(modules, rec.records, case.expected):
        args, kwargs = seen[name][0]
        scores, probs, outputs = case.reference(module, args, kwargs, case.cfg)
        assert_close(record.scores, scores, f'{name} scores')
        assert_close(record.probs, probs, f'{name} probs')
        assert_close(record.outputs, outputs, f'{name} outputs')
        assert torch.allclose(record.probs.sum(-1), torch.ones(()), atol=1e-5)

        lay = record.layout
        n_tokens = exp.num_prefix_tokens + exp.grid[0] * exp.grid[1]
        assert tuple(lay.grid) == exp.grid, name
        assert lay.num_prefix_tokens == exp.num_prefix_tokens, name
        assert lay.num_spatial_tokens == exp.grid[0] * exp.grid[1]
        assert record.scores.shape[-2:] == (n_tokens, n_tokens), name
        assert record.scores.shape[0] == BATCH * exp.windows_per_image, name
        assert record.outputs.shape[:3] == record.scores.shape[:3]
        if exp.window_size is None:
            assert not lay.is_windowed and lay.window_size is None and lay.windows_per_image == 1, name
        else:
            assert lay.is_windowed and tuple(lay.window_size) == exp.window_size, name
            assert tuple(lay.shift_size) == exp.shift_size, f'{name}: shift {lay.shift_size} != {exp.shift_size}'
            assert lay.windows_per_image == exp.windows_per_image, name
            # the block itself passed a shift mask exactly when it shifted
            mask = kwargs.get('mask', args[1] if len(args) > 1 else None)
            assert (mask is not None) == any(exp.shift_size), name
            if mask is not None:
                assert mask.shape[0] == exp.windows_per_image

    if case.expected[0].window_size is not None:
        shifts = [tuple(r.layout.shift_size) for r in rec.records]
        assert (0, 0) in shifts and any(any(s) for s in shifts), 'both regular and shifted blocks are captured'


@torch.no_grad()
def test_recorder_fields_and_layers(case):
    model = copy.deepcopy(case.model)
    install_attention_capture(model)
    with AttentionRecorder(model, fields=('probs',), layers=[1], detach=True) as rec:
        model(case.image)
    assert len(rec.records) == 1
    record = rec.records[0]
    assert record.name == attention_modules(model, case.attn_type)[1][0]
    assert record.probs is not None and record.scores is None and record.outputs is None
    with AttentionRecorder(model) as rec:
        pass
    model(case.image)  # recording stopped on exit
    assert rec.records == []


def test_quantized_student_has_same_record_interface(case):
    model = copy.deepcopy(case.model)
    install_attention_capture(model)
    with torch.no_grad(), AttentionRecorder(model) as fp_rec:
        model(case.image)

    # the student is a deep copy of the (already captured) teacher: it must get its own context
    student = _eval(quantize_model(copy.deepcopy(model), w_bits=8, a_bits=8))
    cores = attention_cores(student)
    assert not set(map(id, cores)) & set(map(id, attention_cores(model)))
    with torch.no_grad(), calibration(student):
        student(case.image)
    with torch.no_grad(), AttentionRecorder(model) as teacher_rec:
        student(case.image)
    assert teacher_rec.records == []
    assert len(cores) == len(case.expected)
    assert all(c.quantized for c in cores)
    with AttentionRecorder(student) as q_rec:
        out = student(case.image)
    assert len(q_rec.records) == len(fp_rec.records)
    for a, b in zip(q_rec.records, fp_rec.records):
        assert a.name == b.name and a.layout == b.layout
        for key in ('scores', 'probs', 'outputs'):
            assert getattr(a, key).shape == getattr(b, key).shape, (a.name, key)
        # 8 bits: close to the float attention, but not identical
        assert (a.probs - b.probs).abs().max() < 0.05, a.name
    assert any(not torch.equal(a.probs, b.probs) for a, b in zip(q_rec.records, fp_rec.records))
    # records keep the graph for distillation losses
    loss = sum(r.probs.sum() for r in q_rec.records) + sum(t.sum() for t in tensors(out))
    assert q_rec.records[0].probs.requires_grad
    loss.backward()


# ============================================================================ unsupported backbones

class MyAttention(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.to_qkv(x).chunk(3, -1)
        return self.out(F.scaled_dot_product_attention(q, k, v))


class ToyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.blocks = nn.Sequential(MyAttention(), MyAttention())

    def forward(self, x):
        return self.blocks(self.embed(x).flatten(2).transpose(1, 2))


def _assert_lists_families(message):
    for family in supported_families():
        assert family in message
    for word in ('timm', 'mmpretrain', 'mmdet', 'mmseg', 'Swin', 'VisionTransformer'):
        assert word in message


def test_supported_families_cover_all_implementations():
    families = ' '.join(supported_families())
    for word in ('timm', 'mmpretrain', 'mmdet', 'mmseg', 'Swin', 'DeiT'):
        assert word in families


def test_toy_attention_is_rejected_with_families():
    model = ToyTransformer()
    with pytest.raises(UnsupportedBackboneError) as info:
        install_attention_capture(model)
    message = str(info.value)
    assert 'MyAttention' in message and 'blocks.0' in message
    _assert_lists_families(message)
    assert isinstance(info.value, TypeError)
    with pytest.raises(UnsupportedBackboneError):
        quantize_model(ToyTransformer(), w_bits=8, a_bits=8)


def test_mixed_supported_and_unknown_attention_is_rejected():
    timm = pytest.importorskip('timm')
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=1, num_heads=4, num_classes=3)
    model.extra = MyAttention(32)
    with pytest.raises(UnsupportedBackboneError, match='MyAttention'):
        install_attention_capture(model)


def test_cnn_without_attention_is_rejected():
    tv = pytest.importorskip('torchvision')
    model = tv.models.resnet18(weights=None)
    with pytest.raises(UnsupportedBackboneError) as info:
        install_attention_capture(model)
    assert 'ResNet' in str(info.value)
    _assert_lists_families(str(info.value))
