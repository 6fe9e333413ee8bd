"""Reading a finished synthetic set for fine-tuning."""
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..registry import DATASETS
from ..synthesis.store import load_manifest


@DATASETS.register_module()
class SyntheticImageDataset(Dataset):
    """Items are ``dict(pixels=uint8 (3, H, W) RGB tensor, label=int)``.

    Args:
        root (str): folder of a synthetic set made by :func:`mimiq_mm.synthesis.synthesize_set`.
    """

    def __init__(self, root):
        self.root = root
        self.manifest = load_manifest(root)
        self.images = self.manifest['images']
        if not self.images:
            raise ValueError(f'the synthetic set in {root} is empty')

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        item = self.images[idx]
        with Image.open(os.path.join(self.root, item['file'])) as img:
            array = np.asarray(img.convert('RGB')).copy()
        return dict(pixels=torch.from_numpy(array).permute(2, 0, 1), label=item['label'])
