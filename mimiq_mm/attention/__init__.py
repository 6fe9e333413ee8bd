"""Per-head attention capture for every supported ViT/DeiT/Swin implementation."""
from .core import AttentionCore, AttentionRecord, CaptureContext, TokenLayout
from .install import (UnsupportedBackboneError, attention_cores, get_capture_context,
                      install_attention_capture, supported_families)
from .recorder import AttentionRecorder

__all__ = ['AttentionCore', 'AttentionRecord', 'AttentionRecorder', 'CaptureContext', 'TokenLayout',
           'UnsupportedBackboneError', 'attention_cores', 'get_capture_context', 'install_attention_capture',
           'supported_families']
