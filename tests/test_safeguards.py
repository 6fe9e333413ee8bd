"""What keeps the default recipe from ending below post-training quantization: a fine-tuning run
that diverges returns the calibrated student."""
import math

import pytest
import torch

pytest.importorskip('mmpretrain')

from test_best_student import run  # noqa: E402


def test_a_diverging_fine_tuning_ends_with_the_calibrated_student(tmp_path):
    """An absurd learning rate makes the losses non-finite: the run stops, logs why, and exports
    exactly the student that post-training quantization (the same calibration, no iteration) gives."""
    base = {'train_cfg.synthesis.method': 'base'}  # both runs' images alike, however L_IHC is computed
    diverged = run(tmp_path / 'diverged', holdout=0, hooks=[],
                   options={**base, 'optim_wrapper.optimizer.lr': 1e30, 'train_cfg.max_iters': 40})
    assert diverged.message_hub.get_info('fine_tuning_diverged_by') is not None
    assert diverged.iter < 40
    calibrated = run(tmp_path / 'ptq', holdout=0, hooks=[], options={**base, 'train_cfg.max_iters': 0})
    ours = torch.load(f'{diverged.work_dir}/student_w4a4.pth', weights_only=False)['state_dict']
    ptq = torch.load(f'{calibrated.work_dir}/student_w4a4.pth', weights_only=False)['state_dict']
    assert ours.keys() == ptq.keys()
    for key, value in ours.items():
        assert torch.equal(value, ptq[key]), key
    assert all(math.isfinite(v) for t in ours.values() if t.is_floating_point() for v in t.flatten().tolist())
