"""Optimising a batch of images from Gaussian noise against the frozen full-precision teacher."""
import time
from contextlib import nullcontext
from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..attention import AttentionRecorder, install_attention_capture
from ..losses import InterHeadCoherencyLoss, PatchSimilarityEntropyLoss, TotalVariationLoss
from .augment import SynthesisAugment
from .methods import check_method


class NonFiniteSynthesisError(RuntimeError):
    pass


class ImageSynthesizer:
    """Makes synthetic images with L_G = L_IHC + α·L_CL + β·L_TV (or a baseline's losses).

    Args:
        teacher (nn.Module): the full-precision task model, frozen (eval mode, no grads).
        task: a :class:`mimiq_mm.models.tasks.TaskAdapter` for the teacher.
        image_size (tuple[int, int]): (H, W) of the images.
        pixel_mean, pixel_std (Sequence[float]): the teacher's input normalisation, 0-255 units.
        method (str): 'mimiq', 'base', 'psaq' or 'noise'.
        steps (int): optimisation steps per batch (paper: 2000).
        lr (float): Adam learning rate (paper: 0.1), ``betas`` (0.9, 0.999), cosine decay.
        alpha, beta (float): weights of L_CL and L_TV (paper: 1, 2.5e-5).
        ihc (dict): options of :class:`InterHeadCoherencyLoss` (its ``loss_weight`` too).
        psaq (dict): options of :class:`PatchSimilarityEntropyLoss`.
        tv (dict): options of :class:`TotalVariationLoss`.
        augment (dict | None): options of :class:`SynthesisAugment`; None disables it.
        prior (callable | None): ``prior(images, targets) -> L_CL`` from a separate model (e.g.
            :class:`mimiq_mm.models.dense.ClassifierPrior`); None uses ``task.prior_loss`` on the
            teacher's own outputs. With a separate prior the teacher runs only
            ``task.forward_backbone`` (for the attention terms) when the task has one.
        amp_dtype (str | None): 'bf16' or 'fp16' to run the teacher under autocast (CUDA).
        max_retries (int): how often a batch that turns non-finite is redrawn.
        log_interval (int): steps between progress lines.
    """

    def __init__(self, teacher: nn.Module, task, image_size, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 method='mimiq', steps=2000, lr=0.1, betas=(0.9, 0.999), cosine=True, alpha=1.0, beta=2.5e-5,
                 ihc: Optional[dict] = None, psaq: Optional[dict] = None, tv: Optional[dict] = None,
                 augment: Optional[dict] = None, amp_dtype=None, max_retries=3, log_interval=200, prior=None):
        self.recipe = check_method(method)
        self.method = method
        teacher.eval()  # (mmseg ViT.train() returns None, so no chaining)
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if self.recipe['ihc'] or self.recipe['psaq']:
            install_attention_capture(self.teacher)
        self.task = task
        self.prior = prior
        self.image_size = tuple(image_size)
        self.steps, self.lr, self.betas, self.cosine = int(steps), lr, tuple(betas), cosine
        self.alpha, self.beta = alpha, beta
        self.ihc_loss = InterHeadCoherencyLoss(**(ihc or {})) if self.recipe['ihc'] else None
        self.psaq_loss = PatchSimilarityEntropyLoss(**(psaq or {})) if self.recipe['psaq'] else None
        self.tv_loss = TotalVariationLoss(**(tv or {}))
        self.augment = SynthesisAugment(**augment) if augment is not None else SynthesisAugment()
        self.amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, None: None}[amp_dtype]
        self.max_retries = max_retries
        self.log_interval = log_interval
        mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pixel_mean, self.pixel_std = mean, std

    @property
    def device(self):
        p = next(self.teacher.parameters(), None)
        return p.device if p is not None else torch.device('cpu')

    def valid_range(self):
        """(low, high) of normalised pixels, each (1, 3, 1, 1)."""
        low = (0.0 - self.pixel_mean) / self.pixel_std
        high = (255.0 - self.pixel_mean) / self.pixel_std
        return low.to(self.device), high.to(self.device)

    def to_pixels(self, images):
        """Normalised (B, 3, H, W) -> uint8 (B, 3, H, W) RGB."""
        x = images.detach().float().cpu() * self.pixel_std + self.pixel_mean
        return x.round().clamp(0, 255).to(torch.uint8)

    def from_pixels(self, pixels):
        """uint8 (B, 3, H, W) -> normalised float on the teacher's device."""
        x = (pixels.float() - self.pixel_mean) / self.pixel_std
        return x.to(self.device)

    def loss_terms(self, images, targets, generator=None, progress=0.0, noise_generator=None):
        """The synthesis losses of one step on normalised ``images`` (B, 3, H, W)."""
        x = self.augment(images, progress, generator, noise_generator)
        fields = ('scores',) if self.ihc_loss is not None else ()
        fields += ('outputs',) if self.psaq_loss is not None else ()
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        # Tasks may offer a lighter forward for synthesis: the prior's outputs only
        # (``forward_prior``), or just the backbone when a separate prior model gives L_CL.
        if self.prior is not None:
            forward = getattr(self.task, 'forward_backbone', self.task.forward_tensor)
        else:
            forward = getattr(self.task, 'forward_prior', self.task.forward_tensor)
        with autocast:
            if fields:
                with AttentionRecorder(self.teacher, fields=fields) as rec:
                    outputs = forward(self.teacher, x)
                records = rec.records
            else:
                outputs = forward(self.teacher, x)
                records = []
            prior = self.prior(x, targets) if self.prior is not None else None
        terms = {}
        if self.ihc_loss is not None:
            terms['ihc'] = self.ihc_loss(records)
        if self.psaq_loss is not None:
            terms['psaq'] = self.psaq_loss(records)
        if prior is None:
            prior = self.task.prior_loss(outputs.float() if torch.is_tensor(outputs) else outputs, targets)
        terms['cl'] = self.alpha * prior.float()
        terms['tv'] = self.beta * self.tv_loss(images)
        return terms

    def synthesize(self, targets: torch.Tensor, seed: int, log_prefix=''):
        """Make one batch of images for ``targets`` (B,) from seed ``seed``.

        Returns:
            (Tensor, dict): normalised images (B, 3, H, W) on the teacher's device and the final
            values of the loss terms. A batch that turns non-finite is redrawn (logged) up to
            ``max_retries`` times with a derived seed.
        """
        for attempt in range(self.max_retries + 1):
            try:
                return self._synthesize_once(targets, seed + attempt * 1_000_003, log_prefix)
            except NonFiniteSynthesisError as err:
                print_log(f'{log_prefix}batch turned non-finite ({err}); redrawing it '
                          f'(attempt {attempt + 1}/{self.max_retries})', logger='current', level=30)
        raise NonFiniteSynthesisError(
            f'synthesis kept producing non-finite values after {self.max_retries} redraws; lower '
            'synthesis.lr or the loss weights')

    def _synthesize_once(self, targets, seed, log_prefix):
        generator = torch.Generator().manual_seed(int(seed))
        noise_generator = torch.Generator(device=self.device).manual_seed(int(seed))
        b = targets.shape[0]
        h, w = self.image_size
        images = torch.randn(b, 3, h, w, generator=generator).to(self.device)
        low, high = self.valid_range()
        images = torch.maximum(torch.minimum(images, high), low)
        targets = targets.to(self.device)
        if not self.recipe['optimise']:
            return images, {}
        images.requires_grad_(True)
        optimizer = torch.optim.Adam([images], lr=self.lr, betas=self.betas)
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.steps, 1))
                     if self.cosine else None)
        start = time.time()
        terms = {}
        for step in range(self.steps):
            optimizer.zero_grad(set_to_none=True)
            terms = self.loss_terms(images, targets, generator, progress=step / max(self.steps, 1),
                                    noise_generator=noise_generator)
            total = sum(terms.values())
            if not torch.isfinite(total):
                raise NonFiniteSynthesisError(f'loss {total.item()} at step {step}')
            total.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            with torch.no_grad():
                images.copy_(torch.maximum(torch.minimum(images, high), low))
            if self.log_interval and ((step + 1) % self.log_interval == 0 or step + 1 == self.steps):
                rate = (step + 1) / max(time.time() - start, 1e-9)
                eta = (self.steps - step - 1) / rate
                parts = ', '.join(f'{k}: {v.item():.4f}' for k, v in terms.items())
                print_log(f'{log_prefix}step {step + 1}/{self.steps}  loss {total.item():.4f} ({parts})  '
                          f'{rate * b:.1f} img-steps/s  batch eta {_fmt_seconds(eta)}', logger='current')
        if not torch.isfinite(images).all():
            raise NonFiniteSynthesisError('images contain non-finite values')
        return images.detach(), {k: float(v.item()) for k, v in terms.items()}


def _fmt_seconds(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}:{m:02d}:{s:02d}'

