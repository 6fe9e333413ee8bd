"""Shared test setup: thread count, the `slow` tier, registry scope isolation.

Two tiers: `pytest -m "not slow"` runs the fast checks of behaviour (seconds each); the `slow`
tests run whole pipelines (training runs, benchmark drivers, subprocess launches). `make test`
and CI run both.
"""
import os

import pytest
import torch

# OMP_NUM_THREADS if set, else no more threads than the cores this process may use (2 on CI).
torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or max(1, min(2, len(os.sched_getaffinity(0))))))


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: a whole pipeline (training, drivers, subprocesses); run by make test')


@pytest.fixture
def work_dir(tmp_path):
    """A fresh directory for runner logs and checkpoints."""
    path = tmp_path / 'work_dir'
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def isolate_default_scope():
    """Tests that build mmpretrain/mmdet/mmseg models set mmengine's global default scope; restore
    it afterwards so the next test builds from the registry it names, whatever ran before."""
    try:
        from mmengine.registry import DefaultScope
    except ImportError:
        yield
        return
    saved = dict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)
