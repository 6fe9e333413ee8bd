"""The data-free pipeline for classification, driven by configs through tools/train.py and
tools/test.py as a user runs it: synthesis -> calibration -> fine-tuning -> evaluation,
checkpoints, resuming, the student export, distributed CPU runs and bad input."""
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tool_loader import exit_message, load_tool

pytest.importorskip('mmpretrain')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_cls_mimiq.py')
NUM_CLASSES = 4


class RunsCode:
    """Unpickles as a call of ``os.system``: what a malicious checkpoint carries."""

    def __reduce__(self):
        return os.system, ('echo this must never run',)


CLASS_COLOURS = torch.tensor([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=torch.float32)


def class_images(labels, size=16, seed=0):
    """Images whose class is visible: a coloured square on noise. uint8 (B, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 80, (len(labels), 3, size, size), generator=g).float()
    for i, label in enumerate(labels.tolist()):
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        images[i, :, top:top + size // 2, left:left + size // 2] = CLASS_COLOURS[label].view(3, 1, 1)
    return images.clamp(0, 255).to(torch.uint8)


def make_image_folder(root, per_class=3, size=16, seed=0):
    """A tiny ImageFolder: <root>/test/<class>/<i>.png."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    for i, (img, label) in enumerate(zip(class_images(labels, size, seed), labels.tolist())):
        folder = osp.join(root, 'test', str(label))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(osp.join(folder, f'{i}.png'))
    return root


def make_teacher_checkpoint(path, steps=60):
    """A tiny timm ViT matching the test config, briefly trained to tell the classes apart (so its
    activations and predictions have the structure of a trained model), saved as a state_dict
    with a numpy value in meta (the torch >= 2.6 safe-loading case)."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=16, patch_size=4, embed_dim=24,
                              depth=2, num_heads=3, mlp_ratio=2.0, num_classes=NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        labels = torch.randint(0, NUM_CLASSES, (16,))
        images = (class_images(labels, seed=step + 1).float() - 127.5) / 127.5  # the config's normalisation
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(dict(state_dict=model.state_dict(), meta=dict(final_loss=np.float64(loss.item()))), path)
    return path


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp('cls')
    data = make_image_folder(str(root / 'data'))
    ckpt = make_teacher_checkpoint(str(root / 'teacher.pth'))
    return dict(root=root, data=data, ckpt=ckpt)


def data_options(data):
    return [f'{loader}.dataset.data_root={data}' for loader in ('train_dataloader', 'val_dataloader',
                                                                 'test_dataloader')]


def run_tool(args, timeout=600, launcher_prefix=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, osp.join(ROOT, 'tests')]), OMP_NUM_THREADS='1')
    cmd = (launcher_prefix or [sys.executable]) + args
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def train(assets, work_dir, *options, extra_args=()):
    return run_tool([osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', str(work_dir), *extra_args,
                     '--cfg-options', f'model.teacher_checkpoint={assets["ckpt"]}', *data_options(assets['data']),
                     *options])


def scalars(work_dir):
    """All scalar log lines of a run (mmengine's vis_data/scalars.json), in order."""
    rows = []
    for path in sorted(glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


@pytest.fixture(scope='module')
def trained(assets):
    work_dir = assets['root'] / 'run'
    proc = train(assets, work_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(work_dir=work_dir, log=proc.stdout + proc.stderr)


@pytest.mark.slow
def test_train_runs_every_stage(trained):
    work_dir = trained['work_dir']
    with open(work_dir / 'synthetic_mimiq' / 'manifest.json') as f:
        manifest = json.load(f)
    assert manifest['num_images'] == 8 and manifest['settings']['method'] == 'mimiq'
    assert all(osp.isfile(work_dir / 'synthetic_mimiq' / im['file']) for im in manifest['images'])
    assert set(im['label'] for im in manifest['images']) <= set(range(NUM_CLASSES))
    assert 'ihc' in manifest['batches']['0']['losses']
    assert 'calibrated the quantizers on' in trained['log'] and "LSQActQuantizer(init='mse')" in trained['log']
    rows = scalars(work_dir)
    train_rows = [r for r in rows if 'loss' in r]
    assert [r['iter'] for r in train_rows] == list(range(1, 11))
    assert all('loss_kd' in r and 'loss_had' in r for r in train_rows)
    assert any('accuracy/top1' in r for r in rows), 'validation did not run'
    assert osp.isfile(work_dir / 'iter_10.pth')
    assert osp.isfile(work_dir / 'student_w4a4.pth')


@pytest.mark.slow
def test_fine_tuning_updates_the_student(trained):
    """The loop optimises the student: its weights and quantizer steps move between the
    checkpoints of iterations 5 and 10; the teacher does not. (That the updates lower the loss is
    checked on a fixed batch in test_distiller.py: over 10 iterations of 8 images at lr 1e-3 the
    loss is dominated by 4-bit rounding flips.)"""
    states = [torch.load(trained['work_dir'] / f'iter_{i}.pth', weights_only=False)['state_dict'] for i in (5, 10)]
    moved = [k for k in states[0] if k.startswith('student.') and states[0][k].is_floating_point()
             and not torch.equal(states[0][k], states[1][k])]
    assert any(k.endswith('weight') for k in moved) and any(k.endswith('quantizer.step') for k in moved)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0] if k.startswith('teacher.'))


@pytest.mark.slow
def test_resume_continues_and_reuses_the_synthetic_set(assets, trained):
    proc = train(assets, trained['work_dir'], 'train_cfg.max_iters=12', extra_args=['--resume'])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert 'using the finished synthetic set' in log
    assert 'resumed' in log.lower()
    assert 'do not match exactly' not in log, 'the checkpoint did not load fully'
    iters = [r['iter'] for r in scalars(trained['work_dir']) if 'loss' in r]
    assert iters[-2:] == [11, 12]
    assert osp.isfile(trained['work_dir'] / 'iter_12.pth')


@pytest.mark.slow
def test_student_export_evaluates_with_tools_test(assets, trained):
    ckpt = str(trained['work_dir'] / 'student_w4a4.pth')
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert state['meta']['quant']['w_bits'] == 4
    assert any(k.endswith('input_quantizer.step') for k in state['state_dict'])
    proc = run_tool([osp.join(ROOT, 'tools', 'test.py'), CONFIG, ckpt, '--work-dir',
                     str(assets['root'] / 'test_run'), '--cfg-options', *data_options(assets['data'])])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'accuracy/top1' in proc.stdout + proc.stderr


@pytest.mark.slow
def test_tools_test_refuses_a_student_that_was_never_calibrated(assets, tmp_path):
    """The full-precision teacher checkpoint has no quantizer state: evaluating it as the student
    is an error naming the fix, not a figure from ranges fitted to the first test batch."""
    proc = run_tool([osp.join(ROOT, 'tools', 'test.py'), CONFIG, assets['ckpt'], '--work-dir',
                     str(tmp_path / 'test_run'), '--cfg-options', *data_options(assets['data'])])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'accuracy/top1' not in out, out[-3000:]
    assert 'never calibrated' in out and 'train_cfg.max_iters=0' in out and 'Traceback' not in out, out[-3000:]


@pytest.mark.slow
def test_resume_calibrates_only_the_quantizers_the_checkpoint_lacks(assets, trained, tmp_path):
    """A checkpoint missing one quantizer's state: the resumed run calibrates that one and keeps
    the learned steps of all others (here with no iteration left, so nothing else moves them)."""
    saved = torch.load(trained['work_dir'] / 'iter_5.pth', weights_only=False)
    state = saved['state_dict']
    steps = {k: v for k, v in state.items() if k.startswith('student.') and k.endswith('quantizer.step')}
    dropped = sorted(steps)[1][:-len('step')]
    for key in [k for k in state if k.startswith(dropped)]:
        del state[key]
    ckpt = tmp_path / 'partial.pth'
    torch.save(saved, ckpt)
    proc = train(assets, tmp_path / 'run', 'train_cfg.max_iters=5', extra_args=['--resume', str(ckpt)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exported = torch.load(tmp_path / 'run' / 'student_w4a4.pth', weights_only=True)['state_dict']
    student = {f'student.model.{k}': v for k, v in exported.items()}  # TimmClassifier saves without 'model.'
    for key, step in steps.items():
        if not key.startswith(dropped):
            assert torch.equal(student[key], step), key
    assert bool(student[dropped + 'initialized'])
    assert 'calibrated 1 activation quantizers the checkpoint had no state for' in proc.stdout + proc.stderr


# ---------------------------------------------------------------- bad input, in-process


@pytest.fixture
def train_in_process(assets, tmp_path, monkeypatch):
    """tools/train.py's main(argv) with the test assets; returns what it stopped with, or None.

    Each call gets its own experiment_name: mmengine keeps its loggers and visualizers per
    process by that name, and in-process runs share a process."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))  # URL downloads stay in tmp_path
    tool = load_tool('train')
    calls = []

    def run(*options, config=CONFIG):
        name = f'{tmp_path.name}_{len(calls)}'
        calls.append(name)
        argv = [config, '--work-dir', str(tmp_path / name), '--cfg-options',
                f'model.teacher_checkpoint={assets["ckpt"]}', *data_options(assets['data']),
                f'experiment_name={name}', *options]
        try:
            tool.main(argv)
        except SystemExit as stop:
            return exit_message(SimpleNamespace(value=stop))
        return None
    return run


def test_max_iters_0_is_post_training_quantization_with_any_schedule(train_in_process, tmp_path):
    """The fix the uncalibrated-student error names: the config's lr schedule (ConstantLR here)
    must not stop a run without fine-tuning."""
    assert train_in_process('train_cfg.max_iters=0') is None
    assert (tmp_path / f'{tmp_path.name}_0' / 'student_w4a4.pth').is_file()


@pytest.mark.parametrize('option, message', [
    ('train_cfg.synthesis.method=dream', 'unknown synthesis method'),
    ('model.quant.w_bits=9', 'from 2 to 8'),
    ('model.quant.a_bits=1', 'from 2 to 8'),
    ('train_cfg.synthesis.image_size=18', 'does not fit the teacher'),
])
def test_bad_input_fails_with_a_clear_message(train_in_process, option, message):
    stopped = train_in_process(option)
    assert stopped is not None and message in stopped, stopped


@pytest.mark.slow
def test_cli_reports_a_missing_teacher_in_one_line(assets, tmp_path):
    """The subprocess smoke test of bad input: exit status and stderr as a user sees them."""
    proc = train(assets, tmp_path / 'bad', 'model.teacher_checkpoint=/nonexistent/teacher.pth')
    assert proc.returncode != 0
    assert 'teacher checkpoint' in proc.stderr and '/nonexistent/teacher.pth' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_unsupported_backbone_names_the_supported_families(train_in_process):
    stopped = train_in_process(config=osp.join(ROOT, 'tests', 'configs', 'tiny_cls_unsupported.py'))
    assert 'Supported backbone families' in stopped and 'timm VisionTransformer' in stopped and 'Swin' in stopped


def test_incompatible_teacher_checkpoint_is_refused(train_in_process, tmp_path):
    import timm
    other = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=16, patch_size=4, embed_dim=36,
                              depth=2, num_heads=3, num_classes=NUM_CLASSES)
    path = tmp_path / 'other.pth'
    torch.save(dict(state_dict=other.state_dict()), path)
    assert 'does not fit model.architecture' in train_in_process(f'model.teacher_checkpoint={path}')


def _truncated_copy(source, path):
    data = open(source, 'rb').read()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.mark.parametrize('damage', ['random bytes', 'truncated'])
def test_damaged_teacher_checkpoint_is_reported_as_damaged(train_in_process, assets, tmp_path, damage):
    path = tmp_path / 'teacher.pth'
    if damage == 'random bytes':
        path.write_bytes(np.random.default_rng(0).bytes(1 << 14))
    else:
        _truncated_copy(assets['ckpt'], path)
    stopped = train_in_process(f'model.teacher_checkpoint={path}')
    assert str(path) in stopped and 'damaged' in stopped, stopped
    assert 'MIMIQ_TRUSTED_CHECKPOINTS' not in stopped and 'Traceback' not in stopped


def test_teacher_checkpoint_with_code_is_refused(train_in_process, tmp_path):
    path = tmp_path / 'teacher.pth'
    torch.save(dict(state_dict={}, meta=RunsCode()), path)
    stopped = train_in_process(f'model.teacher_checkpoint={path}')
    assert 'allowlist' in stopped and 'system' in stopped, stopped


def test_unreachable_teacher_url_fails_in_one_line(train_in_process):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    url = f'http://127.0.0.1:{port}/teacher.pth'
    stopped = train_in_process(f'model.teacher_checkpoint={url}')
    assert stopped.startswith(f'error: cannot download checkpoint {url}') and '\n' not in stopped, stopped
    assert 'Pass a local file instead' in stopped


# ---------------------------------------------------------------- no evaluation data


def test_run_without_evaluation_data_skips_validation_and_exports_the_student(train_in_process, tmp_path, capsys):
    from mmengine.logging import MMLogger
    MMLogger.get_instance(f'{tmp_path.name}_console')  # what the tool logs before its Runner: to capsys
    missing = tmp_path / 'imagenet'
    stopped = train_in_process(f'val_dataloader.dataset.data_root={missing}', 'train_cfg.max_iters=2',
                               'train_cfg.val_interval=1')
    assert stopped is None
    out = capsys.readouterr().out
    assert out.count('validation skipped') == 1 and str(missing) in out
    work_dir = tmp_path / f'{tmp_path.name}_0'
    assert (work_dir / 'student_w4a4.pth').is_file()
    assert not any('accuracy/top1' in r for r in scalars(work_dir)), 'validation ran without data'
    assert [r['iter'] for r in scalars(work_dir) if 'loss' in r] == [1, 2]


@pytest.mark.slow
def test_ctrl_c_during_fine_tuning_resumes_as_if_uninterrupted(assets, trained, tmp_path):
    """Ctrl-C during iteration 3 finishes it, saves iter_3.pth, and --resume goes on with the batch
    of iteration 4: every iteration's loss equals the uninterrupted run's (no augmentation, fixed
    sampler seed), so no batch is skipped or repeated."""
    work_dir = tmp_path / 'interrupted'
    interrupted = osp.join(ROOT, 'tests', 'configs', 'tiny_cls_interrupted.py')
    proc = run_tool([osp.join(ROOT, 'tools', 'train.py'), interrupted, '--work-dir', str(work_dir), '--cfg-options',
                     f'model.teacher_checkpoint={assets["ckpt"]}', *data_options(assets['data'])])
    assert proc.returncode != 0
    assert osp.isfile(work_dir / 'iter_3.pth'), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert torch.load(work_dir / 'iter_3.pth', weights_only=False)['meta']['iter'] == 3
    proc = train(assets, work_dir, 'default_hooks.checkpoint.interval=100', extra_args=['--resume'])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'resumed' in log.lower() and 'do not match exactly' not in log
    rows = [r for r in scalars(work_dir) if 'loss' in r]
    uninterrupted = [r['loss'] for r in scalars(trained['work_dir']) if 'loss' in r][:10]  # its first run
    assert [r['iter'] for r in rows] == list(range(1, 11))
    assert [r['loss'] for r in rows] == pytest.approx(uninterrupted, rel=1e-6)


@pytest.mark.slow
def test_two_process_cpu_run_shards_synthesis_and_syncs_quantizers(assets, tmp_path):
    work_dir = tmp_path / 'dist'
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29533']
    proc = run_tool([osp.join(ROOT, 'tests', 'dist_train_and_dump.py'), CONFIG, str(work_dir),
                     f'model.teacher_checkpoint={assets["ckpt"]}', *data_options(assets['data']),
                     'train_cfg.synthesis.num_images=12', 'train_cfg.max_iters=2'],
                    launcher_prefix=launcher)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(work_dir / 'synthetic_mimiq' / 'manifest.json') as f:
        manifest = json.load(f)
    files = [im['file'] for im in manifest['images']]
    assert len(files) == 12 and len(set(files)) == 12
    ranks = {rec['rank'] for rec in manifest['batches'].values()}
    assert ranks == {0, 1}, 'both ranks should have synthesised batches'
    states = [torch.load(work_dir / f'quantizers_rank{r}.pt', weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys() and states[0]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.slow
def test_tools_synthesize_makes_a_set_that_training_reuses(assets, tmp_path):
    out = tmp_path / 'set'
    proc = run_tool([osp.join(ROOT, 'tools', 'synthesize.py'), CONFIG, '--out-dir', str(out), '--num-images', '4',
                     '--work-dir', str(tmp_path / 'synth'), '--cfg-options',
                     f'model.teacher_checkpoint={assets["ckpt"]}', *data_options(assets['data'])])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / 'manifest.json') as f:
        assert json.load(f)['num_images'] == 4
    proc = train(assets, tmp_path / 'reuse', f'train_cfg.synthesis.out_dir={out}', 'train_cfg.synthesis.num_images=4',
                 'train_cfg.max_iters=1')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'using the finished synthetic set' in proc.stdout + proc.stderr


@pytest.mark.slow
def test_real_data_fine_tuning_uses_the_config_dataset(assets, tmp_path):
    work_dir = tmp_path / 'real'
    proc = train(assets, work_dir, 'train_cfg.data_source=real', 'train_dataloader.dataset.data_prefix=test',
                 'train_dataloader.batch_size=4', 'train_cfg.max_iters=2')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not glob.glob(str(work_dir / 'synthetic_*'))
    assert [r['iter'] for r in scalars(work_dir) if 'loss' in r] == [1, 2]
