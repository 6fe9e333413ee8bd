"""Hooks of the data-free QAT run."""
import os
from dataclasses import asdict

import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..registry import HOOKS
from ..utils.wrappers import unwrap_model


@HOOKS.register_module()
class StudentExportHook(Hook):
    """After training, save the quantized student alone, with the task model's own keys.

    The file loads into the same config with ``tools/test.py CONFIG FILE`` (the distiller routes
    plain task-model keys to its student) and carries the quantization settings in ``meta``.

    Args:
        filename (str): name inside the work dir; ``{w}``/``{a}`` are replaced by the bit-widths.
    """
    priority = 'VERY_LOW'

    def __init__(self, filename='student_w{w}a{a}.pth'):
        self.filename = filename

    @master_only
    def after_train(self, runner):
        model = unwrap_model(runner.model)
        cfg = model.quant_cfg
        path = os.path.join(runner.work_dir, self.filename.format(w=cfg.w_bits, a=cfg.a_bits))
        meta = dict(quant=asdict(cfg), teacher_checkpoint=model.teacher_checkpoint, iter=runner.iter,
                    task=model.task.name, mimiq_mm_student=True)
        torch.save(dict(state_dict=model.student_state_dict(), meta=meta), path)
        print_log(f'saved the quantized student to {path}', logger='current')


@HOOKS.register_module()
class BestStudentHook(Hook):
    """Keep the student that agrees best with the teacher on held-out synthetic images, the
    calibrated (post-training quantization) student included, and end training with it.

    Without real data, the only view of the student's quality is how closely it reproduces the
    teacher: here the task's output distillation loss (KL of the logits for classification) on
    the ``train_cfg.holdout_images`` synthetic images the student never trained on, measured
    before the first iteration and every ``interval`` iterations. So a fine-tuning run that
    drifts ends no worse, by this criterion, than its starting point. (Resumed runs track the
    best from the resume point on.)

    Args:
        interval (int): iterations between evaluations (and at the last iteration).
        batch_size (int): held-out images per forward pass.
    """
    priority = 'LOW'  # after the checkpoint hook, before StudentExportHook (VERY_LOW)

    def __init__(self, interval=50, batch_size=64):
        self.interval, self.batch_size = int(interval), int(batch_size)
        self.history = []
        self.best = None  # (criterion, iteration, student state)

    def before_train(self, runner):
        if getattr(runner.train_loop, 'holdout_dataset', None) is None:
            raise ValueError('BestStudentHook needs held-out synthetic images: set train_cfg.holdout_images '
                             '(e.g. 64) of the DataFreeQATLoop')
        self._evaluate(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if (runner.iter + 1) % self.interval == 0 or runner.iter + 1 == runner.train_loop.max_iters:
            self._evaluate(runner, runner.iter + 1)

    def after_train(self, runner):
        model = unwrap_model(runner.model)
        criterion, iteration, state = self.best
        if iteration != runner.iter:
            model.student.load_state_dict(state)
        print_log(f'BestStudentHook: kept the student of iteration {iteration} (held-out KD {criterion:.5f}; '
                  f'measured at {[it for it, _ in self.history]})', logger='current')
        runner.message_hub.update_info('best_student_iter', iteration)

    @torch.no_grad()
    def _evaluate(self, runner, iteration):
        model = unwrap_model(runner.model)
        criterion = model.holdout_distance(runner.train_loop.holdout_dataset, self.batch_size)
        self.history.append((iteration, criterion))
        runner.message_hub.update_scalar('holdout/kd', criterion)
        if self.best is None or criterion < self.best[0]:
            state = {k: v.detach().clone() for k, v in model.student.state_dict().items()}
            self.best = (criterion, iteration, state)
