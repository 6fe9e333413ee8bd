"""Per-iteration data steps of the fine-tuning loop (``train_cfg.generator``): the generators of
the CNN data-free baselines GDFQ, Qimera and AdaDFQ, and PSAQ-ViT V2's sample updates."""
from .adadfq import AdaDFQGenerator
from .base import DataGenerator
from .gdfq import GDFQGenerator
from .networks import ClassConditionalBatchNorm2d, ConditionalGenerator, ImageDecoder, SuperposingGenerator
from .psaq_v2 import PSAQV2SampleStep
from .qimera import QimeraGenerator, classifier_weights

__all__ = ['AdaDFQGenerator', 'ClassConditionalBatchNorm2d', 'ConditionalGenerator', 'DataGenerator',
           'GDFQGenerator', 'ImageDecoder', 'PSAQV2SampleStep', 'QimeraGenerator', 'SuperposingGenerator',
           'build_generator', 'classifier_weights']


def build_generator(cfg):
    """``train_cfg.generator`` (a dict with a registered ``type``, or a built one) -> the component."""
    from ..registry import GENERATORS
    if cfg is None or isinstance(cfg, DataGenerator):
        return cfg
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    # The class from this scope's registry (Registry.build would search the config's default scope first).
    generator_cls = GENERATORS.get(kind) if kind else None
    if generator_cls is None:
        raise ValueError(f'unknown train_cfg.generator type {kind!r}; registered: {sorted(GENERATORS.module_dict)}')
    return generator_cls(**cfg)
