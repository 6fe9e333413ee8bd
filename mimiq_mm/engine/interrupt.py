"""Keeping a training run's progress when the user presses Ctrl-C."""
import os.path as osp
import signal
import threading
from contextlib import contextmanager

import torch
from mmengine.dist import all_reduce, is_distributed, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log


class InterruptCheckpointHook(Hook):
    """Ctrl-C during fine-tuning ends the run at the end of the running iteration, with a
    checkpoint of exactly the iterations done, so ``tools/train.py CONFIG --resume`` goes on with
    the next batch as if nothing had happened. A second Ctrl-C stops at once, without saving.

    The loop registers this hook and arms it around fine-tuning (:meth:`armed`): within it, SIGINT
    only sets a flag, which is read after every iteration (on every rank under DDP, so that all
    ranks stop after the same iteration).
    """
    priority = 'LOWEST'  # after every other hook has finished the iteration (checkpoints, logs)

    def __init__(self):
        self.requested = False

    @contextmanager
    def armed(self, runner):
        """Catch SIGINT as a request within the block (where the platform lets us: main thread)."""
        self.requested = False
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._request)
        try:
            yield self
        except KeyboardInterrupt:
            print_log(f'interrupted at once: nothing saved after iteration {runner.iter}; the last checkpoint '
                      'in the work directory is where --resume continues', logger='current', level=30)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _request(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        print_log('Ctrl-C: saving a checkpoint after the running iteration (Ctrl-C again: stop without saving)',
                  logger='current', level=30)

    def _requested_anywhere(self):
        if not is_distributed():
            return self.requested
        flag = torch.tensor([int(self.requested)])
        all_reduce(flag, op='max')
        return bool(flag.item())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self._requested_anywhere():
            return
        # Inside an iteration hook the loop has not counted this iteration yet: mmengine's
        # save_checkpoint(by_epoch=False) records runner.iter + 1, the iterations done, as
        # CheckpointHook does.
        filename = f'iter_{runner.iter + 1}.pth'
        runner.save_checkpoint(runner.work_dir, filename, by_epoch=False)
        if is_main_process():
            with open(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
                f.write(osp.join(runner.work_dir, filename))
        print_log(f'interrupted: saved {filename} after {runner.iter + 1} iterations; continue with '
                  'tools/train.py CONFIG --resume', logger='current', level=30)
        raise KeyboardInterrupt
