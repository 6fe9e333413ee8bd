from .batch_augment import BatchAugment
from .data_preprocessor import SYNTHETIC_KEY, DistillDataPreprocessor
from .distiller import QuantDistiller, calibrate_activations

__all__ = ['SYNTHETIC_KEY', 'BatchAugment', 'DistillDataPreprocessor', 'QuantDistiller', 'calibrate_activations']
