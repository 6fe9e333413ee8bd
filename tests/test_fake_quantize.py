"""The fake-quantization kernel: its straight-through gradient, equality with the reference
formulation, the in-place (out=) path, half-precision inputs, the weight memo cache and the in-place
attention path.

CPU only, tiny randomly initialised models, no downloads.
"""
import copy

import pytest
import torch
import torch.nn as nn

from mimiq_mm.quant import (LSQActQuantizer, MinMaxActQuantizer, QuantConv2d, QuantLinear, WeightQuantizer,
                            fake_quantize, quantizers, set_quantization)

from quant_models import IMG, _channel_scaled_weight, calibrate, images, make_swin, make_vit, quantized_copy

timm = pytest.importorskip('timm')


# ----------------------------------------------------------------------------- fast kernel vs formulation

def reference_fake_quantize(x, step, offset, q_min, q_max):
    """Eq. 4 written with autograd primitives (the formulation the fast kernel replaces)."""
    z = x / step + offset
    inside = (z >= q_min) & (z <= q_max)
    z = torch.where(inside, z, z.detach().clamp(q_min, q_max))
    rounded = (z.round() - z).detach() + z
    return (rounded - offset) * step


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
