from .cached import DecodedImageDataset
from .synthetic import SyntheticImageDataset

__all__ = ['DecodedImageDataset', 'SyntheticImageDataset']
