"""Fake quantization: quantizers, in-place model quantization, calibration and checkpoints.

CPU only, tiny randomly initialised models, no downloads.
"""
import copy
import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mimiq_mm.attention import AttentionCore, install_attention_capture
from mimiq_mm.quant import (ActQuantizer, LSQActQuantizer, MinMaxActQuantizer, QuantConfig, QuantConv2d, QuantLinear,
                            UncalibratedQuantizerError, WeightQuantizer, build_act_quantizer, calibration, check_bits,
                            fake_quantize, quantize_model, quantizers, quantizers_initialized, reset_activation_ranges,
                            set_quantization, uncalibrated_quantizers)

timm = pytest.importorskip('timm')

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


# ----------------------------------------------------------------------------- weight quantizer

def _channel_scaled_weight(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    scales = torch.logspace(-3, 1, shape[0]).view(-1, *([1] * (len(shape) - 1)))
    return w * scales


@pytest.mark.parametrize('bits', [2, 3, 4, 8])
@pytest.mark.parametrize('shape', [(16, 40), (8, 3, 5, 5)])
def test_weight_quantizer_per_channel_symmetric(bits, shape):
    w = _channel_scaled_weight(shape)
    wq = WeightQuantizer(bits)(w)
    assert wq.shape == w.shape
    flat, flat_q = w.flatten(1), wq.flatten(1)
    qmax = 2 ** (bits - 1) - 1
    for c in range(w.shape[0]):
        max_abs = flat[c].abs().max()
        step = max_abs / qmax
        levels = flat_q[c] / step
        # on this channel's own grid (per channel: the 1e-3-scaled channel is not flushed to zero)
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert levels.round().min() >= -(2 ** (bits - 1)) and levels.round().max() <= qmax
        assert flat_q[c].unique().numel() <= 2 ** bits
        # symmetric range: the largest magnitude maps onto the largest level exactly
        assert torch.isclose(flat_q[c].abs().max(), max_abs, rtol=1e-5)
        # nearest level: error at most half a step
        assert (flat_q[c] - flat[c]).abs().max() <= step / 2 + 1e-6 * max_abs
    # symmetric about zero
    assert torch.equal(WeightQuantizer(bits)(-w), -wq)


def test_weight_quantizer_levels_are_actually_limited():
    w = torch.randn(4, 1000)
    for bits in (2, 3, 4):
        wq = WeightQuantizer(bits)(w)
        counts = [row.unique().numel() for row in wq]
        assert max(counts) <= 2 ** bits
        assert min(counts) >= 2 ** bits - 2  # 1000 gaussian values populate (almost) every level


def test_fake_quantize_straight_through_gradient():
    step, q_min, q_max = 0.1, -8, 7
    x = torch.linspace(-1.5, 1.5, 301, requires_grad=True)
    y = fake_quantize(x, torch.tensor(step), torch.tensor(0.0), q_min, q_max)
    y.sum().backward()
    inside = (x.detach() / step >= q_min) & (x.detach() / step <= q_max)
    assert inside.any() and (~inside).any()
    assert torch.equal(x.grad[inside], torch.ones(int(inside.sum())))
    assert torch.equal(x.grad[~inside], torch.zeros(int((~inside).sum())))
    # values on the grid: y equals rounded x inside, the clamped extreme outside
    assert torch.allclose(y[inside], (x[inside] / step).round() * step, atol=1e-6)
    assert torch.allclose(y[x > 1.0], torch.full_like(y[x > 1.0], q_max * step))


def test_weight_quantizer_gradient_is_identity():
    w = _channel_scaled_weight((6, 10)).requires_grad_(True)
    WeightQuantizer(4)(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_disabled_quantizers_pass_through():
    x = torch.randn(3, 7)
    for q in (WeightQuantizer(3), MinMaxActQuantizer(3), LSQActQuantizer(3)):
        q.enabled = False
        assert q(x) is x


# ----------------------------------------------------------------------------- LSQ

def test_lsq_initialises_from_first_batch():
    g = torch.Generator().manual_seed(0)
    signed = torch.randn(64, 32, generator=g) * 3
    q = LSQActQuantizer(4, init='mean_abs')
    q(signed)
    assert bool(q.initialized) and bool(q.signed_flag)
    assert q.q_min == -8 and q.q_max == 7
    assert torch.isclose(q.step.detach(), 2 * signed.abs().mean() / math.sqrt(7))
    assert q.offset.item() == 0
    # later batches do not re-initialise
    q(signed * 100)
    assert torch.isclose(q.step.detach(), 2 * signed.abs().mean() / math.sqrt(7))

    positive = torch.rand(64, 32, generator=g)
    q = LSQActQuantizer(8, init='mean_abs')
    q(positive)
    assert not bool(q.signed_flag) and q.q_min == 0 and q.q_max == 255
    assert torch.isclose(q.step.detach(), 2 * positive.mean() / math.sqrt(255))


@pytest.mark.parametrize('bits', [8, 4, 3])
def test_lsq_minmax_init_starts_where_min_max_ptq_ends(bits):
    """LSQ+ initialisation: after the same calibration batches, the LSQ quantizer computes exactly
    what the min-max quantizer computes, so fine-tuning starts from the PTQ state; the LSQ paper's
    initialisation (symmetric, 2 mean|x| / sqrt(q_max)) does not, on an asymmetric activation."""
    g = torch.Generator().manual_seed(1)
    batches = [F.gelu(torch.randn(16, 64, generator=g) * 2) + 0.1 * i for i in range(3)]  # small negative tail
    minmax, lsq_plus, lsq = (MinMaxActQuantizer(bits), LSQActQuantizer(bits, init='minmax'),
                             LSQActQuantizer(bits, init='mean_abs'))
    for q in (minmax, lsq_plus, lsq):
        q.observing = True
        for b in batches:
            q(b)
        q.observing = False
        q.eval()  # min-max quantizers also follow the input in training mode
    probe = torch.cat(batches)
    assert not bool(lsq_plus.signed_flag) and lsq_plus.q_min == 0
    torch.testing.assert_close(lsq_plus(probe), minmax(probe), rtol=0, atol=1e-6)
    assert (lsq(probe) - minmax(probe)).abs().max() > 1e-3
    # outside calibration the range stays put, and the step/offset are learnable parameters
    before = lsq_plus.step.detach().clone()
    lsq_plus(probe * 10)
    assert torch.equal(lsq_plus.step.detach(), before) and lsq_plus.step.requires_grad


def test_lsq_init_is_a_quant_option():
    model = quantize_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), w_bits=4, a_bits=4, act_method='lsq',
                           lsq_init='minmax', quantize_attention=False)
    assert [m.init for m in model.modules() if isinstance(m, LSQActQuantizer)] == ['minmax']
    with pytest.raises(ValueError, match='lsq_init'):
        QuantConfig(lsq_init='percentile')
    with pytest.raises(ValueError, match="replaced by 'mse'"):
        QuantConfig(lsq_init='auto')
    default = quantize_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), w_bits=4, a_bits=4,
                             quantize_attention=False)
    assert [m.init for m in default.modules() if isinstance(m, LSQActQuantizer)] == ['mse']
    assert {m.fit for m in default.modules() if isinstance(m, WeightQuantizer)} == {'mse'}
    reset_activation_ranges(default, lsq_init='minmax')
    assert [m.init for m in default.modules() if isinstance(m, LSQActQuantizer)] == ['minmax']


def _heavy_tailed(seed, n=4096):
    """A GELU-like activation: a dense bulk near zero and rare large values."""
    g = torch.Generator().manual_seed(seed)
    x = F.gelu(torch.randn(n, generator=g))
    x[torch.randint(0, n, (8,), generator=g)] = 25.0
    return x


def _quantization_mse(q, x):
    with torch.no_grad():
        return (q(x) - x).square().mean().item()


@pytest.mark.parametrize('bits', [3, 4])
def test_lsq_mse_init_has_the_smallest_error_of_the_starts(bits):
    """The 'mse' start clips the rare extremes that min-max spends its levels on, and keeps more of
    them than LSQ's 2·mean|x|/√q_max: its quantization error is below both starts'."""
    x = _heavy_tailed(0)
    errors = {}
    for init in ('mse', 'mean_abs', 'minmax'):
        q = LSQActQuantizer(bits, init=init)
        q.observing = True
        q(x)
        q.observing = False
        q.eval()
        errors[init] = _quantization_mse(q, x)
    assert errors['mse'] < errors['minmax'] and errors['mse'] < errors['mean_abs'], errors
    q = LSQActQuantizer(bits)  # the default start, unsigned with a zero point inside the range
    q.observing = True
    q(x)
    assert q.init == 'mse' and not bool(q.signed_flag)


def test_lsq_mse_init_averages_the_calibration_batches():
    one, two = LSQActQuantizer(4), LSQActQuantizer(4)
    for q, batches in ((one, [_heavy_tailed(1)]), (two, [_heavy_tailed(1), 3 * _heavy_tailed(2)])):
        q.observing = True
        for b in batches:
            q(b)
    assert two.step.item() > one.step.item()  # the second, wider batch widened the range
    frozen = two.step.detach().clone()
    two.observing = False
    two(10 * _heavy_tailed(3))
    assert torch.equal(two.step.detach(), frozen)


@pytest.mark.parametrize('bits', [2, 3, 4])
def test_weight_mse_fit_clips_where_the_error_is_smallest(bits):
    """Fitted within calibration (on the weight, no data), the clipped per-channel range has a
    smaller weight error than min-max (most at 2 bits, where min-max rounds nearly every weight
    to zero); outside calibration nothing refits, and the state round-trips."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 2, 16).view(16, 1)
    minmax, fitted = WeightQuantizer(bits, channels=16), WeightQuantizer(bits, channels=16, fit='mse')
    fitted(w)
    assert not bool(fitted.fitted) and torch.equal(fitted.clip, torch.ones(16))  # not calibrating: min-max
    fitted.observing = True
    fitted(w)
    fitted.observing = False
    assert bool(fitted.fitted) and (fitted.clip < 1).any() and (fitted.clip <= 1).all()
    assert (fitted(w) - w).square().mean() < (minmax(w) - w).square().mean()
    fitted(w * 3)
    clip = fitted.clip.clone()
    other = WeightQuantizer(bits, channels=16, fit='mse')
    other.load_state_dict(fitted.state_dict())
    assert torch.equal(other.clip, clip) and torch.equal(other(w), fitted(w))


def test_lsq_gradients_match_lsq_formulas():
    g = torch.Generator().manual_seed(0)
    q = LSQActQuantizer(4, init='mean_abs')
    q(torch.randn(256, generator=g))  # initialise (signed: levels -8..7)
    with torch.no_grad():
        q.step.fill_(0.25)
        q.offset.fill_(1.0)
    x = torch.randn(256, generator=g) * 2
    y = q(x)
    y.sum().backward()
    step, off = 0.25, 1.0
    z = x / step + off
    inside = (z >= -8) & (z <= 7)
    assert inside.any() and (~inside).any()
    scale = 1.0 / math.sqrt(x.numel() * 7)
    expected_step = torch.where(inside, z.round() - z, z.clamp(-8, 7) - off).sum() * scale
    expected_offset = torch.where(inside, torch.zeros_like(z), torch.full_like(z, -step)).sum() * scale
    assert torch.isclose(q.step.grad, expected_step, rtol=1e-4, atol=1e-6)
    assert torch.isclose(q.offset.grad, expected_offset, rtol=1e-4, atol=1e-6)
    assert torch.allclose(y, (z.clamp(-8, 7).round() - off) * step)


def test_lsq_step_and_offset_get_gradients_through_model():
    fp = make_vit()
    q = quantize_model(copy.deepcopy(fp), w_bits=4, a_bits=4, act_method='lsq')
    x = images(3)
    calibrate(q, x)  # initialises every LSQ quantizer from this batch
    lsq = quantizers(q, LSQActQuantizer)
    assert lsq and all(bool(m.initialized) for m in lsq)
    assert not quantizers(q, MinMaxActQuantizer)
    q.train()
    loss = (q(x) - fp(x).detach()).square().mean()
    loss.backward()
    step_grads = [m.step.grad for m in lsq]
    offset_grads = [m.offset.grad for m in lsq]
    assert all(g is not None and g.abs() > 0 for g in step_grads)
    assert all(g is not None for g in offset_grads)
    # the offset only gets a gradient from clipped values (LSQ+; exact formula tested above), so
    # only the quantizers whose inputs exceed the initial range see one
    assert any(g.abs() > 0 for g in offset_grads)
    # the weights still learn through the straight-through estimator
    assert q.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # the learnable parameters are registered (optimisers see them)
    names = {n for n, _ in q.named_parameters()}
    assert any(n.endswith('.step') for n in names) and any(n.endswith('.offset') for n in names)


# ----------------------------------------------------------------------------- min-max EMA

def test_minmax_ema_updates_while_observing_and_freezes_in_eval():
    q = MinMaxActQuantizer(8, momentum=0.1).eval()
    holder = nn.Sequential(q)
    a = torch.tensor([-1.0, 0.5, 2.0])
    b = torch.tensor([-3.0, 0.0, 6.0])
    with calibration(holder):
        assert q.observing
        q(a)
        assert q.min_val.item() == pytest.approx(-1.0) and q.max_val.item() == pytest.approx(2.0)
        q(b)
        assert q.min_val.item() == pytest.approx(-1.0 + 0.1 * (-3.0 + 1.0))
        assert q.max_val.item() == pytest.approx(2.0 + 0.1 * (6.0 - 2.0))
    assert not q.observing
    frozen = (q.min_val.item(), q.max_val.item())
    wide = torch.tensor([-50.0, 0.3, 50.0])
    out = q(wide)
    assert (q.min_val.item(), q.max_val.item()) == frozen
    # outside the frozen range the output is clipped to it
    assert out.min().item() == pytest.approx(frozen[0], abs=0.05)
    assert out.max().item() == pytest.approx(frozen[1], abs=0.05)
    # training mode keeps tracking (QAT) unless disabled
    q.train()
    q(wide)
    assert q.min_val.item() < frozen[0] and q.max_val.item() > frozen[1]
    q2 = MinMaxActQuantizer(8, update_in_training=False)
    q2(a)  # an uninitialised quantizer always takes its first batch
    q2.train()
    q2(wide)
    assert (q2.min_val.item(), q2.max_val.item()) == pytest.approx((-1.0, 2.0))


def test_calibration_changes_model_ranges_only_inside_context():
    q = quantized_copy(make_vit(), w_bits=8, a_bits=8, act_method='minmax')
    x1, x2 = images(4), images(5) * 5
    calibrate(q, x1)
    mm = quantizers(q, MinMaxActQuantizer)
    assert mm and all(bool(m.initialized) for m in mm)
    ranges = [(m.min_val.clone(), m.max_val.clone()) for m in mm]
    with torch.no_grad():
        q(x2)
    assert all(torch.equal(m.min_val, lo) and torch.equal(m.max_val, hi) for m, (lo, hi) in zip(mm, ranges))
    calibrate(q, x2)
    assert any(not torch.equal(m.max_val, hi) for m, (_, hi) in zip(mm, ranges))


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


# ----------------------------------------------------------------------------- fast kernel vs formulation

def reference_fake_quantize(x, step, offset, q_min, q_max):
    """Eq. 4 written with autograd primitives (the formulation the fast kernel replaces)."""
    z = x / step + offset
    inside = (z >= q_min) & (z <= q_max)
    z = torch.where(inside, z, z.detach().clamp(q_min, q_max))
    rounded = (z.round() - z).detach() + z
    return (rounded - offset) * step


@pytest.mark.parametrize('bits,signed,step,offset', [(8, False, 0.0371, 97.), (4, False, 0.41, 7.), (4, True, 0.37, 1.),
                                                     (2, False, 1.3, 1.), (3, True, 0.5, -3.)])
def test_fake_quantize_equals_reference_formulation(bits, signed, step, offset):
    q_min, q_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    g = torch.Generator().manual_seed(bits)
    x0 = torch.randn(50_000, generator=g) * 3
    grad_out = torch.randn(50_000, generator=g)
    results = []
    for fn in (fake_quantize, reference_fake_quantize):
        x = x0.clone().requires_grad_(True)
        s = torch.tensor(step, requires_grad=True)
        o = torch.tensor(offset, requires_grad=True)
        y = fn(x, s, o, q_min, q_max)
        y.backward(grad_out)
        with torch.no_grad():
            y_eval = fn(x0, torch.tensor(step), torch.tensor(offset), q_min, q_max)
        results.append((y.detach(), y_eval, x.grad, s.grad, o.grad))
    (y, y_eval, gx, gs, go), (ry, ry_eval, rgx, rgs, rgo) = results
    z = x0 / step + offset
    assert ((z < q_min) | (z > q_max)).any() and ((z >= q_min) & (z <= q_max)).any()
    assert torch.equal(y, ry) and torch.equal(y_eval, ry_eval) and torch.equal(y, y_eval)
    # the formulation multiplies by 1/step and step again (1 ulp off); the kernel passes the gradient itself
    assert torch.equal(gx == 0, rgx == 0) and torch.allclose(gx, rgx, rtol=1e-6, atol=0)
    assert torch.equal(gx[gx != 0], grad_out[gx != 0])
    assert torch.allclose(gs, rgs, rtol=1e-4, atol=1e-3) and torch.allclose(go, rgo, rtol=1e-4, atol=1e-3)


def test_fake_quantize_out_writes_in_place_without_autograd():
    x = torch.randn(4, 5, 6) * 3
    step, offset = torch.tensor(0.1), torch.tensor(7.)
    expected = fake_quantize(x, step, offset, 0, 15)
    target = x.clone()
    assert fake_quantize(target, step, offset, 0, 15, out=target) is target
    assert torch.equal(target, expected)
    q = MinMaxActQuantizer(4)
    calibrate(nn.Sequential(q), x)
    q.eval()
    target = x.clone()
    assert q(target, out=target) is target and torch.equal(target, q(x))
    # under autograd ``out`` is ignored: the graph needs a new tensor
    xg = x.clone().requires_grad_(True)
    untouched = x.clone()
    y = fake_quantize(xg, step, offset, 0, 15, out=untouched)
    assert y is not untouched and torch.equal(untouched, x) and torch.equal(y, expected)


def test_quantized_permuted_input_comes_out_contiguous():
    x = torch.randn(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)[0]  # like q of a fused qkv
    assert not x.is_contiguous()
    y = fake_quantize(x, torch.tensor(0.1), torch.tensor(3.), 0, 15)
    assert y.is_contiguous() and torch.equal(y, fake_quantize(x.contiguous(), torch.tensor(0.1), torch.tensor(3.),
                                                                0, 15))


@pytest.mark.parametrize('bits', [8, 4])
def test_half_precision_inputs_land_on_the_float32_levels(bits):
    x = (torch.randn(20_000, generator=torch.Generator().manual_seed(0)) * 3).bfloat16()
    step, offset = torch.tensor(0.0371), torch.tensor(97. if bits == 8 else 7.)
    y = fake_quantize(x, step, offset, 0, 2 ** bits - 1)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, fake_quantize(x.float(), step, offset, 0, 2 ** bits - 1).bfloat16())
    # computed in bf16, x / step + offset would round to the wrong level for many values
    z16 = x / step.bfloat16() + offset.bfloat16()
    assert (z16.float().round() != (x.float() / step + offset).round()).any()
    xg = x.clone().requires_grad_(True)
    y_grad = fake_quantize(xg, step, offset, 0, 2 ** bits - 1)
    y_grad.float().sum().backward()
    assert torch.equal(y_grad.detach(), y) and xg.grad.dtype == torch.bfloat16


def test_weight_gradient_is_identity_even_where_rounding_lifts_the_max_above_q_max():
    w = _channel_scaled_weight((512, 64), seed=3).requires_grad_(True)
    q = WeightQuantizer(8)
    step = q.step_of(w)
    # the float32 division of a channel's largest weight by its step exceeds q_max in some channels
    assert ((w.detach() / step).abs().amax(1) > q.q_max).any()
    q(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


# ----------------------------------------------------------------------------- cached weights

def _weight_quantizers(model):
    return quantizers(model, WeightQuantizer)


def memoised(quantizer):
    return quantizer.__dict__['_memo'][1]


@pytest.mark.parametrize('act_method', ['minmax', 'lsq'])
def test_cached_weight_eval_path_equals_per_call_path(act_method):
    q = quantized_copy(make_vit(), w_bits=4, a_bits=4, act_method=act_method)
    x = images(20)
    calibrate(q, x)
    with torch.no_grad():
        cached = q(x)
        assert all(memoised(w) is not None for w in _weight_quantizers(q))
        assert torch.equal(q(x), cached)
    assert all(memoised(a) is not None for a in quantizers(q, (MinMaxActQuantizer, LSQActQuantizer)))
    with torch.enable_grad():  # weights require grad: quantized at every call, out-of-place attention,
        per_call = q(x)        # LSQ step/offset through their gradient-scaled graph
    assert per_call.requires_grad and torch.equal(per_call.detach(), cached)
    # and the cache holds exactly what the per-call computation returns
    for module in q.modules():
        if isinstance(module, (QuantLinear, QuantConv2d)):
            assert torch.equal(memoised(module.weight_quantizer), module.weight_quantizer.quantize(module.weight))


def test_weight_cache_follows_weight_updates_state_dicts_and_mode():
    fp = make_vit()
    q = quantized_copy(fp, w_bits=4, a_bits=4)
    x = images(21)
    calibrate(q, x)
    with torch.no_grad():
        before = q(x)
    # an optimiser step changes the weights in place: the next eval forward sees the new weights
    q.train()
    assert all(memoised(w) is None for w in _weight_quantizers(q))
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    q(x).square().mean().backward()
    opt.step()
    q.eval()
    set_quantization(q, True, True)
    fresh = quantized_copy(fp, w_bits=4, a_bits=4)
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        after = q(x)
        assert not torch.equal(after, before)
        assert torch.equal(after, fresh(x))
    # weights changed by load_state_dict (in place, no mode switch) invalidate the cache too
    with torch.no_grad():
        q(x)
        replacement = quantized_copy(make_vit(seed=5), w_bits=4, a_bits=4)
        calibrate(replacement, x)
        q.load_state_dict(replacement.state_dict(), strict=False)
        reloaded = q(x)
        other = copy.deepcopy(q)
        for w in _weight_quantizers(other):
            assert memoised(w) is None  # derived data is not copied
        assert torch.equal(reloaded, other(x))
        assert not torch.equal(reloaded, after)


# ----------------------------------------------------------------------------- attention fast paths

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


@pytest.mark.parametrize('make', [make_vit, make_swin])
def test_in_place_attention_path_equals_autograd_path_and_keeps_records(make):
    from mimiq_mm.attention import AttentionRecorder
    q = quantized_copy(make(), w_bits=4, a_bits=4)
    x = torch.randn(2, 3, *((32, 32) if make is make_swin else IMG), generator=torch.Generator().manual_seed(7))
    calibrate(q, x)
    with torch.no_grad():
        fast = q(x)
        with AttentionRecorder(q, fields=('scores', 'probs'), detach=True) as rec_fast:
            recorded = q(x)
    with AttentionRecorder(q, fields=('scores', 'probs'), detach=True) as rec_slow:
        slow = q(x)
    assert torch.equal(fast, slow.detach()) and torch.equal(recorded, fast)
    assert len(rec_fast.records) == len(rec_slow.records) > 0
    for a, b in zip(rec_fast.records, rec_slow.records):
        # scores are recorded without bias and masks, probabilities before their quantization
        assert torch.equal(a.scores, b.scores) and torch.equal(a.probs, b.probs)
        assert a.probs.unique().numel() > 16
