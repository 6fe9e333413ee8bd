"""Per-head attention capture on every supported ViT / DeiT / Swin implementation.

For each implementation a tiny randomly initialised model is built on CPU (no downloads) and fed a
NON-SQUARE image. The captured scores / probabilities / per-head outputs of every attention module
are checked against a recomputation written here from the module's own weights and its own input
(taken by a forward pre-hook), and the reported token layout against the geometry implied by the
model's configuration.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mimiq_mm.attention import (AttentionCore, AttentionRecorder, UnsupportedBackboneError, attention_cores,
                                install_attention_capture, supported_families)
from mimiq_mm.quant import calibration, quantize_model

from attention_cases import BATCH, CASES, in_eval_mode, assert_close, attention_modules, capture_inputs, tensors


@pytest.fixture(params=list(CASES), scope='module')
def case(request):
    return CASES[request.param]()



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
    student = in_eval_mode(quantize_model(copy.deepcopy(model), w_bits=8, a_bits=8))
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
