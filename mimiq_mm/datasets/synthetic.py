"""Reading a finished synthetic set for fine-tuning."""
import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DATASETS
from ..synthesis.store import damaged_images_error, decode_image, load_manifest, read_image_file


@DATASETS.register_module()
class SyntheticImageDataset(Dataset):
    """Items are ``dict(pixels=uint8 (3, H, W) RGB tensor, label=int, index=int)`` (``index``: the
    item's position, by which a sample update writes an image back, see :meth:`replace`).

    The images are decoded once, on first use, and kept in memory as one uint8 tensor
    (10K images of 224² take 1.5 GB): fine-tuning revisits them hundreds of times, and no
    dataloader workers are needed. Each is checked against the size and sha256 the manifest
    records (older sets: that it decodes); a missing or damaged image stops the load with one
    error naming them all and the fix, before fine-tuning starts.

    Args:
        root (str): folder of a synthetic set made by :func:`mimiq_mm.synthesis.synthesize_set`.
        num_images (int | None): the set's size when it is not made yet (the fine-tuning loop
            builds its dataloader before synthesis); None reads it from the finished set.
        holdout (int): images at the end of the set kept out of training (for choosing the
            student without data, see :class:`mimiq_mm.engine.BestStudentHook`).
        part (str): 'train' (all but the held-out images) or 'holdout' (only those).
    """
    metainfo = dict(classes=None)

    def __init__(self, root, num_images=None, holdout=0, part='train'):
        if part not in ('train', 'holdout'):
            raise ValueError(f"part must be 'train' or 'holdout', got {part!r}")
        self.root = root
        self.set_size = num_images
        self.holdout, self.part = int(holdout), part
        self.pixels = None   # (N, 3, H, W) uint8 once loaded
        self.labels = None   # (N,) int64
        if num_images is None:
            self.load()
        elif not 0 <= self.holdout < num_images:
            raise ValueError(f'holdout_images={holdout} must be less than the {num_images} synthetic images')

    def load(self):
        """Decode every image of the finished set (a no-op once loaded)."""
        if self.pixels is not None:
            return self
        images = load_manifest(self.root)['images']
        if not images:
            raise ValueError(f'the synthetic set in {self.root} is empty')
        if self.set_size is not None and len(images) != self.set_size:
            raise ValueError(f'the synthetic set in {self.root} has {len(images)} images, expected '
                             f'{self.set_size}')
        cut = len(images) - self.holdout
        images = images[:cut] if self.part == 'train' else images[cut:]
        arrays, damaged = [], {}
        for item in images:
            data, problem = read_image_file(self.root, item)  # read once: checked, then decoded
            if problem is None:
                try:
                    arrays.append(decode_image(data))
                except Exception as err:  # noqa: BLE001  (whatever PIL raises on a damaged file)
                    problem = f'cannot be decoded ({err})'
            if problem is not None:
                damaged[item['file']] = problem
        if damaged:
            raise damaged_images_error(self.root, damaged)
        self.pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.tensor([item['label'] for item in images], dtype=torch.long)
        return self

    def __len__(self):
        if self.pixels is not None:
            return len(self.pixels)
        return self.set_size - self.holdout if self.part == 'train' else self.holdout

    def __getitem__(self, idx):
        self.load()
        return dict(pixels=self.pixels[idx], label=int(self.labels[idx]), index=int(idx))

    def replace(self, indices, pixels):
        """Replace the images at ``indices`` (B,) by ``pixels`` (uint8 (B, 3, H, W)) in memory: the
        set on disk stays as it was made (PSAQ-ViT V2's sample updates evolve the loaded copy)."""
        self.load()
        self.pixels[torch.as_tensor(indices, dtype=torch.long)] = pixels.to(self.pixels.dtype).cpu()
