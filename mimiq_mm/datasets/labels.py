"""The data of generator-based fine-tuning: class labels only (a generator turns them into images)."""
from torch.utils.data import Dataset

from ..registry import DATASETS


@DATASETS.register_module()
class ClassLabelDataset(Dataset):
    """Items are ``dict(label=int)``: each class ``repeats`` times, so a shuffling sampler hands a
    generator (``train_cfg.generator`` of :class:`mimiq_mm.engine.DataFreeQATLoop`) balanced labels,
    batch by batch, as seeded and resumable as any dataset.

    Args:
        num_classes (int): classes of the teacher (or of its synthesis prior).
        repeats (int): how often each class appears in one pass.
    """
    metainfo = dict(classes=None)

    def __init__(self, num_classes, repeats=1):
        if int(num_classes) < 1 or int(repeats) < 1:
            raise ValueError(f'ClassLabelDataset needs num_classes >= 1 and repeats >= 1, got {num_classes}, {repeats}')
        self.num_classes, self.repeats = int(num_classes), int(repeats)

    def __len__(self):
        return self.num_classes * self.repeats

    def __getitem__(self, idx):
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        return dict(label=idx % self.num_classes)
