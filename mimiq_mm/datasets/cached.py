"""Decoding an image dataset once instead of at every pass."""
import copy

import torch
from mmengine.dataset import Compose
from mmengine.logging import print_log
from mmengine.registry import DATASETS as ROOT_DATASETS

from ..registry import DATASETS

_DECODED = {}  # dataset config and decoding transforms -> decoded items, shared by a process's runners


@DATASETS.register_module()
class DecodedImageDataset:
    """Wraps an mmengine dataset so its decoding transforms (the leading ``LoadImageFromFile``
    steps of its pipeline) run once per image; the remaining transforms (random crops, packing)
    still run at every access. Small images (CIFAR: 150 MB for 50K) are worth keeping in memory
    when a benchmark reads them for many epochs and evaluations.

    The decoded items are shared by every wrapper of the same dataset in the process, so a
    teacher, its evaluations and the real-data fine-tuning runs decode the images once.

    Args:
        dataset (dict): the wrapped dataset's config (any mmengine ``BaseDataset``).
        decode_steps (int): how many leading pipeline transforms are deterministic decoding.
        num_samples (int | None): keep a random subset of this many items (seeded by ``seed``),
            e.g. to fine-tune on as many real images as a synthetic set has.
        seed (int): seed of the subset.
    """

    def __init__(self, dataset: dict, decode_steps=1, num_samples=None, seed=0):
        dataset = copy.deepcopy(dataset)
        pipeline = dataset.pop('pipeline', [])
        self.decode = Compose(pipeline[:decode_steps])
        self.rest = Compose(pipeline[decode_steps:])
        self.dataset = ROOT_DATASETS.build(dict(dataset, pipeline=[]))
        self.metainfo = self.dataset.metainfo
        # Decoded here, in the main process, so that dataloader workers inherit the items.
        key = repr((sorted(dataset.items(), key=str), pipeline[:decode_steps]))
        if key not in _DECODED:
            print_log(f'decoding {len(self.dataset)} images once ({type(self.dataset).__name__})', logger='current')
            _DECODED[key] = [self.decode(self.dataset.get_data_info(i)) for i in range(len(self.dataset))]
        self.items = _DECODED[key]
        if num_samples is not None:
            if not 0 < num_samples <= len(self.items):
                raise ValueError(f'num_samples={num_samples} must be between 1 and the {len(self.items)} items')
            keep = torch.randperm(len(self.items), generator=torch.Generator().manual_seed(seed))[:num_samples]
            self.items = [self.items[i] for i in sorted(keep.tolist())]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        item = self.items[idx]
        return self.rest(dict(item, img=item['img'].copy()) if 'img' in item else dict(item))
