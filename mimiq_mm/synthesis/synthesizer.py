"""Optimising a batch of images from Gaussian noise against the frozen full-precision teacher."""
import datetime
import time
from contextlib import nullcontext
from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.utils import to_2tuple

from ..attention import AttentionRecorder, install_attention_capture
from ..losses import InterHeadCoherencyLoss, PatchSimilarityEntropyLoss, TotalVariationLoss
from ..registry import SYNTHESIZERS
from .augment import SynthesisAugment
from .methods import check_method
from .priors import build_prior

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, None: None}
#: amp_dtype='auto' on a CPU with bf16 units: bf16 for teachers of at least this many GFLOPs an
#: image (FLOPs as torch counts them, 2 per multiply-add; measured on an AMD EPYC Zen 4 with AVX512-BF16,
#: a step in bf16 against float32: DeiT-S 8.5 GFLOPs 1.5-1.8x faster, DeiT-T 2.2 GFLOPs 1.3-1.5x, the
#: 0.06-GFLOP CIFAR-10 ViT 0.6-1.0x)
BF16_MIN_GFLOPS = 1.0
SCHEDULES = ('cosine', 'constant')


class NonFiniteSynthesisError(RuntimeError):
    pass


@SYNTHESIZERS.register_module()
class ImageSynthesizer:
    """Makes synthetic images with L_G = L_IHC + α·L_CL + β·L_TV (or a baseline's losses).

    Built from ``train_cfg.synthesis`` through :func:`mimiq_mm.synthesis.build_synthesizer`,
    which supplies the first five arguments from the model being quantized; the keyword
    arguments are the synthesis options, with the paper's values as defaults.

    Args:
        teacher (nn.Module): the full-precision task model, frozen (eval mode, no grads).
        task (TaskAdapter): the teacher's task adapter.
        image_size (int | tuple[int, int]): (H, W) of the images: the teacher's input size.
        pixel_mean, pixel_std (Sequence[float]): the teacher's input normalisation, 0-255 units.
        method (str): 'mimiq', 'base', 'psaq' or 'noise'.
        steps (int): optimisation steps per batch (paper: 2000).
        lr (float): Adam learning rate (paper: 0.1), ``betas`` (0.9, 0.999).
        schedule (str): 'cosine' (decay to 0 over ``steps``, the code lineage) or 'constant'
            (the paper names no schedule).
        alpha, beta (float): weights of L_CL and L_TV (paper: 1, 2.5e-5).
        ihc (dict | None): options of :class:`InterHeadCoherencyLoss` (``loss_weight`` too).
        psaq (dict | None): options of :class:`PatchSimilarityEntropyLoss`.
        tv (dict | None): options of :class:`TotalVariationLoss`.
        augment (dict | None): options of :class:`SynthesisAugment` (``dict()``: its defaults);
            None switches augmentation off.
        prior (dict | str | nn.Module | None): where L_CL comes from (see
            :mod:`mimiq_mm.synthesis.priors`): None / 'head' uses ``task.prior_loss`` on the
            teacher's own outputs; ``dict(type='classifier', ...)`` (or a built module
            ``prior(images, targets) -> L_CL``) a separate model, and the teacher then runs only
            ``task.forward_backbone`` (for the attention terms).
        num_classes (int | None): target classes (default: the prior's, else the teacher's).
        amp_dtype (str | None): 'bf16' or 'fp16' to run the teacher under autocast, None for
            float32, or 'auto' (default): float32 on GPUs and on CPUs without bf16 units; on a CPU
            with them (AVX512-BF16, AMX), bf16 when a step on the first batch runs at least
            :data:`BF16_MIN_SPEEDUP` times faster than in float32 (large models; on a tiny one
            float32 is faster), decided once and logged.
        max_retries (int): how often a batch that turns non-finite is redrawn.
        check_interval (int): steps between finiteness checks of the loss; each check waits for
            the device, so checking every step would stall a GPU.
        log_interval (int): steps between progress lines (0: none).
    """

    def __init__(self, teacher: nn.Module, task, image_size, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 method='mimiq', steps=2000, lr=0.1, betas=(0.9, 0.999), schedule='cosine', alpha=1.0, beta=2.5e-5,
                 ihc: Optional[dict] = None, psaq: Optional[dict] = None, tv: Optional[dict] = None,
                 augment: Optional[dict] = dict(), prior=None, num_classes=None,
                 amp_dtype='auto', max_retries=3, check_interval=50, log_interval=200):
        self.recipe = check_method(method)
        if schedule not in SCHEDULES:
            raise ValueError(f'synthesis schedule must be one of {SCHEDULES}, got {schedule!r}')
        if amp_dtype not in AMP_DTYPES and amp_dtype != 'auto':
            raise ValueError(f"synthesis amp_dtype must be 'auto', None, 'bf16' or 'fp16', got {amp_dtype!r}")
        self.method = method
        teacher.eval()  # (mmseg ViT.train() returns None, so no chaining)
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if self.recipe['ihc'] or self.recipe['psaq']:
            install_attention_capture(self.teacher)
        self.task = task
        self.prior = build_prior(prior, pixel_mean, pixel_std, device=self.device)
        self.image_size = tuple(to_2tuple(image_size))
        self.steps, self.lr, self.betas, self.schedule = int(steps), lr, tuple(betas), schedule
        self.alpha, self.beta = alpha, beta
        self.options = dict(ihc=ihc, psaq=psaq, tv=tv, augment=augment)
        if self.prior is not None:
            self.options['prior'] = prior if isinstance(prior, dict) else type(prior).__name__
        self.ihc_loss = InterHeadCoherencyLoss(**(ihc or {})) if self.recipe['ihc'] else None
        self.psaq_loss = PatchSimilarityEntropyLoss(**(psaq or {})) if self.recipe['psaq'] else None
        self.tv_loss = TotalVariationLoss(**(tv or {}))
        self.augment = SynthesisAugment(**augment) if augment is not None else None
        self._num_classes = num_classes
        self.amp_option = amp_dtype
        self._amp_dtype = amp_dtype if amp_dtype == 'auto' else AMP_DTYPES[amp_dtype]
        self.max_retries = max_retries
        self.check_interval = max(int(check_interval), 1)
        self.log_interval = log_interval
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1)

    # ------------------------------------------------------------------ description
    def settings(self) -> dict:
        """What defines the images this synthesizer makes (recorded in a set's manifest)."""
        settings = dict(method=self.method, image_size=list(self.image_size), steps=self.steps, lr=self.lr,
                        schedule=self.schedule, alpha=self.alpha, beta=self.beta, **self.options)
        if self.amp_option not in (None, 'auto'):  # the configured choice ('auto' resolves per machine)
            settings['amp_dtype'] = self.amp_option
        return settings

    def num_classes(self) -> int:
        if self._num_classes:
            return int(self._num_classes)
        if self.prior is not None:
            return self.prior.num_classes()
        return self.task.num_classes(self.teacher)

    def check_image_size(self):
        """Fail early, with the fix, if the teacher cannot take ``image_size``."""
        try:
            with torch.no_grad():
                self.task.forward_tensor(self.teacher, torch.zeros(1, 3, *self.image_size, device=self.device))
        except Exception as err:  # the backbone's own message says why
            raise ValueError(f'image size {self.image_size} does not fit the teacher ({type(err).__name__}: {err}); '
                             'set train_cfg.synthesis.image_size to a size it accepts (usually its training '
                             'size, a multiple of the patch size and window size)') from err

    # ------------------------------------------------------------------ pixels
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

    # ------------------------------------------------------------------ one step
    def loss_terms(self, images, targets, generator=None, progress=0.0, noise_generator=None):
        """The weighted synthesis losses of one step on normalised ``images`` (B, 3, H, W)."""
        x = self.augment(images, progress, generator, noise_generator) if self.augment is not None else images
        fields = ('scores',) if self.ihc_loss is not None else ()
        fields += ('outputs',) if self.psaq_loss is not None else ()
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        forward = self.task.forward_backbone if self.prior is not None else self.task.forward_prior
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

    def start(self, targets: torch.Tensor, seed: int) -> 'SynthesisBatch':
        """A batch for ``targets`` (B,) from Gaussian noise of seed ``seed``, ready to step."""
        return SynthesisBatch(self, targets, seed)

    # ------------------------------------------------------------------ one batch
    def synthesize(self, targets: torch.Tensor, seed: int, log_prefix=''):
        """Make one batch of images for ``targets`` (B,) from seed ``seed``.

        Returns:
            (Tensor, dict): normalised images (B, 3, H, W) on the teacher's device and the final
            values of the loss terms. A batch that turns non-finite is redrawn (logged) up to
            ``max_retries`` times with a derived seed.
        """
        for attempt in range(self.max_retries + 1):
            try:
                return self._optimise(self.start(targets, seed + attempt * 1_000_003), log_prefix)
            except NonFiniteSynthesisError as err:
                print_log(f'{log_prefix}batch turned non-finite ({err}); redrawing it '
                          f'(attempt {attempt + 1}/{self.max_retries})', logger='current', level=30)
        raise NonFiniteSynthesisError(
            f'synthesis kept producing non-finite values after {self.max_retries} redraws; lower '
            'synthesis.lr or the loss weights')

    @property
    def amp_dtype(self):
        """The autocast dtype of the teacher's forward passes (None: float32); 'auto' is resolved
        on first use (:meth:`choose_precision`)."""
        if self._amp_dtype == 'auto':
            self._amp_dtype = self.choose_precision()
        return self._amp_dtype

    def choose_precision(self):
        """The autocast dtype of ``amp_dtype='auto'`` (None: float32); see the class docstring."""
        if self.device.type != 'cpu' or not self.recipe['optimise']:
            return None
        from ..utils.environment import cpu_features
        if not cpu_features().get('bf16'):
            print_log('synthesis in float32 (this CPU has no bf16 units)', logger='current')
            return None
        gflops = self.teacher_gflops()
        choice = torch.bfloat16 if gflops >= BF16_MIN_GFLOPS else None
        print_log(f"synthesis in {'bf16 autocast' if choice else 'float32'}: this CPU has bf16 units and the "
                  f'teacher costs {gflops:.2f} GFLOPs an image (bf16 from {BF16_MIN_GFLOPS})', logger='current')
        return choice

    def teacher_gflops(self) -> float:
        """GFLOPs of one forward pass of the teacher on one image (torch's FLOP counter)."""
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            forward = self.task.forward_backbone if self.prior is not None else self.task.forward_prior
            forward(self.teacher, torch.zeros(1, 3, *self.image_size, device=self.device))
        return counter.get_total_flops() / 1e9

    def _optimise(self, batch, log_prefix):
        if not self.recipe['optimise']:
            return batch.images.detach(), {}
        start = time.time()
        terms = {}
        for step in range(self.steps):
            terms = batch.step()
            last = step + 1 == self.steps
            if last or (step + 1) % self.check_interval == 0:
                batch.raise_if_non_finite(step)
            if self.log_interval and ((step + 1) % self.log_interval == 0 or last):
                rate = (step + 1) / max(time.time() - start, 1e-9)
                parts = ', '.join(f'{k}: {v.item():.4f}' for k, v in terms.items())
                print_log(f'{log_prefix}step {step + 1}/{self.steps}  loss {sum(terms.values()).item():.4f} '
                          f'({parts})  {rate * len(batch.targets):.1f} img-steps/s  '
                          f'batch eta {datetime.timedelta(seconds=int((self.steps - step - 1) / rate))}', logger='current')
        if not torch.isfinite(batch.images).all():
            raise NonFiniteSynthesisError('images contain non-finite values')
        return batch.images.detach(), {k: float(v.item()) for k, v in terms.items()}


class SynthesisBatch:
    """The optimisation state of one batch: images, Adam, the learning-rate schedule, the random
    generators of the augmentation. :meth:`step` is one step of the real loop (what
    ``benchmarks.step_times`` times); it does not wait for the device.
    """

    def __init__(self, synthesizer: ImageSynthesizer, targets, seed):
        s = synthesizer
        self.synthesizer = s
        self.generator = torch.Generator().manual_seed(int(seed))
        self.noise_generator = torch.Generator(device=s.device).manual_seed(int(seed))
        h, w = s.image_size
        self.low, self.high = s.valid_range()
        images = torch.randn(len(targets), 3, h, w, generator=self.generator).to(s.device)
        self.images = torch.maximum(torch.minimum(images, self.high), self.low).requires_grad_(True)
        self.targets = targets.to(s.device)
        self.optimizer = torch.optim.Adam([self.images], lr=s.lr, betas=s.betas)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(s.steps, 1))
                          if s.schedule == 'cosine' else None)
        self.step_index = 0
        self.finite = torch.ones((), dtype=torch.bool, device=s.device)

    def step(self):
        """One optimisation step; returns the loss terms (tensors on the device)."""
        s = self.synthesizer
        self.optimizer.zero_grad(set_to_none=True)
        terms = s.loss_terms(self.images, self.targets, self.generator,
                             progress=(self.step_index % max(s.steps, 1)) / max(s.steps, 1),
                             noise_generator=self.noise_generator)
        total = sum(terms.values())
        self.finite &= torch.isfinite(total.detach())
        total.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        with torch.no_grad():
            self.images.copy_(torch.maximum(torch.minimum(self.images, self.high), self.low))
        self.step_index += 1
        return terms

    def raise_if_non_finite(self, step):
        if not bool(self.finite):
            raise NonFiniteSynthesisError(f'non-finite loss by step {step + 1}')
