from .augment import BatchAugment
from .cached import DecodedImageDataset
from .synthetic import SyntheticImageDataset

__all__ = ['BatchAugment', 'DecodedImageDataset', 'SyntheticImageDataset']
