"""One synthesis step and one fine-tuning step of the real code paths, as callables to time.

* :class:`SynthesisStep` runs one :meth:`SynthesisBatch.step` of ``ImageSynthesizer``: zero the
  gradient, ``ImageSynthesizer.loss_terms`` (augment, teacher forward under the attention
  recorder, L_IHC / PSAQ / L_CL / L_TV), backward, Adam and schedule steps, and the clamp to
  the valid pixel range.
* :class:`DistillStep` runs one ``QuantDistiller.train_step`` (synthetic-batch preprocessing,
  teacher forward without gradients, student forward and backward, L_KL [+ γ·L_HAD], SGD step)
  through an mmengine optim wrapper, as ``DataFreeQATLoop`` does.
* :class:`GeneratorStep` runs one iteration of a baseline that changes its data while the
  student learns (a generator or sample update, then the :class:`DistillStep`).
"""
import contextlib
import time

import torch

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
AMP_NAMES = {'fp32': None, 'bf16': 'bf16', 'fp16': 'fp16'}


class SynthesisStep:
    """One optimisation step of a batch of synthetic images: :meth:`SynthesisBatch.step`, the
    very step ``ImageSynthesizer.synthesize`` repeats (the periodic finiteness check aside).

    Args:
        synthesizer (ImageSynthesizer): built for the method to time.
        batch (int): images in the batch.
        num_classes (int): target classes are drawn from ``range(num_classes)``.
        seed (int): seed of the initial noise, targets and augmentation.
    """

    def __init__(self, synthesizer, batch, num_classes, seed=0):
        targets = torch.randint(int(num_classes), (batch,), generator=torch.Generator().manual_seed(int(seed)))
        self.batch = synthesizer.start(targets, seed)
        self.last_terms = {}

    def __call__(self):
        self.last_terms = self.batch.step()
        return self.last_terms


class DistillStep:
    """One fine-tuning step of a :class:`QuantDistiller` on a synthetic batch.

    Args:
        distiller (QuantDistiller): on its device; its ``had_loss`` is set to ``had_loss`` for
            each call (None gives the plain KD step), so one model serves both kinds.
        batch (int): images in the batch.
        image_size (tuple[int, int]): (H, W).
        precision (str): 'fp32', 'bf16' or 'fp16'. On CUDA, bf16/fp16 use mmengine's
            ``AmpOptimWrapper`` (fp16 with its dynamic loss scaling); on CPU, ``torch.autocast``.
        had_loss (nn.Module | None): L_HAD module or None.
        lr (float): SGD learning rate (paper recipe: Nesterov momentum 0.9).
        seed (int): seed of the synthetic pixels.
    """

    def __init__(self, distiller, batch, image_size, precision='fp32', had_loss=None, lr=1e-3, seed=0):
        from mmengine.optim import AmpOptimWrapper, OptimWrapper
        self.distiller = distiller
        self.had_loss = had_loss
        device = next(distiller.student.parameters()).device
        params = [p for p in distiller.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
        dtype = PRECISIONS[precision]
        self.autocast = contextlib.nullcontext
        if dtype is not None and device.type == 'cuda':
            self.optim_wrapper = AmpOptimWrapper(optimizer=optimizer, dtype=dtype)
        else:
            self.optim_wrapper = OptimWrapper(optimizer=optimizer)
            if dtype is not None:
                self.autocast = lambda: torch.autocast(device.type, dtype=dtype)
        g = torch.Generator().manual_seed(int(seed))
        h, w = image_size
        pixels = torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8)
        self.data = dict(pixels=pixels.to(device), label=torch.randint(10, (batch,), generator=g).to(device))
        self.last_losses = {}

    def __call__(self):
        self.distiller.had_loss = self.had_loss
        self.distiller.train()
        with self.autocast():
            self.last_losses = self.distiller.train_step(self.data, self.optim_wrapper)
        return self.last_losses


class GeneratorStep:
    """One fine-tuning iteration of a method whose data changes while the student learns (GDFQ's
    generator update, PSAQ-ViT V2's sample update), as ``DataFreeQATLoop.run_iter`` runs it: the
    generator's ``step`` makes the student's batch, then a :class:`DistillStep` trains on it.
    The two parts are timed apart at every call (``splits``: ms of each), to say where an
    iteration's time goes.

    Args:
        generator: a built ``train_cfg.generator`` component (:mod:`mimiq_mm.generators`).
        distill (DistillStep): the student's step; its batch is replaced by the generator's.
        batch (int): labels (and, for a sample-update method, images) per iteration.
        image_size (tuple[int, int]): (H, W).
        num_classes (int): labels are drawn from ``range(num_classes)``.
        seed (int): seed of the labels and the initial pixels.
        timer (str): 'wall' or 'process' (this process's CPU time), as the whole call is timed.
    """

    def __init__(self, generator, distill, batch, image_size, num_classes, seed=0, timer='wall'):
        self.clock = time.process_time if timer == 'process' else time.perf_counter
        self.generator, self.distill = generator, distill
        distiller = distill.distiller
        generator.setup(distiller, tuple(image_size), max_iters=1000)
        g = torch.Generator().manual_seed(int(seed))
        self.data = dict(label=torch.randint(int(num_classes), (batch,), generator=g))
        if generator.data_source == 'synthetic':
            self.data['pixels'] = distill.data['pixels']
        self.cuda = torch.device(generator.device).type == 'cuda'
        self.last_losses, self.splits = {}, []

    def now(self):
        if self.cuda:  # the parts are timed apart: wait for their kernels
            torch.cuda.synchronize()
        return self.clock()

    def __call__(self):
        start = self.now()
        batch, log = self.generator.step(self.distill.distiller, dict(self.data))
        middle = self.now()
        self.distill.data = batch
        self.last_losses = dict(self.distill(), **log)
        self.splits.append(dict(generator_ms=(middle - start) * 1e3, student_ms=(self.now() - middle) * 1e3))
        return self.last_losses
