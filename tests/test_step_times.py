"""python -m benchmarks.step_times, the timing helper, and the fast L_HAD path it measures (CPU, small)."""
import json
import os.path as osp

import pytest
import torch

from mimiq_mm.attention.core import AttentionRecord, TokenLayout
from mimiq_mm.losses import HeadAttentionDistillLoss, InterHeadCoherencyLoss, global_ssim, upcast_half

timm = pytest.importorskip('timm')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_VIT = dict(patch_size=8, depth=2, embed_dim=32, num_heads=4)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tool():
    from benchmarks import step_times
    return step_times


@pytest.mark.slow
def test_tool_times_every_step_kind_and_writes_json(tmp_path, restore_threads, capsys):
    pytest.importorskip('mmpretrain')  # a --timm-model runs through mmpretrain's TimmClassifier
    out = tmp_path / 'bench.json'
    result = _tool().main(['--timm-model', 'vit_tiny_patch16_224', '--img-size', '32', '--num-classes', '10',
                           '--timm-kwargs', json.dumps(TINY_VIT), '--batch', '2', '--device', 'cpu',
                           '--warmup', '1', '--iters', '2', '--threads', '1', '--out', str(out)])
    printed = capsys.readouterr().out
    assert 'img-steps/s' in printed and str(out) in printed
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    assert set(data['steps']) == {'plain', 'ihc', 'psaq', 'kd', 'kd_had', 'gdfq', 'qimera', 'adadfq', 'psaq_v2'}
    for kind, step in data['steps'].items():
        assert len(step['times_ms']) == 2, kind
        assert step['ms_median'] > 0 and step['image_steps_per_s'] > 0, kind
        assert step['peak_memory_bytes'] is None  # CPU
        assert all(torch.isfinite(torch.tensor(v)) for v in step['loss_terms'].values()), kind
    assert 'ihc' in data['steps']['ihc']['loss_terms'] and 'psaq' in data['steps']['psaq']['loss_terms']
    assert 'loss_had' in data['steps']['kd_had']['loss_terms'] and 'loss_had' not in data['steps']['kd']['loss_terms']
    assert set(data['ratios']) == {'ihc_vs_plain', 'psaq_vs_plain', 'kd_had_vs_kd'} | {
        f'{kind}_vs_kd' for kind in ('gdfq', 'qimera', 'adadfq', 'psaq_v2')}
    assert all(r > 0 for r in data['ratios'].values())
    env = data['environment']
    assert env['torch'] == torch.__version__ and env['timm'] == timm.__version__
    assert 'benchmarks.step_times' in env['command'] and '--batch 2' in env['command']
    assert (data['batch'], data['precision'], data['device']) == (2, 'fp32', 'cpu')
    record = data['provenance']  # what the figures were made with: code, CPU kind, threads
    assert record['threads'] == 1 and record['versions']['torch'] == torch.__version__
    assert {'model', 'avx2', 'avx512', 'vnni', 'amx'} <= set(record['cpu']) and record['commit']


@pytest.mark.parametrize('kind, log_key', [('gdfq', 'generator_loss_cl'), ('qimera', 'generator_loss_cl'),
                                           ('adadfq', 'generator_loss_disagreement'), ('psaq_v2', 'samples_loss_disagreement')])
def test_generator_kinds_time_the_data_step_and_the_student_step_apart(kind, log_key, tmp_path, restore_threads):
    """A baseline's iteration = its data step (generator or sample update) + the student's step:
    both parts are timed, and the student trains on what the data step made."""
    pytest.importorskip('mmpretrain')
    from benchmarks.speed import make_step, setup_from_timm
    setup = setup_from_timm('vit_tiny_patch16_224', img_size=32, num_classes=10, timm_kwargs=TINY_VIT)
    with torch.no_grad():
        setup.distiller.calibrate([torch.randn(2, 3, 32, 32)])
    step = make_step(setup, kind, batch=2, precision='fp32')
    before = dict(step.data)
    for _ in range(2):
        losses = step()
    assert log_key in losses and torch.isfinite(torch.as_tensor(losses['loss_kd']))
    assert len(step.splits) == 2 and all(s['generator_ms'] > 0 and s['student_ms'] > 0 for s in step.splits)
    trained_on = step.distill.data
    assert set(trained_on) >= {'images', 'label'} and trained_on['images'].shape == (2, 3, 32, 32)
    if kind == 'psaq_v2':  # the updated samples, not the initial pixels
        start = (before['pixels'].float() - setup.distiller.data_preprocessor.pixel_mean) / \
            setup.distiller.data_preprocessor.pixel_std
        assert not torch.allclose(trained_on['images'], start)


@pytest.mark.parametrize('kernel', ['torch', 'cpp'])
def test_tool_ihc_kernel_option_picks_the_l_ihc_path(kernel, tmp_path, restore_threads, monkeypatch):
    pytest.importorskip('mmpretrain')
    from mimiq_mm.losses import ihc_cpu
    calls = []
    apply = ihc_cpu.IHCLayerCPU.apply
    monkeypatch.setattr(ihc_cpu.IHCLayerCPU, 'apply', lambda *a: calls.append(1) or apply(*a))
    out = tmp_path / 'bench.json'
    _tool().main(['--timm-model', 'vit_tiny_patch16_224', '--img-size', '32', '--num-classes', '10',
                  '--timm-kwargs', json.dumps(TINY_VIT), '--batch', '2', '--device', 'cpu', '--warmup', '1',
                  '--iters', '1', '--threads', '1', '--steps', 'ihc', '--losses', '--ihc-kernel', kernel,
                  '--out', str(out)])
    data = json.loads(out.read_text())
    assert data['ihc_kernel'] == kernel and data['losses']['ihc']['kernel'] == kernel
    assert kernel == 'torch' or data['losses']['ihc']['value_diff'] < 1e-5
    assert (len(calls) > 0) == (kernel == 'cpp')


def test_tool_default_output_name(tmp_path):
    from benchmarks.speed import default_out_path
    path = default_out_path(dict(model='deit_small_patch16_224', device='cuda', precision='bf16', batch=128))
    assert path == osp.join('benchmarks', 'results', 'synthesis_deit_small_patch16_224_cuda_bf16_b128.json')


@pytest.mark.parametrize('timer', ['process', 'wall'])
def test_time_calls_counts_calls(timer):
    from mimiq_mm.utils.timing import time_calls
    calls = []
    timing = time_calls({'step': lambda: calls.append(1)}, 'cpu', warmup=2, iters=3, timer=timer, memory=True)['step']
    assert len(calls) == 5 and len(timing['times_ms']) == 3 and timing['timer'] == timer
    assert timing['ms_min'] == min(timing['times_ms']) and timing['ms_median'] == sorted(timing['times_ms'])[1]
    assert len(timing['wall_times_ms']) == 3 and timing['peak_memory_bytes'] is None  # CPU


def test_time_calls_alternates_the_calls():
    from mimiq_mm.utils.timing import time_calls
    order = []
    timings = time_calls({'a': lambda: order.append('a'), 'b': lambda: order.append('b')}, 'cpu', warmup=1, iters=2)
    assert order == ['a', 'b'] * 3 and set(timings) == {'a', 'b'}
    assert all(len(t['times_ms']) == 2 and t['timer'] == 'wall' for t in timings.values())


# ---------------------------------------------------------------------------------------------
# fast L_HAD (moments with a hand-written backward) against the direct global-SSIM formula
# ---------------------------------------------------------------------------------------------

def _had_reference(t_records, s_records, k1=0.01, k2=0.03, min_range=1e-6):
    per_layer = []
    for tr, sr in zip(t_records, s_records):
        p = tr.layout.num_prefix_tokens
        t = upcast_half(tr.outputs.detach()[:, :, p:, :]).flatten(2)
        s = upcast_half(sr.outputs[:, :, p:, :]).flatten(2)
        data_range = (t.amax(-1) - t.amin(-1)).clamp_min(min_range)
        ssim = global_ssim(t, s, c1=(k1 * data_range) ** 2, c2=(k2 * data_range) ** 2, dim=-1)
        per_layer.append((1 - ssim.abs()).mean())
    return torch.stack(per_layer).mean()


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_fast_had_value_and_gradient_equal_reference(dtype):
    g = torch.Generator().manual_seed(5)
    layout = TokenLayout(grid=(2, 3), num_prefix_tokens=1)
    teacher = [(torch.randn(2, 3, 7, 4, generator=g) * 2 + 0.5).to(dtype) for _ in range(2)]
    student0 = [(t.double() + torch.randn(2, 3, 7, 4, generator=g)).to(dtype) for t in teacher]
    results = []
    for fn in (HeadAttentionDistillLoss(), _had_reference):
        student = [s.clone().requires_grad_() for s in student0]
        t_rec = [AttentionRecord(f'b{i}', layout, outputs=t) for i, t in enumerate(teacher)]
        s_rec = [AttentionRecord(f'b{i}', layout, outputs=s) for i, s in enumerate(student)]
        loss = fn(t_rec, s_rec)
        loss.backward()
        results.append((loss, [s.grad for s in student]))
    (fast, fast_grads), (ref, ref_grads) = results
    assert fast.dtype == ref.dtype and fast.item() == pytest.approx(ref.item(), abs=1e-6)
    for a, b in zip(fast_grads, ref_grads):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=1e-6 * b.abs().max().item())


# ---------------------------------------------------------------------------------------------
# recording only the head outputs uses the fused kernel and gives the same outputs
# ---------------------------------------------------------------------------------------------

def test_output_only_recording_matches_explicit_path():
    from mimiq_mm.attention import AttentionRecorder, install_attention_capture
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, num_classes=10,
                              **TINY_VIT).eval()
    install_attention_capture(model)
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    with AttentionRecorder(model, fields=('outputs',)) as fused:
        logits = model(images)
    with AttentionRecorder(model, fields=('scores', 'outputs')) as explicit:
        logits_explicit = model(images)
    torch.testing.assert_close(logits, logits_explicit, rtol=1e-4, atol=1e-5)
    assert len(fused.records) == len(explicit.records) == TINY_VIT['depth']
    for a, b in zip(fused.records, explicit.records):
        assert a.scores is None and a.probs is None
        assert a.layout == b.layout
        torch.testing.assert_close(a.outputs, b.outputs, rtol=1e-4, atol=1e-5)
    sum(r.outputs.sum() for r in fused.records).backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_fast_losses_keep_fp32_statistics_inside_autocast():
    """Called inside an autocast region (L_HAD is, under mmengine's AmpOptimWrapper), the losses'
    matmuls must not drop to bf16."""
    g = torch.Generator().manual_seed(6)
    layout = TokenLayout(grid=(4, 4), num_prefix_tokens=1)
    scores = (torch.randn(2, 4, 17, 17, generator=g) * 3).requires_grad_()
    ihc_records = [AttentionRecord('blk', layout, scores=scores)]
    teacher = torch.randn(2, 3, 17, 8, generator=g)
    student = (teacher + torch.randn(2, 3, 17, 8, generator=g)).requires_grad_()
    t_rec, s_rec = [AttentionRecord('blk', layout, outputs=teacher)], [AttentionRecord('blk', layout, outputs=student)]
    plain = (InterHeadCoherencyLoss()(ihc_records).item(), HeadAttentionDistillLoss()(t_rec, s_rec).item())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ihc = InterHeadCoherencyLoss()(ihc_records)
        had = HeadAttentionDistillLoss()(t_rec, s_rec)
    assert ihc.dtype == had.dtype == torch.float32
    assert ihc.item() == pytest.approx(plain[0], abs=1e-7) and had.item() == pytest.approx(plain[1], abs=1e-7)
    (ihc + had).backward()
    assert scores.grad.dtype == student.grad.dtype == torch.float32
