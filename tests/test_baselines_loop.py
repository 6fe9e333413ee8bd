"""The generator-based baselines (GDFQ, Qimera, AdaDFQ) and PSAQ-ViT V2 run in the same
DataFreeQATLoop as MimiQ, chosen by the method lines of their shipped configs put on the tests'
tiny ViT: a generator step per iteration, calibration on generated batches, the generator's
state in the checkpoints, a resumed run that goes on as if it had not stopped."""
import glob
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from test_classification_e2e import data_options, make_image_folder, make_teacher_checkpoint, scalars
from tool_loader import exit_message, load_tool

pytest.importorskip('mmpretrain')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(ROOT, 'tests', 'configs', 'tiny_cls_mimiq.py')
METHODS = ['gdfq', 'qimera', 'adadfq', 'psaq-v2']


def method_config(method, tmp_path, **train_cfg):
    """The tiny test config with the method lines of ``configs/deit/deit-s_<method>_w4a4.py``
    (its losses, data source and generator), a few iterations long."""
    shipped = Config.fromfile(osp.join(ROOT, 'configs', 'deit', f'deit-s_{method}_w4a4.py'))
    cfg = Config.fromfile(TINY)
    cfg.model.update({k: shipped.model.get(k) for k in ('had', 'augment', 'kd', 'student_losses')})
    generator = dict(shipped.train_cfg.generator)
    if 'warmup_ratio' in generator:
        generator['warmup_ratio'] = 0.5  # two generator-only updates before calibration
    cfg.train_cfg.update(data_source=shipped.train_cfg.get('data_source', 'synthetic'), generator=generator,
                         max_iters=4, val_interval=4, batch_size=4, calibration_batches=1)
    cfg.train_cfg.update(train_cfg)
    cfg.train_cfg.synthesis.method = shipped.train_cfg.synthesis.method
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=2, max_keep_ckpts=3)
    path = str(tmp_path / f'tiny_{method}.py')
    cfg.dump(path)
    return path


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp('baselines')
    return dict(root=root, data=make_image_folder(str(root / 'data')),
                ckpt=make_teacher_checkpoint(str(root / 'teacher.pth')))


def train(assets, config, work_dir, *options, resume=None):
    """tools/train.py's main in this process; what it stopped with, or None."""
    tool = load_tool('train')
    argv = [config, '--work-dir', str(work_dir)] + (['--resume', resume] if resume else []) + [
        '--cfg-options', f'model.teacher_checkpoint={assets["ckpt"]}', *data_options(assets['data']),
        f'experiment_name={osp.basename(str(work_dir))}', *options]
    try:
        tool.main(argv)
    except SystemExit as stop:
        return exit_message(SimpleNamespace(value=stop))
    return None


@pytest.mark.parametrize('method', METHODS)
def test_each_baseline_runs_in_the_data_free_loop(assets, tmp_path, method):
    work_dir = tmp_path / method
    assert train(assets, method_config(method, tmp_path), work_dir) is None
    assert (work_dir / 'student_w4a4.pth').is_file()
    checkpoint = torch.load(work_dir / 'iter_4.pth', map_location='cpu', weights_only=False)
    assert checkpoint['generator'], 'the generator state is in the checkpoint'
    logged = {k for row in scalars(work_dir) for k in row}
    prefix = 'samples_' if method == 'psaq-v2' else 'generator_'
    assert any(k.startswith(prefix) for k in logged), logged
    student_terms = {'gdfq': 'loss_ce', 'qimera': 'loss_ce', 'adadfq': 'loss_agreement', 'psaq-v2': 'loss_kd'}
    assert student_terms[method] in logged


@pytest.mark.parametrize('method', ['gdfq', 'psaq-v2'])
def test_a_resumed_baseline_goes_on_as_if_uninterrupted(assets, tmp_path, method):
    config = method_config(method, tmp_path)
    full, part = tmp_path / 'full', tmp_path / 'part'
    assert train(assets, config, full) is None
    assert train(assets, config, part, resume=str(full / 'iter_2.pth')) is None  # from half-way
    a = torch.load(full / 'student_w4a4.pth', weights_only=True)['state_dict']
    b = torch.load(part / 'student_w4a4.pth', weights_only=True)['state_dict']
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), \
        [k for k in a if not torch.allclose(a[k].float(), b[k].float(), atol=1e-6)][:5]


def test_generator_methods_need_their_data_source(assets, tmp_path):
    config = method_config('gdfq', tmp_path, data_source='synthetic')
    stopped = train(assets, config, tmp_path / 'bad')
    assert stopped is not None and "needs train_cfg.data_source='generator'" in stopped
