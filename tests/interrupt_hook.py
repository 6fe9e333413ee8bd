"""A test-only hook that presses Ctrl-C after a given training iteration."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class KeyboardInterruptAfterIterHook(Hook):
    def __init__(self, after_iter=3):
        self.after_iter = after_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.after_iter:  # `after_iter` iterations are complete
            raise KeyboardInterrupt
