"""What :class:`mimiq_mm.engine.DataFreeQATLoop` asks of ``train_cfg.generator``.

A data generator makes or changes the batch the student trains on at every fine-tuning
iteration, against the frozen teacher (and, for some methods, the student being trained): GDFQ,
Qimera and AdaDFQ train a generator network, PSAQ-ViT V2 updates the synthetic samples
themselves. The loop orders the work; the generator holds the method.
"""
from contextlib import contextmanager
from typing import Optional

import torch
from mmengine.dist import all_reduce, get_world_size

from ..synthesis.priors import build_prior


class DataGenerator:
    """The interface (and shared helpers) of ``train_cfg.generator`` components.

    Attributes:
        data_source (str): what the loop's dataloader yields: 'generator' (class labels only,
            :class:`mimiq_mm.datasets.ClassLabelDataset`; the generator makes the images) or
            'synthetic' (batches of a synthetic set, which the generator updates).
        reads_student (bool): whether the warm-up runs the quantized student (AdaDFQ's loss): the
            loop then calibrates the student before the warm-up too.
    """
    data_source = 'generator'
    reads_student = False

    def num_classes(self, distiller) -> int:
        """Classes the labels of the loop's dataloader range over."""
        return distiller.task.num_classes(distiller.teacher)

    def setup(self, distiller, image_size, max_iters: int, dataset=None) -> None:
        """Build what the method needs for ``distiller`` (on its device) before fine-tuning:
        images of ``image_size`` (H, W), ``max_iters`` fine-tuning iterations, the loop's
        ``dataset``."""
        raise NotImplementedError

    def warmup(self, distiller, batch_size: int) -> None:
        """Work before the student is calibrated and trained (GDFQ's generator warm-up)."""

    def generate(self, distiller, data_batch: dict) -> dict:
        """The student's batch for ``data_batch`` without any update (calibration)."""
        raise NotImplementedError

    def step(self, distiller, data_batch: dict):
        """One update of the generator (or the samples) and the student's batch of this
        iteration: ``(batch, log)``, ``log`` a dict of scalars to log."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def teacher_device(distiller):
    p = next(distiller.teacher.parameters(), None)
    return p.device if p is not None else torch.device('cpu')


def class_prior(prior_cfg, distiller):
    """The synthesis prior of ``prior_cfg`` (None: the teacher's own head, as MimiQ's synthesis,
    see :mod:`mimiq_mm.synthesis.priors`), for ``distiller``'s input normalisation."""
    pre = distiller.data_preprocessor
    return build_prior(prior_cfg, pre.pixel_mean.flatten().tolist(), pre.pixel_std.flatten().tolist(),
                       device=teacher_device(distiller))


def prior_loss(distiller, prior, images, labels):
    """L_CL of ``images`` towards ``labels`` (B,): the teacher's task prior (classifier logits,
    a segmentor's decode logits against each image's class), or ``prior``'s when given."""
    if prior is not None:
        return prior(images, labels)
    outputs = distiller.task.forward_prior(distiller.teacher, images)
    return distiller.task.prior_loss(outputs, labels)


@contextmanager
def student_in_eval(distiller):
    """The student in eval mode within the block (no activation-range updates, dropout off), as
    the baselines' released code runs its quantized model while the generator learns."""
    student = distiller.student
    was_training = student.training
    student.eval()
    try:
        yield student
    finally:
        student.train(was_training)


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over the ranks of a distributed run, so that every
    rank's copy of a generator takes the same step."""
    if get_world_size() > 1:
        for p in parameters:
            if p.grad is not None:
                all_reduce(p.grad, op='mean')


def check_classification(distiller, method: str, outputs: Optional[torch.Tensor] = None):
    """Methods whose losses read class logits (Qimera's soft labels, AdaDFQ's logit differences)."""
    if distiller.task.name != 'classification':
        raise ValueError(f'{method} works on classifiers (its losses read the class logits); for '
                         f'{distiller.task.name} models use GDFQGenerator or PSAQV2SampleStep')
