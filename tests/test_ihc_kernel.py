"""The C++ kernel of L_IHC's global path on CPU (mimiq_mm/losses/ihc_cpu.py): the same value and
gradient as the PyTorch path on every layout, chosen by kernel='auto', and a clear error or a
fallback when it cannot be built."""
import platform

import pytest
import torch

from mimiq_mm.losses import InterHeadCoherencyLoss
from mimiq_mm.losses import ihc_cpu

from test_losses import random_scores, scores_record

CASES = {
    'deit_class_token': dict(batch=4, heads=6, grid=(8, 8), prefix=1, window=False),
    'distilled_two_prefix_non_square': dict(batch=3, heads=3, grid=(3, 5), prefix=2, window=False),
    'swin_window_no_prefix': dict(batch=6, heads=4, grid=(7, 7), prefix=0, window=True),
    'one_head': dict(batch=2, heads=1, grid=(4, 4), prefix=1, window=False),
}


def value_and_grads(loss, scores_list, case):
    scores_list = [s.clone().requires_grad_(True) for s in scores_list]
    records = [scores_record(s, case['grid'], case['prefix'], window=case['window']) for s in scores_list]
    value = loss(records)
    return value.detach(), torch.autograd.grad(value, scores_list)


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('similarity', ['abs', 'squared'])
def test_kernel_equals_the_pytorch_path(case, similarity):
    c = CASES[case]
    scores = [random_scores(c['batch'], c['heads'], c['grid'], c['prefix'], seed=s) * 3 for s in range(2)]
    value, grads = value_and_grads(InterHeadCoherencyLoss(similarity=similarity, kernel='cpp', loss_weight=2.5),
                                   scores, c)
    ref_value, ref_grads = value_and_grads(InterHeadCoherencyLoss(similarity=similarity, kernel='torch',
                                                                  loss_weight=2.5), scores, c)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    if c['heads'] == 1:  # a single head is coherent with itself: zero loss, rounding-level gradients
        assert abs(value.item()) < 1e-5 and all(g.abs().max() < 1e-6 for g in grads)
        return
    for g, r in zip(grads, ref_grads):
        assert r.abs().max() > 0
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5 * r.abs().max().item())
        assert (g - r).norm() <= 1e-4 * r.norm()


def test_kernel_values_without_gradient_and_prefix_gradient_is_zero():
    c = CASES['deit_class_token']
    scores = random_scores(c['batch'], c['heads'], c['grid'], c['prefix'], seed=3).requires_grad_(True)
    record = scores_record(scores, c['grid'], c['prefix'])
    with torch.no_grad():
        no_grad = InterHeadCoherencyLoss(kernel='cpp')([record])
    value = InterHeadCoherencyLoss(kernel='cpp')([record])
    assert value.item() == pytest.approx(no_grad.item(), abs=1e-7)
    grad, = torch.autograd.grad(value, scores)
    p = c['prefix']
    assert grad[:, :, :p].abs().max() == 0 and grad[:, :, :, :p].abs().max() == 0
    assert grad[:, :, p:, p:].abs().max() > 0


def test_a_second_backward_through_the_kernel_is_refused():
    """The kernel's gradient is scaled in place in the backward, so a retained graph cannot reuse it."""
    c = CASES['deit_class_token']
    scores = random_scores(c['batch'], c['heads'], c['grid'], c['prefix']).requires_grad_(True)
    value = InterHeadCoherencyLoss(kernel='cpp')([scores_record(scores, c['grid'], c['prefix'])])
    first, = torch.autograd.grad(value, scores, retain_graph=True)
    assert first.abs().max() > 0
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        torch.autograd.grad(value, scores)


def test_the_four_lane_build_equals_the_pytorch_path(monkeypatch):
    """CPUs without AVX2 and ARM CPUs get the build with 4-float vectors; built here on purpose."""
    flags = ['-O3'] + (['-mno-avx'] if platform.machine().lower() in ('x86_64', 'amd64') else [])
    monkeypatch.setattr(ihc_cpu, 'build_variant', lambda: ('mimiq_ihc_cpu_test_4_lanes', flags))
    monkeypatch.setattr(ihc_cpu, '_state', {})
    for case in ('deit_class_token', 'swin_window_no_prefix'):
        c = CASES[case]
        scores = [random_scores(c['batch'], c['heads'], c['grid'], c['prefix'], seed=s) * 3 for s in range(2)]
        value, grads = value_and_grads(InterHeadCoherencyLoss(kernel='cpp'), scores, c)
        ref_value, ref_grads = value_and_grads(InterHeadCoherencyLoss(kernel='torch'), scores, c)
        torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
        for g, r in zip(grads, ref_grads):
            assert (g - r).norm() <= 1e-4 * r.norm()
    assert ihc_cpu.kernel_state() == 'built (mimiq_ihc_cpu_test_4_lanes, 4 lanes)'


def test_the_build_fits_the_cpu():
    name, flags = ihc_cpu.build_variant()
    if torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512') and platform.machine().lower() in ('x86_64',
                                                                                                           'amd64'):
        assert '-mavx2' in flags and '-mfma' in flags and name.endswith('avx2')
    else:
        assert not any(f.startswith('-mavx') for f in flags)


def test_auto_uses_the_kernel_on_float32_cpu_only(monkeypatch):
    calls = []
    apply = ihc_cpu.IHCLayerCPU.apply
    monkeypatch.setattr(ihc_cpu.IHCLayerCPU, 'apply', lambda *a: calls.append(1) or apply(*a))
    c = CASES['deit_class_token']
    scores = random_scores(c['batch'], c['heads'], c['grid'], c['prefix'])
    loss = InterHeadCoherencyLoss()
    loss([scores_record(scores, c['grid'], c['prefix'])])
    assert len(calls) == 1
    loss([scores_record(scores.double(), c['grid'], c['prefix'])])      # PyTorch path: float64
    loss([scores_record(scores.bfloat16(), c['grid'], c['prefix'])])    # PyTorch path: half precision
    InterHeadCoherencyLoss(kernel='torch')([scores_record(scores, c['grid'], c['prefix'])])
    assert len(calls) == 1


def test_a_failed_build_falls_back_or_names_the_fix(monkeypatch):
    monkeypatch.setattr(ihc_cpu, '_state', {'error': 'RuntimeError: g++ not found'})
    c = CASES['deit_class_token']
    record = scores_record(random_scores(c['batch'], c['heads'], c['grid'], c['prefix']), c['grid'], c['prefix'])
    expected = InterHeadCoherencyLoss(kernel='torch')([record])
    assert InterHeadCoherencyLoss(kernel='auto')([record]).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(RuntimeError, match="g\\+\\+ not found.*install a C\\+\\+ compiler"):
        InterHeadCoherencyLoss(kernel='cpp')([record])
    with pytest.raises(ValueError, match="kernel must be"):
        InterHeadCoherencyLoss(kernel='cuda')
