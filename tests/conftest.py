"""Shared test setup: keep CPU tests from oversubscribing small CI machines."""
import pytest
import torch

torch.set_num_threads(2)


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
