"""The distiller's data preprocessor: synthetic batches (uint8 pixels and labels) normalised and
augmented here, generated batches (normalised images from a generator or a sample update) passed
on as they are, real OpenMMLab batches handed to the task model's own preprocessor."""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor

from ..registry import MODELS
from .batch_augment import BatchAugment

SYNTHETIC_KEY = 'pixels'
GENERATED_KEY = 'images'


@MODELS.register_module()
class DistillDataPreprocessor(BaseDataPreprocessor):
    """Normalises synthetic batches itself and hands real (OpenMMLab-format) batches to the task
    model's own preprocessor.

    A synthetic batch is ``dict(pixels=uint8 (B, 3, H, W) RGB, label=(B,))``; it comes out as
    ``dict(inputs=normalised float (B, 3, H, W), data_samples=None)``, augmented when training.
    A generated batch, ``dict(images=normalised float (B, 3, H, W), targets=(B,) or (B, C))`` (what
    ``train_cfg.generator`` makes, :mod:`mimiq_mm.generators`), comes out as
    ``dict(inputs=images, data_samples=dict(targets=targets))``, not augmented: the generator-based
    methods train on their samples as generated.
    """

    def __init__(self, task_preprocessor: nn.Module, augment: Optional[dict] = None):
        super().__init__()
        self.task_preprocessor = task_preprocessor
        self.augment = BatchAugment(**augment) if augment is not None else None
        mean = getattr(task_preprocessor, 'mean', None)
        std = getattr(task_preprocessor, 'std', None)
        self.register_buffer('pixel_mean', (mean if mean is not None else torch.zeros(3, 1, 1)).float().clone(),
                             persistent=False)
        self.register_buffer('pixel_std', (std if std is not None else torch.full((3, 1, 1), 255.)).float().clone(),
                             persistent=False)

    def forward(self, data, training=False):
        if isinstance(data, dict) and GENERATED_KEY in data:
            targets = data.get('targets')
            return dict(inputs=data[GENERATED_KEY].to(self.pixel_mean.device).float(),
                        data_samples=None if targets is None else dict(targets=targets.to(self.pixel_mean.device)))
        if isinstance(data, dict) and SYNTHETIC_KEY in data:
            x = data[SYNTHETIC_KEY].to(self.pixel_mean.device).float() / 255.0
            if training and self.augment is not None:
                x = self.augment(x)
            x = (x * 255.0 - self.pixel_mean) / self.pixel_std
            return dict(inputs=x, data_samples=None)
        return self.task_preprocessor(data, training)
