"""The user-facing entry points, as in mmpretrain/mmdet/mmseg ``apis``."""
from .model import MODEL_PARTS, build_model, init_model, load_config, load_weights

__all__ = ['MODEL_PARTS', 'build_model', 'init_model', 'load_config', 'load_weights']
