"""The user-facing entry points, as in mmpretrain/mmdet/mmseg ``apis``."""
from .checkpoint import checkpoint_state_dict, load_checkpoint, load_matching_weights, load_weights
from .model import MODEL_PARTS, build_model, init_model, load_config

__all__ = ['MODEL_PARTS', 'build_model', 'checkpoint_state_dict', 'init_model', 'load_checkpoint', 'load_config',
           'load_matching_weights', 'load_weights']
