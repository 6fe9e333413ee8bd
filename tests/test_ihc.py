"""L_IHC (mimiq_mm.losses.ihc): its properties, and its one definition checked against an
independent reference (explicit loops over head pairs, tests/ihc_reference.py)."""
import pytest
import torch

from mimiq_mm.attention.core import AttentionRecord, TokenLayout
from mimiq_mm.losses import InterHeadCoherencyLoss, minmax_normalize, pairwise_global_ssim

from attention_records import random_scores, scores_record
from ihc_reference import ihc_reference

timm = pytest.importorskip('timm')
TINY_VIT = dict(patch_size=8, depth=2, embed_dim=32, num_heads=4)


# ---------------------------------------------------------------------------------------------
# L_IHC
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('similarity', ['abs', 'squared'])
@pytest.mark.parametrize('ssim', ['global', 'windowed'])
def test_ihc_identical_heads_near_zero(similarity, ssim):
    base = random_scores(2, 1, (5, 4), prefix=1)
    record = scores_record(base.expand(-1, 4, -1, -1), (5, 4), 1)
    loss = InterHeadCoherencyLoss(similarity=similarity, ssim=ssim)([record])
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize('similarity', ['abs', 'squared'])
def test_ihc_unrelated_heads_high(similarity):
    record = scores_record(random_scores(2, 6, (8, 8), prefix=1), (8, 8), 1)
    assert InterHeadCoherencyLoss(similarity=similarity)([record]).item() > 0.5


def antisymmetric_scores(batch, heads, grid, prefix, correlation=0.7, seed=0):
    """Scores whose spatial rows hold each value and its negative, so min = -max and a
    min-max normalised row has mean 1/2 before and after negation; heads are correlated."""
    g = torch.Generator().manual_seed(seed)
    n_sp = grid[0] * grid[1]
    assert n_sp % 2 == 0
    shared = torch.randn(batch, 1, n_sp, n_sp // 2, generator=g)
    own = torch.randn(batch, heads, n_sp, n_sp // 2, generator=g)
    half = correlation * shared + (1 - correlation) * own
    perm = torch.randperm(n_sp, generator=g)
    spatial = torch.cat([half, -half], dim=-1)[..., perm]
    n = prefix + n_sp
    scores = torch.randn(batch, heads, n, n, generator=g)
    scores[:, :, prefix:, prefix:] = spatial
    return scores


@pytest.mark.parametrize('similarity', ['abs', 'squared'])
def test_ihc_invariant_to_inverting_one_head(similarity):
    grid, prefix = (4, 6), 1
    scores = antisymmetric_scores(2, 4, grid, prefix)
    inverted = scores.clone()
    inverted[:, 1] = -inverted[:, 1]
    records = [scores_record(scores, grid, prefix)]
    inverted_records = [scores_record(inverted, grid, prefix)]
    # Without the stabilising constants, negation flips the covariance's sign only: exact invariance.
    exact = InterHeadCoherencyLoss(similarity=similarity, c1=0.0, c2=0.0)
    assert 0.05 < exact(records).item() < 0.95  # a mid-range value, so invariance is not trivial
    assert exact(inverted_records).item() == pytest.approx(exact(records).item(), abs=1e-5)
    # With the default C2 = 0.03², |2σxy + C2| differs from |-2σxy + C2| by O(C2 / σ²): close.
    default = InterHeadCoherencyLoss(similarity=similarity)
    assert default(inverted_records).item() == pytest.approx(default(records).item(), abs=0.02)
    # Negative control: signed SSIM between heads 0 and 1 does flip, so only |.| / (.)² are invariant.
    sp = slice(prefix, None)
    signed = pairwise_global_ssim(minmax_normalize(scores[:, :, sp, sp].transpose(1, 2)))[..., 0, 1].mean()
    signed_inv = pairwise_global_ssim(minmax_normalize(inverted[:, :, sp, sp].transpose(1, 2)))[..., 0, 1].mean()
    assert signed.item() > 0.3 and signed_inv.item() < -0.3


LAYOUT_CASES = {
    'cls_token_non_square': dict(batch=2, heads=3, grid=(3, 5), prefix=1, window=False),
    'swin_window_no_prefix': dict(batch=6, heads=4, grid=(4, 4), prefix=0, window=True),
}


@pytest.mark.parametrize('case', sorted(LAYOUT_CASES))
@pytest.mark.parametrize('similarity', ['abs', 'squared'])
@pytest.mark.parametrize('ssim', ['global', 'windowed'])
def test_ihc_fast_equals_reference(case, similarity, ssim):
    c = LAYOUT_CASES[case]
    records = [scores_record(random_scores(c['batch'], c['heads'], c['grid'], c['prefix'], seed=s), c['grid'],
                             c['prefix'], window=c['window']) for s in range(2)]
    fast = InterHeadCoherencyLoss(similarity=similarity, ssim=ssim)(records)
    ref = ihc_reference(records, similarity=similarity, ssim=ssim)
    assert fast.item() == pytest.approx(ref.item(), abs=1e-5)


def test_ihc_windowed_chunking_does_not_change_result():
    record = scores_record(random_scores(3, 4, (5, 5), prefix=1), (5, 5), 1)
    whole = InterHeadCoherencyLoss(ssim='windowed')([record])
    chunked = InterHeadCoherencyLoss(ssim='windowed', max_chunk_elements=1000)([record])
    assert chunked.item() == pytest.approx(whole.item(), abs=1e-6)


def test_ihc_reference_matches_explicit_loops():
    """Independent per-(b, q, i, j) computation of Eq. 9-11 on a tiny input."""
    grid, prefix, heads = (2, 3), 1, 3
    scores = random_scores(2, heads, grid, prefix, seed=5, dtype=torch.float64)
    records = [scores_record(scores, grid, prefix)]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    terms = []
    for b in range(scores.shape[0]):
        for q in range(prefix, scores.shape[2]):
            rows = []
            for h in range(heads):
                row = scores[b, h, q, prefix:].tolist()
                lo, hi = min(row), max(row)
                rows.append([(v - lo) / (hi - lo + 1e-8) for v in row])
            d = 0.0
            for i in range(heads):
                for j in range(heads):
                    x, y = rows[i], rows[j]
                    mx, my = sum(x) / len(x), sum(y) / len(y)
                    vx = sum((a - mx) ** 2 for a in x) / len(x)
                    vy = sum((a - my) ** 2 for a in y) / len(y)
                    cxy = sum((a - mx) * (b_ - my) for a, b_ in zip(x, y)) / len(x)
                    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
                    d += abs(s)
            terms.append(1 - d / heads ** 2)
    expected = sum(terms) / len(terms)
    assert InterHeadCoherencyLoss()(records).item() == pytest.approx(expected, abs=1e-9)
    assert ihc_reference(records).item() == pytest.approx(expected, abs=1e-9)


def test_ihc_ignores_prefix_tokens():
    grid, prefix = (3, 4), 2
    scores = random_scores(2, 3, grid, prefix)
    changed_prefix = scores.clone()
    changed_prefix[:, :, :prefix, :] = torch.randn_like(changed_prefix[:, :, :prefix, :])
    changed_prefix[:, :, :, :prefix] = torch.randn_like(changed_prefix[:, :, :, :prefix])
    changed_spatial = scores.clone()
    changed_spatial[:, 0, prefix:, prefix:] = torch.randn_like(changed_spatial[:, 0, prefix:, prefix:])
    loss_fn = InterHeadCoherencyLoss()
    base = loss_fn([scores_record(scores, grid, prefix)]).item()
    assert loss_fn([scores_record(changed_prefix, grid, prefix)]).item() == pytest.approx(base, abs=1e-7)
    assert abs(loss_fn([scores_record(changed_spatial, grid, prefix)]).item() - base) > 1e-4


def test_ihc_layers_option_and_weight():
    grid = (4, 4)
    records = [scores_record(random_scores(2, 3, grid, 1, seed=s), grid, 1, name=f'b{s}') for s in range(3)]
    per_layer = [InterHeadCoherencyLoss()([r]).item() for r in records]
    assert len(set(round(v, 6) for v in per_layer)) == 3
    assert InterHeadCoherencyLoss()(records).item() == pytest.approx(sum(per_layer) / 3, abs=1e-6)
    assert InterHeadCoherencyLoss(layers=[-1])(records).item() == pytest.approx(per_layer[2], abs=1e-6)
    assert InterHeadCoherencyLoss(layers=[0, 2])(records).item() == pytest.approx(
        (per_layer[0] + per_layer[2]) / 2, abs=1e-6)
    assert InterHeadCoherencyLoss(loss_weight=3.0)(records).item() == pytest.approx(sum(per_layer), abs=1e-5)


def test_ihc_rejects_window_larger_than_grid():
    record = scores_record(random_scores(1, 2, (2, 6), prefix=1), (2, 6), 1)
    with pytest.raises(ValueError, match='win_size'):
        InterHeadCoherencyLoss(ssim='windowed', win_size=3)([record])
    with pytest.raises(ValueError):
        InterHeadCoherencyLoss(ssim='windowed', win_size=4)


def test_ihc_bf16_inputs_computed_in_fp32():
    scores = random_scores(2, 4, (4, 5), prefix=1).bfloat16().requires_grad_()
    loss = InterHeadCoherencyLoss()([scores_record(scores, (4, 5), 1)])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected = InterHeadCoherencyLoss()([scores_record(scores.detach().float(), (4, 5), 1)])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    assert torch.isfinite(scores.grad.float()).all() and scores.grad.float().abs().sum() > 0


@pytest.mark.parametrize('ssim', ['global', 'windowed'])
def test_ihc_gradient_reaches_queries(ssim):
    batch, heads, grid, prefix, dim = 2, 3, (4, 4), 1, 8
    n = prefix + grid[0] * grid[1]
    q = torch.randn(batch, heads, n, dim, requires_grad=True)
    k = torch.randn(batch, heads, n, dim)
    scores = (q * dim ** -0.5) @ k.transpose(-1, -2)
    loss = InterHeadCoherencyLoss(ssim=ssim)([scores_record(scores, grid, prefix)])
    loss.backward()
    assert torch.isfinite(q.grad).all()
    assert q.grad[:, :, prefix:].abs().sum() > 0


def test_ihc_large_batch_shapes_fit():
    # B'=128, H=6, N=257 (16×16 grid + class token): the fast path works on (B', Q, H, K) only.
    scores = torch.randn(128, 6, 257, 257)
    loss = InterHeadCoherencyLoss()([scores_record(scores, (16, 16), 1)])
    assert torch.isfinite(loss) and 0 < loss.item() < 1


def test_ihc_through_tiny_timm_vit():
    timm = pytest.importorskip('timm')
    from mimiq_mm.attention import AttentionRecorder, install_attention_capture
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=10).eval()
    install_attention_capture(model)
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    with AttentionRecorder(model, fields=('scores',)) as rec:
        model(images)
    assert len(rec.records) == 2
    loss = InterHeadCoherencyLoss()(rec.records)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# fast L_IHC (statistics of the raw scores) against the reference loops
# ---------------------------------------------------------------------------------------------

def _ihc_value_and_grad(scores, grid, prefix, impl, similarity='abs'):
    scores = scores.detach().clone().requires_grad_()
    record = AttentionRecord('blk', TokenLayout(grid=grid, num_prefix_tokens=prefix), scores=scores)
    if impl == 'fast':
        loss = InterHeadCoherencyLoss(similarity=similarity)([record])
    else:
        loss = ihc_reference([record], similarity=similarity)
    loss.backward()
    return loss, scores.grad


@pytest.mark.parametrize('similarity', ['abs', 'squared'])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_fast_ihc_gradient_equals_reference(similarity, dtype):
    g = torch.Generator().manual_seed(3)
    scores = (torch.randn(3, 4, 1 + 12, 1 + 12, generator=g) * 3 + 1).to(dtype)
    fast, fast_grad = _ihc_value_and_grad(scores, (3, 4), 1, 'fast', similarity)
    ref, ref_grad = _ihc_value_and_grad(scores, (3, 4), 1, 'reference', similarity)
    assert fast.dtype == ref.dtype
    assert fast.item() == pytest.approx(ref.item(), abs=1e-6)
    scale = ref_grad.abs().max().item()
    torch.testing.assert_close(fast_grad, ref_grad, rtol=0, atol=1e-5 * scale)
    assert fast_grad[:, :, :1].abs().max() == 0 and fast_grad[:, :, :, :1].abs().max() == 0  # prefix rows/cols


def test_fast_ihc_ties_keep_value_and_row_gradient_mass():
    """With ties at a row's min/max (common in bf16) only how the min/max gradient is split among
    the tied keys differs from the reference; every other entry and each row's total agree."""
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(-3, 4, (2, 3, 17, 17), generator=g).to(torch.float64)  # many ties
    fast, fast_grad = _ihc_value_and_grad(scores, (4, 4), 1, 'fast')
    ref, ref_grad = _ihc_value_and_grad(scores, (4, 4), 1, 'reference')
    assert fast.item() == pytest.approx(ref.item(), abs=1e-9)
    spatial = scores[:, :, 1:, 1:]
    tied = (spatial == spatial.amin(-1, keepdim=True)) | (spatial == spatial.amax(-1, keepdim=True))
    diff = (fast_grad - ref_grad)[:, :, 1:, 1:]
    assert diff[~tied].abs().max() < 1e-12
    torch.testing.assert_close(fast_grad.sum(-1), ref_grad.sum(-1), rtol=0, atol=1e-12)


def test_fast_ihc_equals_reference_under_bf16_autocast():
    from mimiq_mm.attention import AttentionRecorder, install_attention_capture
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, num_classes=10,
                              **TINY_VIT).eval()
    install_attention_capture(model)
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16), AttentionRecorder(model, fields=('scores',)) as rec:
        model(images)
    assert all(r.scores.dtype == torch.bfloat16 for r in rec.records)
    fast = InterHeadCoherencyLoss()(rec.records)
    ref = ihc_reference(rec.records)
    assert fast.dtype == torch.float32
    assert fast.item() == pytest.approx(ref.item(), abs=1e-5)
    # and equal to the fp32 loss of the same (bf16-rounded) scores
    upcast = [AttentionRecord(r.name, r.layout, scores=r.scores.detach().float()) for r in rec.records]
    assert fast.item() == pytest.approx(InterHeadCoherencyLoss()(upcast).item(), abs=1e-6)
    fast.backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
