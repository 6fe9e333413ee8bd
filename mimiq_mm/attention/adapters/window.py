"""Swin window attention with a relative position bias table: timm ``WindowAttention`` and the
``WindowMSA`` of mmpretrain, mmdet and mmseg (same parameters: ``qkv``, ``proj``,
``relative_position_bias_table``, ``relative_position_index``)."""
from mmengine.utils import to_2tuple

from .base import AttentionAdapter, is_instance_of
from .vit_qkv import merge_heads, split_heads

WINDOW_CLASSES = (
    'timm.models.swin_transformer.WindowAttention',
    'mmpretrain.models.utils.attention.WindowMSA',
    'mmdet.models.backbones.swin.WindowMSA',
    'mmseg.models.backbones.swin.WindowMSA',
)


class WindowAttentionAdapter(AttentionAdapter):
    family = ('Swin window attention (timm SwinTransformer WindowAttention; mmpretrain, mmdet and '
              'mmseg SwinTransformer WindowMSA)')

    def matches(self, module):
        return is_instance_of(module, *WINDOW_CLASSES)

    def core_geometry(self, module, parent):
        # The shift lives on the parent: mm ShiftWindowMSA.shift_size or timm SwinTransformerBlock.
        shift = getattr(parent, 'shift_size', 0) if parent is not None else 0
        return dict(num_heads=module.num_heads, window_size=tuple(to_2tuple(module.window_size)),
                    shift_size=tuple(to_2tuple(shift)))

    @staticmethod
    def forward(module, x, mask=None):
        """x: (B·nW, N, C); mask: (nW, N, N) additive shift mask or None."""
        q, k, v = split_heads(module.qkv(x), module.num_heads)
        n = x.shape[1]
        bias = module.relative_position_bias_table[module.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # (1, H, N, N)
        dropout = module.attn_drop.p if module.training else 0.0
        out = module.mimiq_core(q, k, v, module.scale, bias=bias, window_mask=mask, dropout_p=dropout)
        return module.proj_drop(module.proj(merge_heads(out)))
