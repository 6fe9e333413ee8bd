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
