"""The data-free pipeline for classification, driven by configs through tools/train.py and
tools/test.py as a user runs it: synthesis -> calibration -> fine-tuning -> evaluation,
checkpoints, resuming, the student export, distributed CPU runs and bad input."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('mmpretrain')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_cls_mimiq.py')
NUM_CLASSES = 4


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


def test_train_runs_every_stage(trained):
    work_dir = trained['work_dir']
    with open(work_dir / 'synthetic_mimiq' / 'manifest.json') as f:
        manifest = json.load(f)
    assert manifest['num_images'] == 8 and manifest['settings']['method'] == 'mimiq'
    assert all(osp.isfile(work_dir / 'synthetic_mimiq' / im['file']) for im in manifest['images'])
    assert set(im['label'] for im in manifest['images']) <= set(range(NUM_CLASSES))
    assert 'ihc' in manifest['batches']['0']['losses']
    assert 'calibrated activation quantizers' in trained['log']
    rows = scalars(work_dir)
    train_rows = [r for r in rows if 'loss' in r]
    assert [r['iter'] for r in train_rows] == list(range(1, 11))
    assert all('loss_kd' in r and 'loss_had' in r for r in train_rows)
    assert any('accuracy/top1' in r for r in rows), 'validation did not run'
    assert osp.isfile(work_dir / 'iter_10.pth')
    assert osp.isfile(work_dir / 'student_w4a4.pth')


def test_fine_tuning_reduces_the_loss(trained):
    losses = [r['loss'] for r in scalars(trained['work_dir']) if 'loss' in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


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


def test_student_export_evaluates_with_tools_test(assets, trained):
    ckpt = str(trained['work_dir'] / 'student_w4a4.pth')
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert state['meta']['quant']['w_bits'] == 4
    assert any(k.endswith('input_quantizer.step') for k in state['state_dict'])
    proc = run_tool([osp.join(ROOT, 'tools', 'test.py'), CONFIG, ckpt, '--work-dir',
                     str(assets['root'] / 'test_run'), '--cfg-options', *data_options(assets['data'])])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'accuracy/top1' in proc.stdout + proc.stderr


@pytest.mark.parametrize('option, message', [
    ('train_cfg.synthesis.method=dream', 'unknown synthesis method'),
    ('model.quant.w_bits=9', 'from 2 to 8'),
    ('model.quant.a_bits=1', 'from 2 to 8'),
    ('model.teacher_checkpoint=/nonexistent/teacher.pth', 'teacher checkpoint'),
    ('train_cfg.synthesis.image_size=18', 'does not fit the teacher backbone'),
])
def test_bad_input_fails_with_a_clear_message(assets, tmp_path, option, message):
    proc = train(assets, tmp_path / 'bad', option)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_unsupported_backbone_names_the_supported_families(assets, tmp_path):
    proc = run_tool([osp.join(ROOT, 'tools', 'train.py'), osp.join(ROOT, 'tests', 'configs', 'tiny_cls_unsupported.py'),
                     '--work-dir', str(tmp_path / 'unsupported'), '--cfg-options',
                     f'model.teacher_checkpoint={assets["ckpt"]}', *data_options(assets['data'])])
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert 'Supported backbone families' in out and 'timm VisionTransformer' in out and 'Swin' in out


def test_incompatible_teacher_checkpoint_is_refused(assets, tmp_path):
    import timm
    other = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=16, patch_size=4, embed_dim=36,
                              depth=2, num_heads=3, num_classes=NUM_CLASSES)
    path = tmp_path / 'other.pth'
    torch.save(dict(state_dict=other.state_dict()), path)
    proc = train(assets, tmp_path / 'incompatible', f'model.teacher_checkpoint={path}')
    assert proc.returncode != 0
    assert 'does not fit model.architecture' in proc.stdout + proc.stderr


def test_ctrl_c_during_fine_tuning_keeps_the_finished_iterations(assets, tmp_path):
    work_dir = tmp_path / 'interrupted'
    interrupted = osp.join(ROOT, 'tests', 'configs', 'tiny_cls_interrupted.py')
    proc = run_tool([osp.join(ROOT, 'tools', 'train.py'), interrupted, '--work-dir', str(work_dir), '--cfg-options',
                     f'model.teacher_checkpoint={assets["ckpt"]}', *data_options(assets['data'])])
    assert proc.returncode != 0
    assert osp.isfile(work_dir / 'iter_3.pth'), proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = train(assets, work_dir, 'default_hooks.checkpoint.interval=100', extra_args=['--resume'])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'resumed' in log.lower() and 'do not match exactly' not in log
    iters = [r['iter'] for r in scalars(work_dir) if 'loss' in r]
    assert iters[:3] == [1, 2, 3] and iters[-1] == 10 and len(set(iters)) == len(iters)


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


def test_real_data_fine_tuning_uses_the_config_dataset(assets, tmp_path):
    work_dir = tmp_path / 'real'
    proc = train(assets, work_dir, 'train_cfg.data_source=real', 'train_dataloader.dataset.data_prefix=test',
                 'train_dataloader.batch_size=4', 'train_cfg.max_iters=2')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not glob.glob(str(work_dir / 'synthetic_*'))
    assert [r['iter'] for r in scalars(work_dir) if 'loss' in r] == [1, 2]
