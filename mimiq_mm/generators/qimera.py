"""Qimera (Choi et al., "Qimera: Data-free Quantization with Synthetic Boundary Supporting
Samples", NeurIPS 2021): GDFQ with boundary-supporting samples."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import soft_cross_entropy
from ..registry import GENERATORS
from .base import check_classification
from .gdfq import GDFQGenerator
from .networks import SuperposingGenerator


def classifier_weights(teacher, num_classes):
    """The teacher's classifier weights (num_classes, features): its last Linear layer with
    ``num_classes`` outputs (timm's ``head``, mmpretrain's ``fc`` / ``layers.head``)."""
    found = [m for m in teacher.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        raise ValueError(f'the teacher has no Linear classifier with {num_classes} outputs to initialise Qimera\'s '
                         "embeddings from; set embed_init='random'")
    return found[-1].weight.detach()


@GENERATORS.register_module()
class QimeraGenerator(GDFQGenerator):
    """GDFQ's alternation with Qimera's generator and boundary-supporting samples.

    * Superposed latent embedding: with probability ``superpose_prob`` a batch is made of samples
      that mix ``superpose_classes`` classes (the loop's label and random others) with
      coefficients λ = softmax(N(0, I)); their target is the mixture Σ λ_k·onehot(y_k), towards
      which both the generator (the teacher's cross entropy) and the student (its cross entropy,
      ``LabelCrossEntropyLoss``) learn.
    * Disentanglement mapping: one linear layer applied to each embedding before superposing.
    * Embeddings initialised from the teacher's classifier weights (one row per class).

    Args (defaults: the Qimera paper's method; its released scripts run with ``--randemb`` and,
    through an inverted flag, without the mapping):
        superpose_prob (float): probability that a batch is superposed (0.4).
        superpose_classes (int): classes mixed per superposed sample (2; the ImageNet scripts 500).
        noise_scale (float): scale of the noise added to each embedding (1.0).
        disentangle (bool): the disentanglement mapping (True).
        intermediate_dim (int): its output size (100).
        embed_init (str): 'classifier' (the teacher's classifier weights) or 'random'.
        freeze_embedding (bool): keep the embeddings fixed (False).
        latent_dim (int): embedding size with ``embed_init='random'`` (the classifier's input size
            otherwise).
        Others: as :class:`GDFQGenerator` (Adam 1e-3, (0.5, 0.999), warm-up, lr milestones).
    """
    method = 'Qimera'

    def __init__(self, superpose_prob=0.4, superpose_classes=2, noise_scale=1.0, disentangle=True,
                 intermediate_dim=100, embed_init='classifier', freeze_embedding=False, **kwargs):
        super().__init__(**kwargs)
        if embed_init not in ('classifier', 'random'):
            raise ValueError(f"embed_init must be 'classifier' or 'random', got {embed_init!r}")
        if not 0 <= superpose_prob <= 1 or int(superpose_classes) < 2:
            raise ValueError('Qimera needs 0 <= superpose_prob <= 1 and superpose_classes >= 2, got '
                             f'{superpose_prob}, {superpose_classes}')
        self.superpose_prob, self.superpose_classes = float(superpose_prob), int(superpose_classes)
        self.noise_scale, self.disentangle, self.intermediate_dim = float(noise_scale), bool(disentangle), \
            int(intermediate_dim)
        self.embed_init, self.freeze_embedding = embed_init, bool(freeze_embedding)

    def build_network(self, distiller, num_classes, image_size):
        check_classification(distiller, self.method)
        embeddings = classifier_weights(distiller.teacher, num_classes) if self.embed_init == 'classifier' else None
        embed_dim = embeddings.shape[1] if embeddings is not None else self.latent_dim
        self.latent_dim = embed_dim
        return SuperposingGenerator(num_classes, embed_dim, image_size, embeddings=embeddings,
                                    freeze_embedding=self.freeze_embedding, disentangle=self.disentangle,
                                    intermediate_dim=self.intermediate_dim, noise_scale=self.noise_scale,
                                    conditioning=self.conditioning)

    def mixture(self, labels, superpose: bool):
        """(labels (B, K), λ (B, K)) of a batch: K = 1 with λ = 1, or the loop's labels and
        ``superpose_classes - 1`` random others mixed by softmax(N(0, I))."""
        if not superpose:
            return labels[:, None], torch.ones(len(labels), 1, device=self.device)
        others = torch.randint(self.classes, (len(labels), self.superpose_classes - 1), generator=self.noise)
        mixed = torch.cat([labels[:, None], others.to(self.device)], dim=1)
        weights = F.softmax(torch.randn(len(labels), self.superpose_classes, generator=self.noise), dim=1)
        return mixed, weights.to(self.device)

    def sample(self, labels):
        superpose = bool(torch.rand((), generator=self.noise) < self.superpose_prob)
        mixed, weights = self.mixture(labels, superpose)
        z = torch.randn(len(labels), mixed.shape[1], self.latent_dim, generator=self.noise).to(self.device)
        images = self.net(z, mixed, weights)
        return images, self.net.class_weights(mixed, weights)

    def generator_loss(self, distiller, images, labels, targets):
        """The teacher's cross entropy towards the (soft) targets (the BatchNorm term left out)."""
        logits = distiller.task.forward_prior(distiller.teacher, images)
        return dict(loss_cl=soft_cross_entropy(logits, targets))
