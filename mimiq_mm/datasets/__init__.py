from .augment import BatchAugment
from .synthetic import SyntheticImageDataset

__all__ = ['BatchAugment', 'SyntheticImageDataset']
