"""tools/train.py, tools/test.py and tools/dist_train.sh run as a user would run them.

The argument-handling tests stop before any model is built. The end-to-end tests use a toy
regression model registered through the config's ``custom_imports``, so they exercise the tools
(and mimiq_mm's import-time checkpoint patch) without the rest of the project's models.
"""
import os
import os.path as osp
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(REPO_ROOT, 'tools', 'train.py')
TEST = osp.join(REPO_ROOT, 'tools', 'test.py')
DIST_TRAIN = osp.join(REPO_ROOT, 'tools', 'dist_train.sh')

TOY_COMPONENTS = '''
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, METRICS, MODELS


@DATASETS.register_module()
class ToyPoints(torch.utils.data.Dataset):
    metainfo = dict(classes=('value',))

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(inputs=torch.full((2,), index / 8.0), targets=torch.tensor(index / 8.0))


@MODELS.register_module()
class ToyRegressor(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, targets, mode='loss'):
        predictions = self.linear(torch.stack(inputs)).squeeze(1)
        targets = torch.stack(targets)
        if mode == 'loss':
            return dict(loss=(predictions - targets).pow(2).mean())
        return [dict(pred=p, target=t) for p, t in zip(predictions, targets)]


@METRICS.register_module()
class ToyMSE(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.extend(float((s['pred'] - s['target']) ** 2) for s in data_samples)

    def compute_metrics(self, results):
        return dict(mse=sum(results) / len(results))
'''

TOY_CONFIG = '''
custom_imports = dict(imports=['toy_components'], allow_failed_imports=False)
model = dict(type='ToyRegressor')
train_dataloader = dict(dataset=dict(type='ToyPoints'), batch_size=2, num_workers=0,
                        sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = train_dataloader
test_cfg = dict()
test_evaluator = dict(type='ToyMSE')
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
train_cfg = dict(by_epoch=True, max_epochs=1)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1))
randomness = dict(seed=0)
'''


def run_tool(args, cwd, extra_pythonpath=None, extra_env=None, timeout=300):
    env = dict(os.environ, **(extra_env or {}))
    paths = [p for p in (extra_pythonpath, REPO_ROOT, env.get('PYTHONPATH')) if p]
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env.pop('LOCAL_RANK', None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def output_of(result):
    return result.stdout + result.stderr


@pytest.fixture
def toy_config(tmp_path):
    (tmp_path / 'toy_components.py').write_text(textwrap.dedent(TOY_COMPONENTS))
    config = tmp_path / 'toy_regression.py'
    config.write_text(TOY_CONFIG)
    return config


# ---------------------------------------------------------------- argument handling


def test_train_missing_config_exits_with_message(tmp_path):
    result = run_tool([sys.executable, TRAIN, str(tmp_path / 'absent.py')], cwd=tmp_path)
    assert result.returncode != 0
    assert 'config file not found' in result.stderr
    assert 'absent.py' in result.stderr
    assert 'Traceback' not in result.stderr


def test_test_missing_checkpoint_exits_with_message(tmp_path, toy_config):
    result = run_tool([sys.executable, TEST, str(toy_config), str(tmp_path / 'absent.pth')],
                      cwd=tmp_path)
    assert result.returncode != 0
    assert 'checkpoint file not found' in result.stderr
    assert 'absent.pth' in result.stderr
    assert 'Traceback' not in result.stderr


def test_test_missing_config_exits_with_message(tmp_path):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    result = run_tool([sys.executable, TEST, str(tmp_path / 'absent.py'), str(checkpoint)],
                      cwd=tmp_path)
    assert result.returncode != 0
    assert 'config file not found' in result.stderr


def test_train_missing_resume_checkpoint_exits_with_message(tmp_path, toy_config):
    result = run_tool([sys.executable, TRAIN, str(toy_config), '--resume', 'absent.pth'],
                      cwd=tmp_path, extra_pythonpath=str(tmp_path))
    assert result.returncode != 0
    assert 'checkpoint given to --resume not found' in result.stderr


def test_test_rejects_non_pickle_out(tmp_path, toy_config):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    result = run_tool([sys.executable, TEST, str(toy_config), str(checkpoint), '--out', 'r.json'],
                      cwd=tmp_path)
    assert result.returncode != 0
    assert '.pkl' in result.stderr


# ---------------------------------------------------------------- end to end on the toy config


def test_train_then_test_with_default_work_dir(tmp_path, toy_config):
    trained = run_tool([sys.executable, TRAIN, str(toy_config)], cwd=tmp_path,
                       extra_pythonpath=str(tmp_path))
    assert trained.returncode == 0, output_of(trained)[-3000:]
    work_dir = tmp_path / 'work_dirs' / 'toy_regression'
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.is_file()

    results = tmp_path / 'predictions.pkl'
    tested = run_tool([sys.executable, TEST, str(toy_config), str(checkpoint), '--out', str(results)],
                      cwd=tmp_path, extra_pythonpath=str(tmp_path))
    assert tested.returncode == 0, output_of(tested)[-3000:]
    assert 'mse' in output_of(tested)
    assert results.is_file()


def test_resume_without_value_continues_from_latest(tmp_path, toy_config):
    work_dir = tmp_path / 'resume_run'
    first = run_tool([sys.executable, TRAIN, str(toy_config), '--work-dir', str(work_dir)],
                     cwd=tmp_path, extra_pythonpath=str(tmp_path))
    assert first.returncode == 0, output_of(first)[-3000:]
    resumed = run_tool([sys.executable, TRAIN, str(toy_config), '--work-dir', str(work_dir),
                        '--resume', '--cfg-options', 'train_cfg.max_epochs=2'],
                       cwd=tmp_path, extra_pythonpath=str(tmp_path))
    assert resumed.returncode == 0, output_of(resumed)[-3000:]
    assert 'resumed epoch: 1' in output_of(resumed)
    assert (work_dir / 'epoch_2.pth').is_file()


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_dist_train_runs_two_processes(tmp_path, toy_config):
    """Two ranks; on a machine without CUDA this goes through the automatic gloo fallback."""
    work_dir = tmp_path / 'dist_run'
    result = run_tool(['bash', DIST_TRAIN, str(toy_config), '2', '--work-dir', str(work_dir)],
                      cwd=tmp_path, extra_pythonpath=str(tmp_path),
                      extra_env={'PYTHON': sys.executable, 'PORT': str(_free_port())})
    assert result.returncode == 0, output_of(result)[-4000:]
    assert (work_dir / 'epoch_1.pth').is_file()
    if not torch.cuda.is_available():
        assert 'uses the gloo backend' in output_of(result)
