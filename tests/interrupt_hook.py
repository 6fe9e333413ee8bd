"""A test-only hook that presses Ctrl-C (sends SIGINT to its own process) during a given training
iteration."""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class CtrlCDuringIterHook(Hook):
    def __init__(self, during_iter=3):
        self.during_iter = during_iter  # 1-based: the iteration that is running when Ctrl-C comes

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.during_iter:  # inside the iteration: not counted yet
            os.kill(os.getpid(), signal.SIGINT)
