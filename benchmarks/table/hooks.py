"""Hooks the benchmark driver registers on its runners: time limits that stop cleanly."""
import time

from mmengine.hooks import Hook
from mmengine.logging import print_log


class DeadlineHook(Hook):
    """Stop an iteration-based run at ``deadline`` (a ``time.time()`` value), saving a checkpoint
    to resume from; ``stopped`` tells the driver the unit is unfinished."""
    priority = 'LOWEST'

    def __init__(self, deadline):
        self.deadline = deadline
        self.stopped = False

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        loop = runner.train_loop
        if self.deadline and time.time() > self.deadline and runner.iter + 1 < loop.max_iters:
            runner.save_checkpoint(runner.work_dir, f'iter_{runner.iter + 1}.pth', by_epoch=False)
            loop.stop_training = True
            self.stopped = True
            print_log(f'time budget reached at iteration {runner.iter + 1}/{loop.max_iters}; checkpoint saved, the '
                      'unit resumes on the next invocation', logger='current', level=30)


class TrainingTimeGuardHook(Hook):
    """A cap on a teacher's training time that only guards: the schedule is fixed by the scale
    (so every machine trains the same teacher), and if an epoch ends past ``max_seconds`` the
    run stops there, with a warning, and ``cut_at_epoch`` records it so the report says so.

    ``deadline`` (the driver's time budget) stops it the same way, resumably.
    """
    priority = 'LOWEST'

    def __init__(self, max_seconds=None, deadline=None):
        self.max_seconds, self.deadline = max_seconds, deadline
        self.cut_at_epoch = None
        self.stopped_by_deadline = False

    def before_train(self, runner):
        self.start = time.time()

    def after_train_epoch(self, runner):
        loop = runner.train_loop
        done = runner.epoch + 1  # the loop counts the epoch after its hooks
        if done >= loop.max_epochs:
            return
        if self.max_seconds and time.time() - self.start > self.max_seconds:
            self.cut_at_epoch = done
            loop.stop_training = True
            print_log(f'TEACHER TRAINING CUT: {done}/{loop.max_epochs} epochs took longer than the cap of '
                      f'{self.max_seconds:.0f} s; this teacher differs from the scale\'s (the report marks it). '
                      'Raise --teacher-seconds or use a faster machine for comparable figures.',
                      logger='current', level=40)
        elif self.deadline and time.time() > self.deadline:
            self.stopped_by_deadline = True
            loop.stop_training = True
            print_log(f'time budget reached after epoch {done}; the teacher resumes on the next invocation',
                      logger='current', level=30)
