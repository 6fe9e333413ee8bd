"""A fine-tuning run that diverges ends with the student it started from, not a broken one."""
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..utils.wrappers import unwrap_model


class DivergenceGuardHook(Hook):
    """Keeps the calibrated student (the post-training quantization state) in memory when
    fine-tuning starts; if a fine-tuning loss turns non-finite (an lr too high for LSQ's steps,
    an fp16 overflow), training stops and the student goes back to that state, so the run
    exports the calibrated student instead of NaN weights, and says so.

    The loss is checked on the device at every iteration and read every ``interval`` iterations
    and at the end (no host sync per step on a GPU). The loop registers this hook; it costs one
    copy of the student's state.
    """
    priority = 'ABOVE_NORMAL'  # before checkpoints and the export read the student

    def __init__(self, interval=20):
        self.interval = int(interval)
        self.start_state = None
        self.finite = None

    def before_train(self, runner):
        student = unwrap_model(runner.model).student
        self.start_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        self.finite = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        for value in (outputs or {}).values():
            if torch.is_tensor(value):
                ok = torch.isfinite(value.detach()).all()
                self.finite = ok if self.finite is None else self.finite & ok
        if (runner.iter + 1) % self.interval == 0:
            self._check(runner, runner.iter + 1)

    def after_train(self, runner):
        self._check(runner, runner.iter)

    def _check(self, runner, iteration):
        if self.finite is None or bool(self.finite) or self.start_state is None:
            return
        unwrap_model(runner.model).student.load_state_dict(self.start_state)
        self.start_state = None  # restored once
        runner.train_loop.stop_training = True
        print_log(f'fine-tuning diverged (a non-finite loss by iteration {iteration}): stopped, and the student is '
                  'back to its calibrated state (post-training quantization); lower the learning rate '
                  '(optim_wrapper.optimizer.lr) to fine-tune', logger='current', level=40)
        runner.message_hub.update_info('fine_tuning_diverged_by', iteration)
