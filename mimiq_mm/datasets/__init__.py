from .cached import DecodedImageDataset
from .labels import ClassLabelDataset
from .synthetic import SyntheticImageDataset

__all__ = ['ClassLabelDataset', 'DecodedImageDataset', 'SyntheticImageDataset']
