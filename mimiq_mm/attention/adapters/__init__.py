from .base import AttentionAdapter
from .mmcv_mha import MMCVMultiheadAttentionAdapter, PackedInProjection
from .vit_qkv import MMPretrainMultiheadAttentionAdapter, TimmAttentionAdapter
from .window import WindowAttentionAdapter

#: every supported family, tried in order
ADAPTERS = (TimmAttentionAdapter(), MMPretrainMultiheadAttentionAdapter(), MMCVMultiheadAttentionAdapter(),
            WindowAttentionAdapter())

__all__ = ['AttentionAdapter', 'ADAPTERS', 'PackedInProjection', 'TimmAttentionAdapter',
           'MMPretrainMultiheadAttentionAdapter', 'MMCVMultiheadAttentionAdapter', 'WindowAttentionAdapter']
