"""Image synthesis from the frozen teacher (MimiQ's L_G and the baselines' losses)."""
from .augment import SynthesisAugment
from .build import (SET_OPTIONS, SyntheticSetMaker, build_synthesizer, prepare_synthetic_set, set_options,
                    synthetic_root)
from .methods import SYNTHESIS_METHODS, check_method
from .pipeline import synthesize_set
from .priors import ClassifierPrior, build_prior
from .store import SyntheticSet, file_sha256, load_manifest
from .synthesizer import ImageSynthesizer, NonFiniteSynthesisError, SynthesisBatch

__all__ = ['ClassifierPrior', 'ImageSynthesizer', 'NonFiniteSynthesisError', 'SET_OPTIONS', 'SYNTHESIS_METHODS',
           'SynthesisAugment', 'SynthesisBatch', 'SyntheticSet', 'SyntheticSetMaker', 'build_prior', 'build_synthesizer',
           'check_method', 'file_sha256', 'load_manifest', 'prepare_synthetic_set', 'set_options', 'synthesize_set',
           'synthetic_root']
