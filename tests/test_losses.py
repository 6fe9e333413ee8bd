"""Tests of mimiq_mm.losses besides L_IHC (test_ihc.py): SSIM, L_HAD, L_KL, L_TV, L_CL, PSAQ (CPU, small)."""
import math

import pytest
import torch
import torch.nn.functional as F

from mimiq_mm.losses import (ClassPriorLoss, HeadAttentionDistillLoss, KLDistillLoss,
                             PatchSimilarityEntropyLoss, TotalVariationLoss, global_ssim, minmax_normalize,
                             kde_differential_entropy, pairwise_global_ssim)
from mimiq_mm.registry import MODELS

from attention_records import outputs_record, scores_record


# ---------------------------------------------------------------------------------------------
# SSIM helpers
# ---------------------------------------------------------------------------------------------

def test_global_ssim_matches_textbook_formula():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(7, generator=g, dtype=torch.float64), torch.rand(7, generator=g, dtype=torch.float64)
    n = len(x)
    mx, my = sum(x.tolist()) / n, sum(y.tolist()) / n
    vx = sum((a - mx) ** 2 for a in x.tolist()) / n
    vy = sum((b - my) ** 2 for b in y.tolist()) / n
    cxy = sum((a - mx) * (b - my) for a, b in zip(x.tolist(), y.tolist())) / n
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert global_ssim(x, y).item() == pytest.approx(expected, rel=1e-10)


def test_pairwise_global_ssim_equals_pair_by_pair():
    maps = torch.rand(2, 3, 5, 11, dtype=torch.float64)
    pairwise = pairwise_global_ssim(maps)
    assert pairwise.shape == (2, 3, 5, 5)
    for i in range(5):
        for j in range(5):
            torch.testing.assert_close(pairwise[..., i, j], global_ssim(maps[..., i, :], maps[..., j, :]))
    torch.testing.assert_close(pairwise.diagonal(dim1=-2, dim2=-1), torch.ones(2, 3, 5, dtype=torch.float64))


def test_minmax_normalize_range():
    x = torch.randn(4, 9) * 50 + 3
    y = minmax_normalize(x, dim=-1)
    torch.testing.assert_close(y.amin(-1), torch.zeros(4))
    torch.testing.assert_close(y.amax(-1), torch.ones(4), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# L_HAD
# ---------------------------------------------------------------------------------------------

def had_records(outputs_list, grid=(2, 3), prefix=1):
    return [outputs_record(o, grid, prefix, name=f'b{i}') for i, o in enumerate(outputs_list)]


def random_outputs(seed, batch=2, heads=3, n=7, dim=4, scale=2.0):
    return torch.randn(batch, heads, n, dim, generator=torch.Generator().manual_seed(seed)) * scale + 0.5


@pytest.mark.parametrize('metric', ['dssim', 'mse', 'l1', 'kl'])
def test_had_zero_for_identical_positive_for_different(metric):
    teacher = had_records([random_outputs(0), random_outputs(1)])
    same = had_records([random_outputs(0), random_outputs(1)])
    other = had_records([random_outputs(2), random_outputs(3)])
    loss_fn = HeadAttentionDistillLoss(metric=metric)
    assert loss_fn(teacher, same).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(teacher, other).item() > 1e-3


@pytest.mark.parametrize('metric', ['dssim', 'mse', 'l1', 'kl'])
def test_had_ignores_class_token_and_detaches_teacher(metric):
    t_out = random_outputs(0).requires_grad_()
    s_out = random_outputs(4).requires_grad_()
    s_changed = s_out.detach().clone()
    s_changed[:, :, 0] += 10.0
    loss_fn = HeadAttentionDistillLoss(metric=metric)
    loss = loss_fn(had_records([t_out]), had_records([s_out]))
    assert loss_fn(had_records([t_out]), had_records([s_changed])).item() == pytest.approx(loss.item(), abs=1e-6)
    loss.backward()
    assert t_out.grad is None
    assert s_out.grad[:, :, 1:].abs().sum() > 0 and s_out.grad[:, :, 0].abs().sum() == 0


def test_had_dssim_matches_per_head_loop_and_is_scale_free():
    t, s = random_outputs(0, n=5, dim=3), random_outputs(1, n=5, dim=3)
    expected = []
    for b in range(t.shape[0]):
        for h in range(t.shape[1]):
            x, y = t[b, h, 1:].flatten().double(), s[b, h, 1:].flatten().double()
            data_range = (x.max() - x.min()).item()
            c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
            mx, my = x.mean(), y.mean()
            vx, vy = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean()
            cxy = ((x - mx) * (y - my)).mean()
            ssim = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
            expected.append(1 - abs(ssim.item()))
    loss_fn = HeadAttentionDistillLoss(metric='dssim')
    loss = loss_fn(had_records([t], grid=(2, 2)), had_records([s], grid=(2, 2)))
    assert loss.item() == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    # Constants follow the teacher's range, so scaling both maps leaves DSSIM unchanged.
    scaled = loss_fn(had_records([t * 1e3], grid=(2, 2)), had_records([s * 1e3], grid=(2, 2)))
    assert scaled.item() == pytest.approx(loss.item(), abs=1e-5)


def test_had_layers_average():
    teacher = had_records([random_outputs(0), random_outputs(1)])
    student = had_records([random_outputs(2), random_outputs(3)])
    loss_fn = HeadAttentionDistillLoss(metric='mse')
    per_layer = [loss_fn([t], [s]).item() for t, s in zip(teacher, student)]
    assert loss_fn(teacher, student).item() == pytest.approx(sum(per_layer) / 2, rel=1e-6)
    assert HeadAttentionDistillLoss(metric='mse', layers=[-1])(teacher, student).item() == pytest.approx(
        per_layer[1], rel=1e-6)


def test_had_mismatched_records_raise():
    loss_fn = HeadAttentionDistillLoss()
    with pytest.raises(ValueError, match='records'):
        loss_fn(had_records([random_outputs(0), random_outputs(1)]), had_records([random_outputs(0)]))
    with pytest.raises(ValueError, match='shape'):
        loss_fn(had_records([random_outputs(0)]), had_records([random_outputs(0, heads=2)]))
    with pytest.raises(ValueError, match='outputs'):
        loss_fn([scores_record(torch.zeros(1, 1, 5, 5), (2, 2), 1)], had_records([random_outputs(0)]))


# ---------------------------------------------------------------------------------------------
# L_KL
# ---------------------------------------------------------------------------------------------

def test_kl_distill_zero_equal_positive_otherwise_and_formula():
    logits = torch.randn(4, 10)
    assert KLDistillLoss(temperature=4.0)(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(4, 10, requires_grad=True)
    teacher = torch.randn(4, 10, requires_grad=True)
    temp = 3.0
    loss = KLDistillLoss(temperature=temp)(student, teacher)
    p_t = (teacher / temp).softmax(-1)
    expected = temp ** 2 * (p_t * ((teacher / temp).log_softmax(-1) - (student / temp).log_softmax(-1))).sum() / 4
    assert loss.item() > 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_kl_distill_dense_is_mean_over_pixels():
    student, teacher = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    dense = KLDistillLoss(temperature=2.0)(student, teacher)
    flat = KLDistillLoss(temperature=2.0)(student.permute(0, 2, 3, 1).reshape(-1, 5),
                                          teacher.permute(0, 2, 3, 1).reshape(-1, 5))
    assert dense.item() > 0
    assert dense.item() == pytest.approx(flat.item(), rel=1e-5)


def test_class_balanced_pixel_kl_gives_each_predicted_class_an_equal_share():
    """SegmentorTask(class_balance=True): 15 background pixels and 1 digit pixel weigh the same in all."""
    from mimiq_mm.tasks.segmentation import SegmentorTask
    teacher = torch.zeros(1, 3, 4, 4)
    teacher[:, 0] = 5.0  # background everywhere ...
    teacher[0, 1, 2, 3] = 10.0  # ... but one pixel of class 1; class 2 predicted nowhere
    weights = SegmentorTask.class_balanced_weights(teacher)
    assert weights.shape == (1, 4, 4) and weights.mean().item() == pytest.approx(1.0)
    assert weights[0, 2, 3].item() == pytest.approx(8.0) and weights[0, 0, 0].item() == pytest.approx(8 / 15)
    student = torch.randn(1, 3, 4, 4)
    per_pixel = torch.nn.functional.kl_div(student.log_softmax(1), teacher.log_softmax(1), reduction='none',
                                           log_target=True).sum(1)
    balanced = SegmentorTask(aux_weight=0, class_balance=True).distill_loss(dict(seg=student), dict(seg=teacher))
    plain = SegmentorTask(aux_weight=0).distill_loss(dict(seg=student), dict(seg=teacher))
    assert plain['loss_kd'].item() == pytest.approx(per_pixel.mean().item(), rel=1e-5)
    expected = 0.5 * per_pixel[0, 2, 3] + 0.5 * (per_pixel.sum() - per_pixel[0, 2, 3]) / 15
    assert balanced['loss_kd'].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match='weight'):
        KLDistillLoss()(student, teacher, torch.ones(1, 4))


# ---------------------------------------------------------------------------------------------
# Synthesis losses
# ---------------------------------------------------------------------------------------------

def test_tv_zero_for_constant_image():
    images = torch.full((2, 3, 5, 6), 0.7)
    for reduction in ('sum', 'mean', 'norm'):
        assert TotalVariationLoss(reduction=reduction)(images).item() == pytest.approx(0.0, abs=1e-8)


def test_tv_matches_loop_on_tiny_image():
    images = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    offsets = [(0, 1), (1, 0), (1, 1), (1, -1)]  # right, down, down-right, down-left
    per_direction = {o: [] for o in offsets}
    for b in range(2):
        for c in range(3):
            for y in range(2):
                for x in range(3):
                    for dy, dx in offsets:
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < 2 and 0 <= xx < 3:
                            per_direction[(dy, dx)].append((b, (images[b, c, yy, xx] - images[b, c, y, x]).item()))
    sum_expected = sum(d ** 2 for v in per_direction.values() for _, d in v) / 2
    mean_expected = sum(sum(d ** 2 for _, d in v) / len(v) for v in per_direction.values())
    norm_expected = sum(math.sqrt(sum(d ** 2 for _, d in v)) for v in per_direction.values())
    assert TotalVariationLoss('sum')(images).item() == pytest.approx(sum_expected, rel=1e-10)
    assert TotalVariationLoss('mean')(images).item() == pytest.approx(mean_expected, rel=1e-10)
    assert TotalVariationLoss('norm')(images).item() == pytest.approx(norm_expected, rel=1e-10)
    assert TotalVariationLoss('sum', loss_weight=0.5)(images).item() == pytest.approx(sum_expected / 2, rel=1e-10)


def test_class_prior_loss_classification_and_dense():
    logits, targets = torch.randn(3, 6), torch.tensor([0, 5, 2])
    assert ClassPriorLoss()(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item())
    dense = torch.randn(3, 6, 2, 2)
    log_p = dense.log_softmax(1)
    expected = -sum(log_p[b, targets[b], y, x].item() for b in range(3) for y in range(2) for x in range(2)) / 12
    assert ClassPriorLoss(loss_weight=2.0)(dense, targets).item() == pytest.approx(2 * expected, rel=1e-5)


def test_psaq_entropy_matches_direct_computation():
    g = torch.Generator().manual_seed(3)
    blocks = [torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    bandwidth, points = 0.01, 50
    expected = 0.0
    for out in blocks:
        sims_per_image = []
        for b in range(2):
            tokens = [[(out[b, 0, t, d] + out[b, 1, t, d]).item() / 2 for d in range(3)] for t in range(1, 5)]
            sims = []
            for i in range(4):
                for j in range(i + 1, 4):
                    dot = sum(a * c for a, c in zip(tokens[i], tokens[j]))
                    norm_i = math.sqrt(sum(a * a for a in tokens[i]))
                    norm_j = math.sqrt(sum(a * a for a in tokens[j]))
                    sims.append(dot / (norm_i * norm_j))
            sims_per_image.append(sims)
        lo = min(min(s) for s in sims_per_image)
        hi = max(max(s) for s in sims_per_image)
        step = (hi - lo) / (points - 1)
        entropies = []
        for sims in sims_per_image:
            h = 0.0
            for g_idx in range(points):
                x = lo + g_idx * step
                p = sum(math.exp(-((x - s) / bandwidth) ** 2 / 2) for s in sims) / (
                    len(sims) * bandwidth * math.sqrt(2 * math.pi))
                h -= p * math.log(p + 1e-10) * step
            entropies.append(h)
        expected -= sum(entropies) / len(entropies)
    records = had_records(blocks, grid=(2, 2), prefix=1)
    loss = PatchSimilarityEntropyLoss(bandwidth=bandwidth, num_points=points, kde='exact')(records)
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_psaq_entropy_gradient_and_pair_cap():
    outputs = torch.randn(2, 3, 1 + 36, 8, requires_grad=True)
    records = had_records([outputs], grid=(6, 6), prefix=1)
    loss = PatchSimilarityEntropyLoss(max_pairs=100)(records)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(outputs.grad).all()
    assert outputs.grad[:, :, 1:].abs().sum() > 0
    assert PatchSimilarityEntropyLoss(max_pairs=100).patch_similarities(records[0]).shape == (2, 100)


@pytest.mark.parametrize('chunk', [1, 7, 512])
def test_chunked_kde_entropy_equals_autograd_reference(chunk):
    """The chunked kernel sums with their hand-written backward give the reference's value and
    gradient (chunks smaller than, not dividing, and larger than the sample count)."""
    g = torch.Generator().manual_seed(5)
    base = (torch.rand(3, 45, generator=g, dtype=torch.float64) * 0.3 - 0.1)
    upstream = torch.rand(3, generator=g, dtype=torch.float64)
    values, grads = [], []
    for method in ('reference', 'exact'):
        samples = base.clone().requires_grad_(True)
        entropy = kde_differential_entropy(samples, bandwidth=0.02, num_points=40, method=method, chunk=chunk)
        (entropy * upstream).sum().backward()
        values.append(entropy.detach())
        grads.append(samples.grad)
    torch.testing.assert_close(values[1], values[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize('spread', [0.3, 2.0, 0.02])
def test_truncated_kde_entropy_equals_autograd_reference(spread):
    """Kernels cut at 8 bandwidths give the full kernel sums' value and gradient (narrow and wide
    sample ranges; at 0.02 the cut reaches the whole grid and the full sums are used)."""
    g = torch.Generator().manual_seed(7)
    base = torch.rand(3, 200, generator=g, dtype=torch.float64) * spread - spread / 3
    upstream = torch.rand(3, generator=g, dtype=torch.float64)
    values, grads = [], []
    for method in ('reference', 'exact'):
        samples = base.clone().requires_grad_(True)
        entropy = kde_differential_entropy(samples, bandwidth=0.01, num_points=200, method=method)
        (entropy * upstream).sum().backward()
        values.append(entropy.detach())
        grads.append(samples.grad)
    torch.testing.assert_close(values[1], values[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize('spread', [0.3, 2.0, 0.02])
def test_binned_kde_entropy_is_within_its_bound_of_the_exact_one(spread):
    """The default, binned kernel sums: entropy within 1e-3 and gradient within 1 % of the exact
    ones, relative to their largest values (the kernels' interpolation error is 1.2e-4 of a peak)."""
    g = torch.Generator().manual_seed(9)
    base = torch.rand(4, 300, generator=g, dtype=torch.float64) * spread
    upstream = torch.rand(4, generator=g, dtype=torch.float64)
    values, grads = [], []
    for method in ('reference', 'binned'):
        samples = base.clone().requires_grad_(True)
        entropy = kde_differential_entropy(samples, bandwidth=0.01, num_points=200, method=method)
        (entropy * upstream).sum().backward()
        values.append(entropy.detach())
        grads.append(samples.grad)
    assert (values[1] - values[0]).abs().max() < 1e-3 * values[0].abs().max()
    assert (grads[1] - grads[0]).abs().max() < 1e-2 * grads[0].abs().max()


def test_truncated_kde_kernel_sums_pass_gradcheck():
    from mimiq_mm.losses.psaq import _TruncatedGaussianKDEOnGrid
    g = torch.Generator().manual_seed(8)
    samples = torch.rand(2, 9, generator=g, dtype=torch.float64).requires_grad_(True)
    low, step = torch.tensor(-0.1, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: _TruncatedGaussianKDEOnGrid.apply(s, low, step, 0.04, 3, 30),
                                    (samples, ))


def test_chunked_kde_kernel_sums_pass_gradcheck():
    from mimiq_mm.losses.psaq import _GaussianKDEOnGrid
    g = torch.Generator().manual_seed(6)
    samples = torch.rand(2, 9, generator=g, dtype=torch.float64).requires_grad_(True)
    grid = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: _GaussianKDEOnGrid.apply(s, grid, 0.1, 4), (samples, ))


def test_losses_build_from_registry():
    for name in ('InterHeadCoherencyLoss', 'HeadAttentionDistillLoss', 'KLDistillLoss', 'TotalVariationLoss',
                 'PatchSimilarityEntropyLoss', 'ClassPriorLoss'):
        module = MODELS.build(dict(type=f'mimiq_mm.{name}', loss_weight=2.0))
        assert type(module).__name__ == name and module.loss_weight == 2.0
