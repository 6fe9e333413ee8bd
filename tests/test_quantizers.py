"""The quantizers' own maths: the per-channel weight quantizer, LSQ starts and gradients, the MSE
range and weight clipping, min-max EMA ranges and the calibration context.

CPU only, tiny randomly initialised models, no downloads.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mimiq_mm.quant import (LSQActQuantizer, MinMaxActQuantizer, QuantConfig, WeightQuantizer, calibration,
                            quantize_model, quantizers, reset_activation_ranges)

from quant_models import _channel_scaled_weight, calibrate, images, make_vit, quantized_copy

timm = pytest.importorskip('timm')


# ----------------------------------------------------------------------------- weight quantizer

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
    w = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))  # not the suite's RNG state
    for bits in (2, 3, 4):
        wq = WeightQuantizer(bits)(w)
        counts = [row.unique().numel() for row in wq]
        assert max(counts) <= 2 ** bits
        # 1000 gaussian values populate every level but a few in the sparse tails (with this seed
        # 12 to 14 of 16 at 4 bits); a quantizer that collapsed levels would leave far fewer
        assert min(counts) >= 2 ** bits - 4


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



def test_module_lsq_init_sets_the_start_of_matching_modules():
    """The first regex that matches a module's name gives its activation quantizers' start (the
    attention matmul inputs by the attention module's name); the others keep lsq_init."""
    model = quantize_model(make_vit(), w_bits=4, a_bits=4, module_lsq_init={r'blocks\.1\.attn': 'minmax',
                                                                              r'head': 'mean_abs'})
    starts = {name: m.init for name, m in model.named_modules() if isinstance(m, LSQActQuantizer)}
    attn1 = {n: i for n, i in starts.items() if 'blocks.1.attn' in n}
    assert attn1 and set(attn1.values()) == {'minmax'}
    assert any(n.endswith('mimiq_core.prob_quantizer') for n in attn1)
    assert {i for n, i in starts.items() if n.startswith('head')} == {'mean_abs'}
    assert {i for n, i in starts.items() if 'blocks.1.attn' not in n and not n.startswith('head')} == {'mse'}
    with pytest.raises(ValueError, match=r"module_lsq_init\['head'\]"):
        QuantConfig(module_lsq_init={'head': 'percentile'})
    with pytest.raises(ValueError, match='not a regular expression'):
        QuantConfig(module_lsq_init={'blocks.(1': 'minmax'})

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
