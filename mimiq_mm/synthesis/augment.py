"""Differentiable augmentations applied to the images being synthesised (implementation notes):
random translation (roll) jitter, horizontal flip, a small per-image colour shift/scale, and
Gaussian noise that decays over the optimisation."""
import torch
import torch.nn as nn


class SynthesisAugment(nn.Module):
    """Args:
        jitter (float): largest shift as a fraction of the image side (rolled, so no pixels lost).
        flip (bool): random horizontal flip per batch.
        color (float): std of the per-image, per-channel scale and shift (normalised space).
        noise (float): std of added Gaussian noise at step 0, decaying linearly to 0.
    """

    def __init__(self, jitter=0.125, flip=True, color=0.1, noise=0.2):
        super().__init__()
        self.jitter, self.flip, self.color, self.noise = jitter, flip, color, noise

    def forward(self, images, progress=0.0, generator=None, noise_generator=None):
        """images: (B, 3, H, W) in normalised space; progress in [0, 1].

        ``generator`` (CPU) draws the small random choices; ``noise_generator`` (on the images'
        device) draws the noise image, so no large tensor is made on the CPU and copied.
        """
        b, _, h, w = images.shape
        dev = images.device

        def rand(*shape):
            return torch.rand(*shape, generator=generator, device='cpu').to(dev)

        x = images
        if self.jitter > 0:
            dy = int((rand(1).item() * 2 - 1) * self.jitter * h)
            dx = int((rand(1).item() * 2 - 1) * self.jitter * w)
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        if self.flip and rand(1).item() < 0.5:
            x = torch.flip(x, dims=(3,))
        if self.color > 0:
            scale = 1 + self.color * (rand(b, 3, 1, 1) * 2 - 1)
            shift = self.color * (rand(b, 3, 1, 1) * 2 - 1)
            x = x * scale + shift
        if self.noise > 0 and progress < 1:
            noise = torch.randn(x.shape, generator=noise_generator, device=dev)
            x = x + self.noise * (1 - progress) * noise
        return x
