"""Hooks of the data-free QAT run."""
import os
from dataclasses import asdict

import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..registry import HOOKS


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
        model = getattr(runner.model, 'module', runner.model)
        cfg = model.quant_cfg
        path = os.path.join(runner.work_dir, self.filename.format(w=cfg.w_bits, a=cfg.a_bits))
        meta = dict(quant=asdict(cfg), teacher_checkpoint=model.teacher_checkpoint, iter=runner.iter,
                    task=model.task.name, mimiq_mm_student=True)
        torch.save(dict(state_dict=model.student_state_dict(), meta=meta), path)
        print_log(f'saved the quantized student to {path}', logger='current')
