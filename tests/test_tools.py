"""tools/train.py, tools/test.py and tools/dist_train.sh run as a user would run them.

The argument-handling tests stop before any model is built. The end-to-end tests use a toy
regression model registered through the config's ``custom_imports``, so they exercise the tools
(and mimiq_mm's import-time checkpoint patch) without the rest of the project's models.
"""
import glob
import re
import os
import os.path as osp
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from tool_loader import exit_message, load_tool

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


@DATASETS.register_module()
class ToyFolderPoints(torch.utils.data.Dataset):
    """Points saved as <data_root>/*.pt: a dataset with a data root, for the evaluation-data checks."""
    metainfo = dict(classes=('value',))

    def __init__(self, data_root):
        import glob
        import os
        if not os.path.isdir(data_root):
            raise FileNotFoundError(f'no folder {data_root}')
        self.files = sorted(glob.glob(os.path.join(data_root, '*.pt')))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        point = torch.load(self.files[index])
        return dict(inputs=point, targets=point.mean())
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


# ---------------------------------------------------------------- argument handling (in-process)


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """tools/train.py and tools/test.py as modules, run from tmp_path with the toy components."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return SimpleNamespace(train=load_tool('train'), test=load_tool('test'))


def log_to_captured_stdout(name):
    """A new current MMLogger bound to the sys.stdout of the running test (capsys): what the tools
    log before their Runner exists goes to mmengine's latest logger, made by an earlier test."""
    from mmengine.logging import MMLogger
    MMLogger.get_instance(name)


def test_train_missing_config_exits_with_message(tools, tmp_path):
    with pytest.raises(SystemExit) as stop:
        tools.train.main([str(tmp_path / 'absent.py')])
    assert 'config file not found' in exit_message(stop) and 'absent.py' in exit_message(stop)


def test_test_missing_checkpoint_exits_with_message(tools, tmp_path, toy_config):
    with pytest.raises(SystemExit) as stop:
        tools.test.main([str(toy_config), str(tmp_path / 'absent.pth')])
    assert 'checkpoint file not found' in exit_message(stop) and 'absent.pth' in exit_message(stop)


def test_test_missing_config_exits_with_message(tools, tmp_path):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    with pytest.raises(SystemExit) as stop:
        tools.test.main([str(tmp_path / 'absent.py'), str(checkpoint)])
    assert 'config file not found' in exit_message(stop)


def test_train_missing_resume_checkpoint_exits_with_message(tools, toy_config):
    with pytest.raises(SystemExit) as stop:
        tools.train.main([str(toy_config), '--resume', 'absent.pth'])
    assert 'checkpoint given to --resume not found' in exit_message(stop)


def test_test_rejects_non_pickle_out(tools, tmp_path, toy_config):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    with pytest.raises(SystemExit) as stop:
        tools.test.main([str(toy_config), str(checkpoint), '--out', 'r.json'])
    assert '.pkl' in exit_message(stop)


def test_cli_reports_bad_input_without_traceback(tmp_path):
    """The one subprocess check of the argument handling: exit status and stderr as a user sees them."""
    result = run_tool([sys.executable, TRAIN, str(tmp_path / 'absent.py')], cwd=tmp_path)
    assert result.returncode != 0
    assert 'config file not found' in result.stderr
    assert 'Traceback' not in result.stderr


# ---------------------------------------------------------------- evaluation data is optional for training


def _with_val_data(config, data_root):
    """The toy config with a validation set read from ``data_root`` (a folder of .pt points)."""
    config.write_text(config.read_text() + textwrap.dedent(f'''
        val_dataloader = dict(dataset=dict(type='ToyFolderPoints', data_root={str(data_root)!r}), batch_size=2,
                              num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False))
        val_cfg = dict()
        val_evaluator = dict(type='ToyMSE')
        test_dataloader = val_dataloader
        '''))
    return config


def test_train_without_validation_data_skips_validation_and_finishes(tools, tmp_path, toy_config, capsys):
    missing = tmp_path / 'no_such_data'
    _with_val_data(toy_config, missing)
    log_to_captured_stdout('skip_validation_console')
    tools.train.main([str(toy_config), '--work-dir', str(tmp_path / 'run'),
                      '--cfg-options', 'experiment_name=skip_validation'])
    out = capsys.readouterr().out
    assert out.count('validation skipped') == 1
    assert str(missing) in out and 'val_dataloader.dataset.data_root' in out
    assert (tmp_path / 'run' / 'epoch_1.pth').is_file()


def test_test_without_evaluation_data_names_the_setting(tools, tmp_path, toy_config):
    missing = tmp_path / 'no_such_data'
    _with_val_data(toy_config, missing)
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': {}}, checkpoint)
    with pytest.raises(SystemExit) as stop:
        tools.test.main([str(toy_config), str(checkpoint)])
    message = exit_message(stop)
    assert str(missing) in message and 'test_dataloader.dataset.data_root' in message
    assert '\n' not in message


@pytest.mark.parametrize('layout', ['empty', 'no samples', 'not a directory'])
def test_broken_evaluation_data_is_an_error_not_a_skip(tools, tmp_path, toy_config, layout):
    root = tmp_path / 'broken_data'
    if layout == 'not a directory':
        root.write_text('a file')
    else:
        root.mkdir()
        if layout == 'no samples':
            (root / 'README').write_text('points go in *.pt files')
    _with_val_data(toy_config, root)
    with pytest.raises(SystemExit) as stop:
        tools.train.main([str(toy_config), '--work-dir', str(tmp_path / 'run')])
    message = exit_message(stop)
    assert str(root) in message and 'val_dataloader.dataset.data_root' in message
    assert 'skipped' not in message
    assert not (tmp_path / 'run' / 'epoch_1.pth').exists()


def test_existing_evaluation_data_is_used(tools, tmp_path, toy_config, capsys):
    root = tmp_path / 'points'
    root.mkdir()
    for index in range(4):
        torch.save(torch.full((2,), index / 4.0), root / f'{index}.pt')
    _with_val_data(toy_config, root)
    tools.train.main([str(toy_config), '--work-dir', str(tmp_path / 'run'),
                      '--cfg-options', 'experiment_name=with_validation'])
    out = capsys.readouterr().out
    assert 'validation skipped' not in out
    assert 'mse' in out  # the validation metric was logged


TEACHER = re.compile(r'(teacher|_digits(_det-init|-fg)?)\.py$')  # not MimiQ configs


def _is_benchmark_recipe(path):
    """A table driver's recipe (it names its ``benchmark``), not a MimiQ config."""
    with open(path) as f:
        return any(line.startswith('benchmark = ') for line in f)


SHIPPED_CONFIGS = sorted(osp.relpath(path, REPO_ROOT) for path in glob.glob(osp.join(REPO_ROOT, 'configs', '*', '*.py'))
                         if osp.basename(osp.dirname(path)) not in ('_base_', 'cifar10')  # cifar10: no validation
                         and not TEACHER.search(osp.basename(path)) and not _is_benchmark_recipe(path))


@pytest.mark.slow
@pytest.mark.parametrize('config', SHIPPED_CONFIGS)
def test_every_mimiq_config_skips_validation_without_its_data(config, tmp_path, monkeypatch):
    """The helper tools/train.py applies, on each shipped MimiQ config, run where no data is."""
    pytest.importorskip('mmpretrain')
    from mmengine.config import Config
    from mimiq_mm.engine.evaluation_data import skip_validation_without_data
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    assert 'DataFreeQATLoop' in str(cfg.get('train_cfg', {}).get('type'))
    monkeypatch.chdir(tmp_path)  # the configs' relative data roots (data/imagenet ...) do not exist here
    evaluator_reads_annotations = 'ann_file' in cfg.val_evaluator  # COCO's metric
    message = skip_validation_without_data(cfg)
    assert message is not None and 'validation skipped' in message
    assert 'val_dataloader.dataset.data_root' in message
    assert ('val_evaluator.ann_file' in message) == evaluator_reads_annotations
    assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.val_evaluator is None


# ---------------------------------------------------------------- end to end on the toy config


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_dist_train_runs_two_processes(tmp_path, toy_config):
    """Two ranks; on a machine without CUDA this goes through the automatic gloo fallback."""
    work_dir = tmp_path / 'dist_run'
    result = run_tool(['bash', DIST_TRAIN, str(toy_config), '2', '--work-dir', str(work_dir)],
                      cwd=tmp_path, extra_pythonpath=str(tmp_path),
                      extra_env={'PYTHON': sys.executable, 'PORT': str(_free_port())})
    # Without the barrier of release_distributed, rank 1 tore gloo down while rank 0 still wrote
    # the checkpoint and aborted ('terminate called without an active exception') 2 runs in 12.
    assert 'terminate called' not in output_of(result)
    assert result.returncode == 0, output_of(result)[-4000:]
    assert (work_dir / 'epoch_1.pth').is_file()
    if not torch.cuda.is_available():
        assert 'uses the gloo backend' in output_of(result)


def test_release_distributed_frees_the_runners_model_before_the_process_group():
    """A DDP wrapper freed only at interpreter shutdown takes its gloo process group with it, and a
    rank could abort there ('terminate called without an active exception', 1 run in 3 under load)."""
    import weakref
    from mimiq_mm.apis.runner import release_distributed
    model = torch.nn.Linear(2, 2)
    runner = SimpleNamespace(model=model)
    alive = weakref.ref(model)
    del model
    release_distributed(runner)
    assert alive() is None and runner.model is None
