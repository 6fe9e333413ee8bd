"""Fake quantization at model level: in-place model quantization, bit-width validation, quantizer
placement, state dicts and checkpoints, mmseg packed projections, switching quantization on and off.

CPU only, tiny randomly initialised models, no downloads. The quantizers' own maths is tested in
test_quantizers.py, the fake-quantization kernel and the cached and in-place paths in test_fake_quantize.py.
"""
import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mimiq_mm.attention import AttentionCore, install_attention_capture
from mimiq_mm.quant import (ActQuantizer, LSQActQuantizer, MinMaxActQuantizer, QuantConfig, QuantConv2d, QuantLinear,
                            UncalibratedQuantizerError, WeightQuantizer, build_act_quantizer, calibration, check_bits,
                            quantize_model, quantizers, quantizers_initialized, set_quantization,
                            uncalibrated_quantizers)

from quant_models import DEPTH, IMG, calibrate, images, make_vit, quantized_copy, rel_err

timm = pytest.importorskip('timm')


# ----------------------------------------------------------------------------- accuracy vs bits

def test_output_error_grows_as_bits_shrink():
    fp = make_vit()
    calib, test = images(1, 8), images(2, 4)
    with torch.no_grad():
        ref = fp(test)
    errors = {}
    for bits in (8, 4, 3):
        q = quantized_copy(fp, w_bits=bits, a_bits=bits)
        calibrate(q, calib)
        with torch.no_grad():
            errors[bits] = rel_err(q(test), ref)
    assert 0 < errors[8] < 0.05, errors
    assert errors[4] > 3 * errors[8] and errors[4] > errors[8] + 0.05, errors
    assert errors[3] > 1.2 * errors[4], errors


def test_quantize_model_swaps_classes_in_place_and_keeps_parameters():
    fp = make_vit()
    model = copy.deepcopy(fp)
    fc1 = model.blocks[0].mlp.fc1
    weight = fc1.weight
    q = quantize_model(model, w_bits=4, a_bits=4)
    assert q is model
    assert model.blocks[0].mlp.fc1 is fc1 and type(fc1) is QuantLinear and fc1.weight is weight
    assert type(model.patch_embed.proj) is QuantConv2d
    n_linear = sum(isinstance(m, nn.Linear) for m in fp.modules())
    assert sum(type(m) is QuantLinear for m in model.modules()) == n_linear
    assert all(type(m) is not nn.Linear for m in model.modules())


# ----------------------------------------------------------------------------- checkpoints

def test_float_checkpoint_loads_strict_into_quantized_model():
    fp = make_vit(seed=0)
    q = quantize_model(make_vit(seed=1), w_bits=4, a_bits=4)
    result = q.load_state_dict(fp.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, p in fp.state_dict().items():
        assert torch.equal(q.state_dict()[name], p), name
    set_quantization(q, False, False)
    x = images(6)
    with torch.no_grad():
        assert torch.allclose(q(x), fp(x), atol=1e-5)


@pytest.mark.parametrize('act_method', ['minmax', 'lsq'])
def test_quantized_state_dict_round_trip(act_method):
    q = quantized_copy(make_vit(seed=0), w_bits=4, a_bits=4, act_method=act_method)
    x = images(7)
    calibrate(q, images(8))
    sd = q.state_dict()
    own = [k for k in sd if k.endswith(('min_val', 'max_val', 'step', 'offset', 'initialized'))]
    assert own, 'quantizer state must be part of the state_dict'
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf)

    other = quantized_copy(make_vit(seed=1), w_bits=4, a_bits=4, act_method=act_method)
    calibrate(other, images(9))
    with torch.no_grad():
        assert not torch.allclose(other(x), q(x))
    other.load_state_dict(loaded, strict=True)
    other.eval()
    with torch.no_grad():
        assert torch.equal(other(x), q(x))


@pytest.mark.parametrize('act_method', ['minmax', 'lsq'])
def test_an_uncalibrated_quantizer_refuses_to_evaluate(act_method):
    """Evaluation never fits ranges to the batch it is evaluating; calibration and QAT may."""
    q = quantized_copy(make_vit(), w_bits=4, a_bits=4, act_method=act_method)
    with torch.no_grad(), pytest.raises(UncalibratedQuantizerError, match='never calibrated'):
        q(images(1))
    q.train()
    q(images(1))  # QAT from the first batch (LSQ)
    assert quantizers_initialized(q)


@pytest.mark.parametrize('act_method', ['minmax', 'lsq'])
def test_calibrating_only_the_uncalibrated_quantizers_keeps_the_others(act_method):
    q = quantized_copy(make_vit(), w_bits=4, a_bits=4, act_method=act_method, lsq_init='minmax')
    calibrate(q, images(1))
    before = {k: v.clone() for k, v in q.state_dict().items()}
    reset = quantizers(q, ActQuantizer)[2]
    reset.initialized.fill_(False)
    assert len(uncalibrated_quantizers(q)) == 1
    with torch.no_grad(), calibration(q, only_uncalibrated=True):
        q(images(2))  # other images: every quantizer that observed them would move
    after = q.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    name = next(n for n, m in q.named_modules() if m is reset)
    assert moved and all(k.startswith(name + '.') for k in moved), moved
    assert not uncalibrated_quantizers(q)


# ----------------------------------------------------------------------------- configuration errors

@pytest.mark.parametrize('bad', [1, 9, 0, 3.5, True, -4, '8', None])
@pytest.mark.parametrize('which', ['w_bits', 'a_bits'])
def test_bad_bit_widths_raise(bad, which):
    cfg = dict(w_bits=4, a_bits=4)
    cfg[which] = bad
    with pytest.raises(ValueError, match=r'2 to 8'):
        quantize_model(make_vit(), **cfg)
    with pytest.raises(ValueError, match=r'2 to 8'):
        QuantConfig(**cfg)


@pytest.mark.parametrize('bad', [1, 9, 0, 3.5, True])
def test_quantizers_reject_bad_bits(bad):
    with pytest.raises(ValueError, match=r'2 to 8'):
        check_bits(bad)
    with pytest.raises(ValueError, match=r'2 to 8'):
        WeightQuantizer(bad)
    with pytest.raises(ValueError, match=r'2 to 8'):
        MinMaxActQuantizer(bad)


@pytest.mark.parametrize('bits', [2, 3, 4, 5, 6, 7, 8])
def test_good_bit_widths_accepted(bits):
    assert QuantConfig(w_bits=bits, a_bits=bits).w_bits == bits
    assert WeightQuantizer(bits).q_max == 2 ** (bits - 1) - 1
    assert MinMaxActQuantizer(bits).q_max == 2 ** bits - 1


def test_unknown_act_method_raises():
    with pytest.raises(ValueError, match='act_method'):
        quantize_model(make_vit(), w_bits=4, a_bits=4, act_method='percentile')
    with pytest.raises(ValueError, match='minmax'):
        build_act_quantizer(4, 'percentile')
    with pytest.raises(ValueError, match='unknown quantization options'):
        quantize_model(make_vit(), dict(w_bits=4, a_bits=4, bitz=3))


# ----------------------------------------------------------------------------- placement

def test_keep_first_last_8bit_and_quantizer_placement():
    fp = make_vit()
    q = quantized_copy(fp, w_bits=4, a_bits=3, keep_first_last_8bit=True)
    first, last = q.patch_embed.proj, q.head
    assert first.weight_quantizer.bits == 8
    assert isinstance(first.input_quantizer, nn.Identity)  # the raw image stays in float
    assert last.weight_quantizer.bits == 8 and last.input_quantizer.bits == 8
    middle = q.blocks[0].mlp.fc1
    assert middle.weight_quantizer.bits == 4 and middle.input_quantizer.bits == 3
    # every other quantized layer uses the requested bits
    layers = [m for m in q.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    assert layers[0] is first and layers[-1] is last
    for m in layers[1:-1]:
        assert m.weight_quantizer.bits == 4 and m.input_quantizer.bits == 3

    q_plain = quantized_copy(fp, w_bits=4, a_bits=3)
    assert q_plain.patch_embed.proj.weight_quantizer.bits == 4
    assert isinstance(q_plain.patch_embed.proj.input_quantizer, nn.Identity)
    assert q_plain.head.weight_quantizer.bits == 4 and q_plain.head.input_quantizer.bits == 3

    # attention matmul quantizers on every core, at the activation bit-width
    cores = [m for m in q.modules() if isinstance(m, AttentionCore)]
    assert len(cores) == DEPTH
    for core in cores:
        for slot in ('query_quantizer', 'key_quantizer', 'prob_quantizer', 'value_quantizer'):
            slot_q = getattr(core, slot)
            assert isinstance(slot_q, LSQActQuantizer) and slot_q.bits == 3, slot
    # ... and they are exercised by the forward pass
    calibrate(q, images(9))
    assert all(bool(getattr(c, s).initialized) for c in cores
               for s in ('query_quantizer', 'key_quantizer', 'prob_quantizer', 'value_quantizer'))


def test_first_layer_sees_the_raw_image():
    q = quantized_copy(make_vit(), w_bits=4, a_bits=2)
    seen = {}
    q.patch_embed.proj.register_forward_pre_hook(lambda m, args: seen.setdefault('x', args[0]))
    x = images(10)
    calibrate(q, x)
    assert torch.equal(seen['x'], x)
    # but the second layer's input is quantized to 2 bits (at most 4 distinct values)
    seen2 = {}
    qkv = q.blocks[0].attn.qkv
    qkv.input_quantizer.register_forward_hook(lambda m, args, out: seen2.setdefault('y', out))
    with torch.no_grad():
        q(x)
    assert seen2['y'].unique().numel() <= 4


def test_attention_matmul_inputs_are_quantized():
    q = quantized_copy(make_vit(), w_bits=8, a_bits=2)
    calibrate(q, images(11))
    core = q.blocks[1].attn.mimiq_core
    seen = {}
    for slot in ('query_quantizer', 'key_quantizer', 'prob_quantizer', 'value_quantizer'):
        getattr(core, slot).register_forward_hook(lambda m, a, out, slot=slot: seen.setdefault(slot, out))
    with torch.no_grad():
        q(images(11))
    assert set(seen) == {'query_quantizer', 'key_quantizer', 'prob_quantizer', 'value_quantizer'}
    for slot, out in seen.items():
        assert out.unique().numel() <= 4, slot


def test_skip_leaves_layers_in_float():
    q = quantized_copy(make_vit(), w_bits=4, a_bits=4, skip=[r'^head$', r'blocks\.1\.'])
    assert type(q.head) is nn.Linear
    assert type(q.blocks[1].mlp.fc2) is nn.Linear
    assert isinstance(q.blocks[1].attn.mimiq_core.prob_quantizer, nn.Identity)
    assert type(q.blocks[0].mlp.fc2) is QuantLinear


# ----------------------------------------------------------------------------- switching

def test_set_quantization_off_restores_float_outputs_exactly():
    fp = make_vit()
    fp_captured = copy.deepcopy(fp)
    install_attention_capture(fp_captured)
    q = quantized_copy(fp, w_bits=3, a_bits=3)
    x = images(12)
    calibrate(q, x)
    with torch.no_grad():
        ref, ref_captured, quant = fp(x), fp_captured(x), q(x)
        assert rel_err(quant, ref) > 0.05
        set_quantization(q, False, False)
        off = q(x)
        assert torch.equal(off, ref_captured)
        assert torch.allclose(off, ref, atol=1e-6)
        set_quantization(q, True, False)  # weights only
        w_only = q(x)
        assert not torch.allclose(w_only, ref, atol=1e-4)
        assert all(not m.enabled for m in quantizers(q, MinMaxActQuantizer))
        set_quantization(q, True, True)
        assert torch.equal(q(x), quant)


# ----------------------------------------------------------------------------- mmseg ViT packed in_proj

def _mmseg_vit(seed):
    pytest.importorskip('mmcv')
    pytest.importorskip('mmseg')
    from mmseg.models.backbones import VisionTransformer
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=IMG, patch_size=8, embed_dims=32, num_layers=2, num_heads=4, mlp_ratio=2,
                              out_indices=(1,), final_norm=True)
    model.eval()  # mmseg's VisionTransformer.train() returns None
    return model


def test_mmseg_vit_packed_in_proj_quantized_and_fp_checkpoint_loads():
    from mimiq_mm.attention.adapters import PackedInProjection
    fp = _mmseg_vit(0)
    q = quantize_model(_mmseg_vit(1), w_bits=4, a_bits=4, act_method='minmax')
    packed = [m for m in q.modules() if isinstance(m, PackedInProjection)]
    assert len(packed) == 2
    for p in packed:
        assert isinstance(p.weight_quantizer, WeightQuantizer) and p.weight_quantizer.bits == 4
        assert isinstance(p.input_quantizer, MinMaxActQuantizer)
        assert type(p.out_proj) is QuantLinear
    assert not any(type(m) is nn.MultiheadAttention for m in q.modules())

    result = q.load_state_dict(fp.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    fp_sd = fp.state_dict()
    assert any(k.endswith('attn.attn.in_proj_weight') for k in fp_sd)
    for k, v in fp_sd.items():
        assert torch.equal(q.state_dict()[k], v), k

    # the packed weight goes through its quantizer: the q/k/v projections use 4-bit weights
    p = packed[0]
    x = torch.randn(2, 5, 32)
    c = p.embed_dim
    wq = WeightQuantizer(4)(p.in_proj_weight)
    p.input_quantizer.enabled = False
    for i in range(3):
        expected = F.linear(x, wq[i * c:(i + 1) * c], p.in_proj_bias[i * c:(i + 1) * c])
        assert torch.allclose(p.project(x, i), expected, atol=1e-6)
    assert not torch.allclose(p.project(x, 0), F.linear(x, p.in_proj_weight[:c], p.in_proj_bias[:c]), atol=1e-4)
    p.input_quantizer.enabled = True

    # and with quantization off, the FP checkpoint reproduces the FP backbone
    img = images(13)
    set_quantization(q, False, False)
    with torch.no_grad():
        for a, b in zip(q(img), fp(img)):
            assert torch.allclose(a, b, atol=1e-5)
    set_quantization(q, True, True)
    calibrate(q, img)
    with torch.no_grad():
        err = rel_err(q(img)[0], fp(img)[0])
    assert 0 < err < 1.0
