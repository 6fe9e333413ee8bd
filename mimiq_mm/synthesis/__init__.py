"""Image synthesis from the frozen teacher (MimiQ's L_G and the baselines' losses)."""
from .augment import SynthesisAugment
from .methods import SYNTHESIS_METHODS, check_method
from .pipeline import synthesize_set
from .store import SyntheticSet, file_sha256, load_manifest
from .synthesizer import ImageSynthesizer, NonFiniteSynthesisError

__all__ = ['ImageSynthesizer', 'NonFiniteSynthesisError', 'SYNTHESIS_METHODS', 'SynthesisAugment', 'SyntheticSet',
           'check_method', 'file_sha256', 'load_manifest', 'synthesize_set']
