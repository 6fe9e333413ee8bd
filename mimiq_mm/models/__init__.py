from .batch_augment import BatchAugment
from .data_preprocessor import GENERATED_KEY, SYNTHETIC_KEY, DistillDataPreprocessor
from .distiller import QuantDistiller, calibrate_activations

__all__ = ['GENERATED_KEY', 'SYNTHETIC_KEY', 'BatchAugment', 'DistillDataPreprocessor', 'QuantDistiller',
           'calibrate_activations']
