"""The generator networks of GDFQ and Qimera, written from their papers and released code.

Both share GDFQ's image decoder: a linear layer to a 128-channel map at a quarter of the image
size, BatchNorm, two (×2 nearest upsampling, 3×3 convolution, BatchNorm, LeakyReLU 0.2) stages
(128 then 64 channels), a 3×3 convolution to RGB, tanh and a BatchNorm without affine
parameters, so that the images come out standardised per channel, the scale of a teacher's
normalised inputs. The two inner BatchNorms use eps 0.8 (``nn.BatchNorm2d(128, 0.8)`` in the
released code, where the positional 0.8 is eps).

The class enters either as GDFQ's CIFAR generator does, an embedding multiplied into the noise
(``conditioning='embedding'``), or as its ImageNet generator does, class-conditional BatchNorm
affine parameters (``'conditional_bn'``). Both take soft class weights (B, C), so that Qimera's
superposed samples mix the classes' parameters with the same coefficients as their embeddings.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.utils import to_2tuple

CONDITIONINGS = ('embedding', 'conditional_bn')


class ClassConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose affine parameters are per class (GDFQ's CategoricalConditionalBatchNorm2d):
    a sample with class weights w (C,) gets Σ_c w_c·γ_c and Σ_c w_c·β_c (one-hot: its class's)."""

    def __init__(self, num_classes, num_features, eps=1e-5):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, eps=eps, affine=False)
        self.weight = nn.Parameter(torch.ones(num_classes, num_features))
        self.bias = nn.Parameter(torch.zeros(num_classes, num_features))

    def forward(self, x, class_weights):
        gamma = class_weights @ self.weight
        beta = class_weights @ self.bias
        return self.norm(x) * gamma[:, :, None, None] + beta[:, :, None, None]


class ImageDecoder(nn.Module):
    """GDFQ's generator body: a latent vector (B, in_dim) -> standardised images (B, 3, H, W).

    Args:
        in_dim (int): size of the latent vector.
        image_size (int | tuple): (H, W), each divisible by 4.
        num_classes (int | None): with a number, class-conditional BatchNorms (GDFQ's ImageNet
            generator); None: plain ones (its CIFAR generator).
        channels (int): image channels.
    """

    def __init__(self, in_dim, image_size, num_classes=None, channels=3):
        super().__init__()
        h, w = to_2tuple(image_size)
        if h % 4 or w % 4:
            raise ValueError(f'the GDFQ generator makes images whose sides are multiples of 4, got {(h, w)}')
        self.init_size = (h // 4, w // 4)
        self.fc = nn.Linear(in_dim, 128 * self.init_size[0] * self.init_size[1])
        conditional = num_classes is not None

        def norm(features, eps):
            return ClassConditionalBatchNorm2d(num_classes, features, eps) if conditional \
                else nn.BatchNorm2d(features, eps=eps)

        self.conditional = conditional
        self.norm0 = norm(128, 1e-5)
        self.conv1 = nn.Conv2d(128, 128, 3, stride=1, padding=1)
        self.norm1 = norm(128, 0.8)
        self.conv2 = nn.Conv2d(128, 64, 3, stride=1, padding=1)
        self.norm2 = norm(64, 0.8)
        self.conv3 = nn.Conv2d(64, channels, 3, stride=1, padding=1)
        self.out_norm = nn.BatchNorm2d(channels, affine=False)

    def _norm(self, layer, x, class_weights):
        return layer(x, class_weights) if self.conditional else layer(x)

    def forward(self, latent, class_weights=None):
        if self.conditional and class_weights is None:
            raise ValueError('a class-conditional decoder needs class weights')
        x = self.fc(latent).view(latent.shape[0], 128, *self.init_size)
        x = self._norm(self.norm0, x, class_weights)
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self._norm(self.norm1, self.conv1(x), class_weights), 0.2)
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self._norm(self.norm2, self.conv2(x), class_weights), 0.2)
        return self.out_norm(torch.tanh(self.conv3(x)))


class ConditionalGenerator(nn.Module):
    """GDFQ's generator G(z, y).

    ``'embedding'``: the decoder's input is z ⊙ E[y] (its CIFAR generator); ``'conditional_bn'``:
    z itself, the class entering through the decoder's BatchNorms (its ImageNet generator).

    Args:
        num_classes (int): classes of y.
        latent_dim (int): size of z (GDFQ: 100).
        image_size (int | tuple): (H, W).
        conditioning (str): 'embedding' or 'conditional_bn'.
    """

    def __init__(self, num_classes, latent_dim, image_size, conditioning='embedding'):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f'generator conditioning must be one of {CONDITIONINGS}, got {conditioning!r}')
        self.num_classes, self.latent_dim, self.conditioning = int(num_classes), int(latent_dim), conditioning
        self.embedding = nn.Embedding(num_classes, latent_dim) if conditioning == 'embedding' else None
        self.decoder = ImageDecoder(latent_dim, image_size,
                                    num_classes if conditioning == 'conditional_bn' else None)

    def forward(self, z, labels):
        """z (B, latent_dim), labels (B,) -> images (B, 3, H, W)."""
        if self.embedding is not None:
            return self.decoder(z * self.embedding(labels))
        return self.decoder(z, F.one_hot(labels, self.num_classes).to(z.dtype))


def standardise(vectors, eps=1e-5):
    """Each vector of (..., D) to zero mean and unit variance over D (Qimera's embedding normaliser)."""
    mean = vectors.mean(dim=-1, keepdim=True)
    var = vectors.var(dim=-1, unbiased=False, keepdim=True)
    return (vectors - mean) / torch.sqrt(var + eps)


class SuperposingGenerator(nn.Module):
    """Qimera's generator: class embeddings, with noise, standardised, passed through the
    disentanglement mapping (one linear layer) and superposed with mixing coefficients into one
    latent vector, which GDFQ's decoder turns into an image.

    A pure sample is K = 1 class with coefficient 1; a boundary-supporting sample mixes K classes,
    latent = Σ_k λ_k·M(norm(E[y_k] + s·z_k)) (Σ λ_k = 1), so with no noise it lies on the segment
    (the simplex) between its classes' latent vectors.

    Args:
        num_classes (int): classes.
        embed_dim (int): embedding size (the teacher classifier's input features when the
            embeddings are initialised from its weights).
        image_size (int | tuple): (H, W).
        embeddings (Tensor | None): (num_classes, embed_dim) initial embeddings (Qimera: the
            teacher's classifier weights); None: random (its ``--randemb``).
        freeze_embedding (bool): keep the embeddings fixed (its ``--freeze``).
        disentangle (bool): the disentanglement mapping M (off: identity).
        intermediate_dim (int): output size of M (Qimera: 100; 64 for ResNet-20).
        noise_scale (float): s, the noise added to each embedding.
        conditioning (str): 'embedding' (the latent alone) or 'conditional_bn' (also the class
            weights into the decoder's BatchNorms, its ImageNet generator).
    """

    def __init__(self, num_classes, embed_dim, image_size, embeddings=None, freeze_embedding=False, disentangle=True,
                 intermediate_dim=100, noise_scale=1.0, conditioning='embedding'):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f'generator conditioning must be one of {CONDITIONINGS}, got {conditioning!r}')
        self.num_classes, self.latent_dim, self.noise_scale = int(num_classes), int(embed_dim), float(noise_scale)
        if embeddings is not None:
            if tuple(embeddings.shape) != (num_classes, embed_dim):
                raise ValueError(f'initial embeddings of shape {tuple(embeddings.shape)}, expected '
                                 f'{(num_classes, embed_dim)}')
            self.embedding = nn.Embedding.from_pretrained(embeddings.detach().clone().float(), freeze=freeze_embedding)
        else:
            self.embedding = nn.Embedding(num_classes, embed_dim)
            self.embedding.weight.requires_grad_(not freeze_embedding)
        self.mapping = nn.Linear(embed_dim, intermediate_dim) if disentangle else None
        self.conditioning = conditioning
        self.decoder = ImageDecoder(intermediate_dim if disentangle else embed_dim, image_size,
                                    num_classes if conditioning == 'conditional_bn' else None)

    def latent(self, z, labels, weights):
        """z (B, K, D), labels (B, K), weights (B, K) -> the superposed latent vectors (B, D')."""
        vectors = standardise(self.embedding(labels) + self.noise_scale * z)
        if self.mapping is not None:
            vectors = self.mapping(vectors)
        return (weights.unsqueeze(-1).to(vectors.dtype) * vectors).sum(dim=1)

    def class_weights(self, labels, weights):
        """The soft class targets (B, C) of superposed samples: Σ_k λ_k·onehot(y_k)."""
        soft = weights.new_zeros(labels.shape[0], self.num_classes)
        return soft.scatter_add_(1, labels, weights)

    def forward(self, z, labels, weights):
        """z (B, K, D), labels (B, K), weights (B, K) -> images (B, 3, H, W)."""
        latent = self.latent(z, labels, weights)
        class_weights = self.class_weights(labels, weights) if self.conditioning == 'conditional_bn' else None
        return self.decoder(latent, class_weights)
