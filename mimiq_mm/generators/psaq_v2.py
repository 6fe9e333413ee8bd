"""PSAQ-ViT V2 (Li et al., "PSAQ-ViT V2: Toward Accurate and General Data-Free Quantization for
Vision Transformers", TNNLS 2023): the adaptive teacher-student strategy, as sample updates
inside the fine-tuning loop."""
import math

import torch

from ..attention import AttentionRecorder
from ..losses import PatchSimilarityEntropyLoss, TotalVariationLoss, output_divergence
from ..models.data_preprocessor import GENERATED_KEY, SYNTHETIC_KEY
from ..registry import GENERATORS
from .base import DataGenerator, student_in_eval, teacher_device


@GENERATORS.register_module()
class PSAQV2SampleStep(DataGenerator):
    """Synthetic samples and the quantized student evolve in turn: at every fine-tuning iteration
    the batch's images take ``steps`` gradient steps that make the teacher and the student
    *disagree* (raise KL(teacher ‖ student)) under PSAQ-ViT's patch-similarity prior, then the
    student learns to *agree* on the updated images (the distiller's KD).

    The samples start as a synthetic set of the loop (``train_cfg.synthesis``, PSAQ-ViT's
    synthesis: ``method='psaq'``) and the updated images replace them in the loaded set, so each
    sample keeps evolving every time it is drawn. Sample loss, minimised:

        L_x = ψ·L_PSE(x) + β·L_TV(x) + α·L_CL(x, y) − λ·KL(T(x) ‖ S(x))

    with L_PSE PSAQ-ViT's negative patch-similarity entropy of the teacher's blocks, L_TV the
    total variation, and α = 0 by default: V2 drops the class guidance for a task- and
    model-independent prior, which also serves dense models (a segmentor's per-pixel KL, a
    detector's distillation terms, see :meth:`divergence`). The V2 code is not
    published (its repository holds V1 only); this is the objective as the paper describes it,
    with PSAQ-ViT's Adam (betas (0.5, 0.9), cosine decay, here over the fine-tuning iterations).
    The step size is ours: a fresh Adam step moves every pixel by about ``lr`` (normalised units)
    at each visit, and a written-back sample is visited tens of times, so PSAQ-ViT's synthesis lr
    (0.2, meant for images grown from noise) turns the samples into noise the student cannot
    learn from; lr 0.02 keeps them images (``configs/cifar10/psaq-v2-step.py``).

    Args:
        steps (int): sample updates per fine-tuning iteration.
        lr (float), betas (tuple): Adam on the pixels (a fresh state per visit); the lr decays
            along a cosine over the fine-tuning iterations (``schedule='constant'``: it does not).
        disagreement_weight (float): λ.
        psaq_weight (float): ψ; ``psaq`` the options of :class:`PatchSimilarityEntropyLoss`.
        tv_weight (float): β (MimiQ's synthesis value, 2.5e-5, on the same summed TV).
        class_weight (float): α, the class guidance towards the set's labels (0: V2).
        write_back (bool): keep the updated images in the loaded set (the samples evolve).
    """
    data_source = 'synthetic'

    def __init__(self, steps=1, lr=0.02, betas=(0.5, 0.9), schedule='cosine', disagreement_weight=1.0,
                 psaq_weight=1.0, psaq=None, tv_weight=2.5e-5, class_weight=0.0, write_back=True):
        if int(steps) < 1:
            raise ValueError(f'PSAQ-ViT V2 needs steps >= 1 sample update per iteration, got {steps}')
        if schedule not in ('cosine', 'constant'):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
        self.steps, self.lr, self.betas, self.schedule = int(steps), float(lr), tuple(betas), schedule
        self.disagreement_weight, self.psaq_weight = float(disagreement_weight), float(psaq_weight)
        self.class_weight, self.write_back = float(class_weight), bool(write_back)
        self.pse = PatchSimilarityEntropyLoss(**(psaq or {}))
        self.tv = TotalVariationLoss(loss_weight=float(tv_weight))
        self.dataset = None
        self.iteration, self.max_iters = 0, 1

    def setup(self, distiller, image_size, max_iters, dataset=None):
        self.max_iters = max(int(max_iters), 1)
        self.device = teacher_device(distiller)
        pre = distiller.data_preprocessor
        self.mean, self.std = pre.pixel_mean.view(1, -1, 1, 1), pre.pixel_std.view(1, -1, 1, 1)
        self.low, self.high = (0.0 - self.mean) / self.std, (255.0 - self.mean) / self.std
        self.dataset = dataset

    def normalise(self, pixels):
        return (pixels.to(self.device).float() - self.mean) / self.std

    def to_pixels(self, images):
        return (images.detach() * self.std + self.mean).round().clamp(0, 255).to(torch.uint8)

    def current_lr(self):
        if self.schedule == 'constant':
            return self.lr
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(self.iteration, self.max_iters) / self.max_iters))

    def generate(self, distiller, data_batch):
        return data_batch  # the set's images as they are (PSAQ-ViT's calibration)

    @staticmethod
    def divergence(distiller, teacher_out, student_out):
        """How far the student's outputs are from the teacher's: KL(teacher ‖ student) of class
        logits or dense class maps, with gradients through both; for other outputs (a detector's
        features, proposals' scores and boxes, masks) the task's own distillation terms, whose
        gradients reach the samples through the student."""
        if torch.is_tensor(teacher_out) or (isinstance(teacher_out, dict) and 'seg' in teacher_out):
            return output_divergence(teacher_out, student_out)
        kd = distiller.task.distill_loss(student_out, teacher_out)
        return sum(kd.values()) if isinstance(kd, dict) else kd

    def sample_loss(self, distiller, images, labels):
        """The terms of L_x (see the class docstring) on normalised ``images``."""
        with AttentionRecorder(distiller.teacher, fields=('outputs',)) as rec:
            teacher_out = distiller.task.forward_tensor(distiller.teacher, images)
        with student_in_eval(distiller) as student:
            student_out = distiller.task.forward_student(student, images, teacher_out)
        terms = dict(loss_disagreement=-self.disagreement_weight * self.divergence(distiller, teacher_out, student_out))
        if self.psaq_weight:
            terms['loss_pse'] = self.psaq_weight * self.pse(rec.records)
        if self.tv.loss_weight:
            terms['loss_tv'] = self.tv(images)
        if self.class_weight:
            terms['loss_cl'] = self.class_weight * distiller.task.prior_loss(teacher_out, labels)
        return terms

    def step(self, distiller, data_batch):
        if SYNTHETIC_KEY not in data_batch:
            raise ValueError('PSAQV2SampleStep updates the images of a synthetic set: set train_cfg.data_source='
                             "'synthetic' and train_cfg.synthesis (method='psaq')")
        labels = torch.as_tensor(data_batch['label']).to(self.device).long()
        images = self.normalise(data_batch[SYNTHETIC_KEY]).requires_grad_(True)
        optimizer = torch.optim.Adam([images], lr=self.current_lr(), betas=self.betas)
        for _ in range(self.steps):
            terms = self.sample_loss(distiller, images, labels)
            grad, = torch.autograd.grad(sum(terms.values()), [images])
            images.grad = grad
            optimizer.step()
            with torch.no_grad():
                images.copy_(torch.maximum(torch.minimum(images, self.high), self.low))
        if self.write_back and self.dataset is not None and 'index' in data_batch:
            self.dataset.replace(data_batch['index'], self.to_pixels(images))
        self.iteration += 1
        batch = {GENERATED_KEY: images.detach(), 'label': labels}
        return batch, {f'samples_{k}': float(v.detach()) for k, v in terms.items()}

    def state_dict(self):
        """The evolved samples (the loaded set's images), so that a resumed run goes on with them."""
        if self.dataset is None or getattr(self.dataset, 'pixels', None) is None:
            return dict(iteration=self.iteration)
        return dict(iteration=self.iteration, pixels=self.dataset.pixels.clone())

    def load_state_dict(self, state):
        self.iteration = int(state.get('iteration', 0))
        if state.get('pixels') is not None and self.dataset is not None:
            self.dataset.load()
            self.dataset.pixels.copy_(state['pixels'])
