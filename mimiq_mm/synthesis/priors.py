"""Synthesis priors L_CL that come from a model other than the teacher being quantized.

``train_cfg.synthesis.prior``:

* None / ``'head'`` / ``dict(type='head')`` (default): the teacher's own output through its task
  adapter's ``prior_loss`` (classifier logits, a segmentor's decode head, a detector's RoI
  classifier). It needs nothing but the checkpoint being quantized and speaks its label space.
* ``dict(type='classifier', model=..., checkpoint=..., image_size=224)``: an ImageNet classifier
  with the same backbone architecture (the pretrained model a dense model started from), run on
  the synthetic images resized to its input size (:class:`ClassifierPrior`). Its 1000-way prior
  is the paper's original L_CL; it costs a second model and checkpoint.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.utils import to_2tuple

from ..losses.ssim import upcast_half
from ..tasks import ClassifierTask


class ClassifierPrior(nn.Module):
    """L_CL from an ImageNet classifier instead of the dense model's head.

    The classifier (an mmpretrain model config, typically the ImageNet model whose backbone the
    dense model was initialised from) sees the synthetic images resized to ``image_size`` and
    renormalised with its own mean/std; the loss is the cross entropy of its logits towards the
    target labels, which then range over its classes.

    Args:
        model (dict | nn.Module): mmpretrain classifier config (default scope ``mmpretrain``)
            or a built module.
        checkpoint (str | None): its weights (path or URL).
        image_size (int | tuple | None): input size of the classifier (None: the synthesis size).
        pixel_mean, pixel_std: normalisation of the images handed in (the dense teacher's).
        num_classes (int | None): classes of the classifier (default: read from its head).
    """

    def __init__(self, model, checkpoint=None, image_size=224, pixel_mean=None, pixel_std=None, num_classes=None):
        super().__init__()
        if isinstance(model, dict):
            from mmengine.registry import MODELS
            cfg = copy.deepcopy(dict(model))
            cfg.setdefault('_scope_', 'mmpretrain')
            model = MODELS.build(cfg)
        if checkpoint:
            from mmengine.runner import load_checkpoint
            load_checkpoint(model, checkpoint, map_location='cpu', strict=False, logger='current')
        else:
            print_log('ClassifierPrior: no checkpoint given, the classifier prior is randomly initialised',
                      logger='current', level=30)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.task = ClassifierTask()
        self.image_size = None if image_size is None else tuple(to_2tuple(image_size))
        pre = getattr(model, 'data_preprocessor', None)
        own_mean = getattr(pre, 'mean', None)
        own_std = getattr(pre, 'std', None)
        in_mean = torch.as_tensor(pixel_mean if pixel_mean is not None else [0.] * 3, dtype=torch.float32)
        in_std = torch.as_tensor(pixel_std if pixel_std is not None else [1.] * 3, dtype=torch.float32)
        self.register_buffer('in_mean', in_mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer('in_std', in_std.view(1, -1, 1, 1), persistent=False)
        self.register_buffer('own_mean', (own_mean if own_mean is not None else in_mean).float().view(1, -1, 1, 1)
                             .clone(), persistent=False)
        self.register_buffer('own_std', (own_std if own_std is not None else in_std).float().view(1, -1, 1, 1)
                             .clone(), persistent=False)
        self._num_classes = num_classes

    def train(self, mode=True):
        return super().train(False)  # always frozen

    def num_classes(self):
        return self._num_classes or self.task.num_classes(self.model)

    def forward(self, images, targets):
        """images: (B, 3, H, W) normalised like the dense teacher's inputs; targets (B,)."""
        x = (images * self.in_std + self.in_mean - self.own_mean) / self.own_std
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode='bilinear', align_corners=False)
        logits = self.task.forward_tensor(self.model, x)
        return self.task.prior_loss(upcast_half(logits), targets)


def build_prior(cfg, pixel_mean, pixel_std, device=None):
    """``train_cfg.synthesis.prior`` -> None (the task model's own head) or a :class:`ClassifierPrior`.

    Accepts None, ``'head'``, ``dict(type='head')``, ``dict(type='classifier', model=...,
    checkpoint=..., image_size=224, num_classes=None)`` or a built prior module.
    """
    if cfg is None or cfg == 'head':
        return None
    if isinstance(cfg, nn.Module):  # built already
        return cfg.to(device) if device is not None else cfg
    if not isinstance(cfg, dict):
        raise ValueError(f"synthesis.prior must be None, 'head' or a dict with type 'head'/'classifier', got {cfg!r}")
    cfg = dict(cfg)
    kind = cfg.pop('type', 'classifier')
    if kind == 'head':
        return None
    if kind != 'classifier':
        raise ValueError(f"synthesis.prior type must be 'head' or 'classifier', got {kind!r}")
    if 'model' not in cfg:
        raise ValueError('synthesis.prior of type "classifier" needs model=<mmpretrain classifier config>')
    prior = ClassifierPrior(pixel_mean=pixel_mean, pixel_std=pixel_std, **cfg)
    return prior.to(device) if device is not None else prior
