"""GDFQ (Xu et al., "Generative Low-bitwidth Data Free Quantization", ECCV 2020) as a data
generator of the fine-tuning loop; the base of Qimera and AdaDFQ, which change its network and
its loss."""
import time

import torch
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.utils import to_2tuple

from ..registry import GENERATORS
from .base import DataGenerator, average_gradients, class_prior, prior_loss, teacher_device
from .networks import ConditionalGenerator


@GENERATORS.register_module()
class GDFQGenerator(DataGenerator):
    """A conditional generator G(z, y) trained against the frozen teacher, alternating with the
    quantized student (GDFQ).

    Every fine-tuning iteration takes the loop's batch of labels y, draws z ~ N(0, I), generates
    images, updates G to lower the teacher's cross entropy towards y and hands the images (made
    before that update, as GDFQ's code does) and y to the student, which learns from them with
    the distiller's losses (GDFQ: KD at temperature 20 plus cross entropy towards y:
    ``model.kd`` and ``model.student_losses=[dict(type='mimiq_mm.LabelCrossEntropyLoss')]``).
    GDFQ's BatchNorm-statistics term has nothing to match in a ViT (no BatchNorm) and is left out,
    as the MimiQ paper applies the CNN methods. Before fine-tuning, G trains alone for
    ``warmup_ratio`` of the iterations (GDFQ's warm-up epochs, in which the student does not
    learn); the student's activation quantizers are then calibrated on generated batches (GDFQ
    tracks their ranges during its first epochs instead).

    Dense teachers: the class prior is the one MimiQ's synthesis uses (:mod:`mimiq_mm.synthesis.priors`):
    the dense model's own head against each image's class, or an ImageNet classifier (``prior``).

    Args (defaults: GDFQ's released code and settings):
        latent_dim (int): size of z (100).
        conditioning (str): 'embedding' (z ⊙ E[y], its CIFAR generator) or 'conditional_bn'
            (class-conditional BatchNorm, its ImageNet generator).
        lr (float), betas (tuple): Adam of G (1e-3, (0.5, 0.999)).
        lr_milestones (tuple[float]): fractions of G's updates (warm-up + fine-tuning) at which
            its lr is multiplied by ``lr_gamma`` (epochs 100, 200, 300 of 400; 0.1).
        warmup_ratio (float): G-only updates before fine-tuning, as a fraction of the fine-tuning
            iterations (ImageNet: 50 warm-up epochs of 400, 0.125; CIFAR: 4 of 400).
        prior (dict | str | None): the class prior (None / 'head': the teacher's own output).
        seed (int): seed of G's initial weights and of the noise (each rank adds its rank).
        log_interval (int): warm-up updates between log lines.
    """
    method = 'GDFQ'

    def __init__(self, latent_dim=100, conditioning='embedding', lr=1e-3, betas=(0.5, 0.999),
                 lr_milestones=(0.25, 0.5, 0.75), lr_gamma=0.1, warmup_ratio=0.125, prior=None, seed=0,
                 log_interval=50):
        if not 0 <= warmup_ratio:
            raise ValueError(f'warmup_ratio must be >= 0, got {warmup_ratio}')
        self.latent_dim, self.conditioning = int(latent_dim), conditioning
        self.lr, self.betas = float(lr), tuple(betas)
        self.lr_milestones, self.lr_gamma = tuple(lr_milestones), float(lr_gamma)
        self.warmup_ratio, self.prior_cfg, self.seed = float(warmup_ratio), prior, int(seed)
        self.log_interval = int(log_interval)
        self.net = None
        self.warmed_up = False

    # ------------------------------------------------------------------ set-up
    def num_classes(self, distiller) -> int:
        if self.prior_cfg not in (None, 'head') and not (isinstance(self.prior_cfg, dict)
                                                          and self.prior_cfg.get('type') == 'head'):
            return class_prior(self.prior_cfg, distiller).num_classes()
        return super().num_classes(distiller)

    def build_network(self, distiller, num_classes, image_size):
        return ConditionalGenerator(num_classes, self.latent_dim, image_size, self.conditioning)

    def setup(self, distiller, image_size, max_iters, dataset=None):
        self.device = teacher_device(distiller)
        self.prior = class_prior(self.prior_cfg, distiller)
        self.classes = self.num_classes(distiller)
        self.image_size = tuple(to_2tuple(image_size))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the same initial G on every rank and run
            self.net = self.build_network(distiller, self.classes, self.image_size).to(self.device).train()
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr, betas=self.betas)
        self.warmup_iters = int(round(self.warmup_ratio * max_iters))
        total = max(self.warmup_iters + int(max_iters), 1)
        milestones = sorted({max(1, int(round(m * total))) for m in self.lr_milestones})
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=self.lr_gamma)
        self.noise = torch.Generator().manual_seed(self.seed + 1 + 1_000_003 * get_rank())
        self.updates = 0

    # ------------------------------------------------------------------ one batch
    def sample(self, labels):
        """Images for ``labels`` (B,) with the graph through G, and the student's targets."""
        z = torch.randn(len(labels), self.latent_dim, generator=self.noise).to(self.device)
        return self.net(z, labels), labels

    def generator_loss(self, distiller, images, labels, targets) -> dict:
        """GDFQ's L_G without the BatchNorm term: the teacher's cross entropy towards y."""
        return dict(loss_cl=prior_loss(distiller, self.prior, images, labels))

    def update(self, terms) -> None:
        """One Adam step of G on the sum of ``terms``; only G's gradients are computed (the
        student's stay untouched for its own step)."""
        total = sum(terms.values())
        grads = torch.autograd.grad(total, self.params, allow_unused=True)
        for p, g in zip(self.params, grads):
            p.grad = g
        average_gradients(self.params)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.updates += 1

    def labels_of(self, data_batch):
        return torch.as_tensor(data_batch['label']).to(self.device).long()

    def step(self, distiller, data_batch):
        labels = self.labels_of(data_batch)
        self.net.train()
        images, targets = self.sample(labels)
        terms = self.generator_loss(distiller, images, labels, targets)
        self.update(terms)
        batch = dict(images=images.detach(), targets=targets.detach(), label=labels)
        return batch, {f'generator_{k}': float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def generate(self, distiller, data_batch):
        labels = self.labels_of(data_batch)
        self.net.train()  # batch statistics, as the generator always runs
        images, targets = self.sample(labels)
        return dict(images=images, targets=targets, label=labels)

    def warmup(self, distiller, batch_size):
        """G alone for ``warmup_iters`` updates on uniformly drawn labels (GDFQ's warm-up epochs)."""
        if self.warmed_up or not self.warmup_iters:
            self.warmed_up = True
            return
        start = time.time()
        for i in range(self.warmup_iters):
            labels = torch.randint(self.classes, (batch_size,), generator=self.noise)
            _, log = self.step(distiller, dict(label=labels))
            if self.log_interval and ((i + 1) % self.log_interval == 0 or i + 1 == self.warmup_iters):
                terms = ', '.join(f'{k} {v:.4f}' for k, v in log.items())
                print_log(f'{self.method} generator warm-up {i + 1}/{self.warmup_iters}: {terms} '
                          f'({(time.time() - start) / (i + 1):.2f} s/update)', logger='current')
        self.warmed_up = True

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        return dict(net=self.net.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), noise=self.noise.get_state(), updates=self.updates,
                    warmed_up=self.warmed_up)

    def load_state_dict(self, state):
        self.net.load_state_dict(state['net'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.noise.set_state(state['noise'])
        self.updates, self.warmed_up = int(state['updates']), bool(state['warmed_up'])
