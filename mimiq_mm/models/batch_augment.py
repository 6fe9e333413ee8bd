"""SimCLR-style batch augmentation for fine-tuning on synthetic images (paper §6.1): random
resized crop, horizontal flip, colour jitter, grayscale and Gaussian blur, on a whole batch of
tensors so it runs on the GPU next to the model."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BatchAugment(nn.Module):
    """Args (probabilities and strengths; 0 disables a transform):
        crop_scale (tuple): area range of the random resized crop.
        flip (float): probability of a horizontal flip.
        jitter (float): brightness/contrast/saturation jitter strength.
        jitter_prob (float): probability of colour jitter per image.
        grayscale (float): probability of grayscale per image.
        blur (float): probability of a 3x3 Gaussian blur per image.
    """

    def __init__(self, crop_scale=(0.6, 1.0), flip=0.5, jitter=0.4, jitter_prob=0.8, grayscale=0.2, blur=0.2):
        super().__init__()
        self.crop_scale, self.flip = tuple(crop_scale), flip
        self.jitter, self.jitter_prob, self.grayscale, self.blur = jitter, jitter_prob, grayscale, blur

    def forward(self, x):
        """x: (B, 3, H, W) float in [0, 1] -> same shape."""
        b, _, h, w = x.shape
        dev = x.device
        if self.crop_scale[0] < 1:
            area = torch.empty(b, device=dev).uniform_(*self.crop_scale)
            side = area.sqrt()
            cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - side)
            cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - side)
            theta = torch.zeros(b, 2, 3, device=dev)
            theta[:, 0, 0], theta[:, 1, 1] = side, side
            theta[:, 0, 2], theta[:, 1, 2] = cx, cy
            grid = F.affine_grid(theta, (b, 3, h, w), align_corners=False)
            x = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)
        if self.flip > 0:
            flip = torch.rand(b, 1, 1, 1, device=dev) < self.flip
            x = torch.where(flip, x.flip(3), x)
        if self.jitter > 0 and self.jitter_prob > 0:
            apply = (torch.rand(b, 1, 1, 1, device=dev) < self.jitter_prob).float()

            def factor():
                return 1 + (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * self.jitter * apply

            gray = x.mean(1, keepdim=True)
            x = x * factor()  # brightness
            mean = x.mean((1, 2, 3), keepdim=True)
            x = (x - mean) * factor() + mean  # contrast
            x = (x - gray) * factor() + gray  # saturation
        if self.grayscale > 0:
            g = torch.rand(b, 1, 1, 1, device=dev) < self.grayscale
            x = torch.where(g, x.mean(1, keepdim=True).expand_as(x), x)
        if self.blur > 0:
            kernel = torch.tensor([1., 2., 1.], device=dev)
            kernel = (kernel[:, None] * kernel[None, :]) / 16
            blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode='replicate'), kernel.expand(3, 1, 3, 3), groups=3)
            apply = torch.rand(b, 1, 1, 1, device=dev) < self.blur
            x = torch.where(apply, blurred, x)
        return x.clamp(0, 1)
