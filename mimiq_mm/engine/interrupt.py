"""Keeping a training run's progress when the user presses Ctrl-C."""
import os.path as osp
from contextlib import contextmanager

from mmengine.dist import is_main_process
from mmengine.logging import print_log


@contextmanager
def checkpoint_on_interrupt(runner):
    """On KeyboardInterrupt inside the block, save ``iter_<N>.pth`` and point ``last_checkpoint``
    at it (as mmengine's CheckpointHook does), so ``tools/train.py CONFIG --resume`` continues
    from there; then let the interrupt end the run."""
    try:
        yield
    except KeyboardInterrupt:
        if runner.iter > 0:
            filename = f'iter_{runner.iter}.pth'
            runner.save_checkpoint(runner.work_dir, filename, by_epoch=False)
            if is_main_process():
                with open(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
                    f.write(osp.join(runner.work_dir, filename))
            print_log(f'interrupted: saved {filename}; continue with tools/train.py CONFIG --resume',
                      logger='current', level=30)
        raise
