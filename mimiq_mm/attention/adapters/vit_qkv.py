"""Global multi-head self-attention with a fused ``qkv`` Linear: timm ``Attention`` (ViT, DeiT)
and mmpretrain ``MultiheadAttention`` (ViT, DeiT)."""
import torch

from .base import AttentionAdapter, is_instance_of


def split_heads(qkv_out, num_heads):
    """(B, N, 3·H·D) -> three (B, H, N, D) tensors."""
    b, n, _ = qkv_out.shape
    q, k, v = qkv_out.reshape(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def merge_heads(out):
    """(B, H, N, D) -> (B, N, H·D)."""
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def additive_mask(mask, dtype):
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros_like(mask, dtype=dtype).masked_fill(~mask, float('-inf'))


class TimmAttentionAdapter(AttentionAdapter):
    """timm ``Attention`` (``timm/layers/attention.py`` in timm ≥ 1.0; ViT and DeiT)."""
    family = 'timm VisionTransformer/DeiT (timm.layers.Attention)'

    def matches(self, module):
        return is_instance_of(module, 'timm:Attention') and hasattr(module, 'qkv')

    @staticmethod
    def forward(module, x, attn_mask=None, is_causal=False, **unused):
        if is_causal:
            raise NotImplementedError('causal attention is not used by vision transformers')
        gate = module.gate(x).sigmoid() if getattr(module, 'gate', None) is not None else None
        q, k, v = split_heads(module.qkv(x), module.num_heads)
        # Older timm releases lack some of these submodules (q_norm/k_norm, norm, gate).
        q_norm, k_norm = getattr(module, 'q_norm', None), getattr(module, 'k_norm', None)
        if q_norm is not None:
            q = q_norm(q)
        if k_norm is not None:
            k = k_norm(k)
        dropout = module.attn_drop.p if module.training else 0.0
        out = module.mimiq_core(q, k, v, module.scale, bias=additive_mask(attn_mask, q.dtype), dropout_p=dropout)
        x = merge_heads(out)
        norm = getattr(module, 'norm', None)
        if norm is not None:
            x = norm(x)
        if gate is not None:
            x = x * gate
        return module.proj_drop(module.proj(x))


class MMPretrainMultiheadAttentionAdapter(AttentionAdapter):
    """mmpretrain ``MultiheadAttention`` (its VisionTransformer / DeiT backbones)."""
    family = 'mmpretrain VisionTransformer/DeiT (mmpretrain.models.utils.MultiheadAttention)'

    def matches(self, module):
        return is_instance_of(module, 'mmpretrain.models.utils.attention.MultiheadAttention')

    @staticmethod
    def forward(module, x):
        q, k, v = split_heads(module.qkv(x), module.num_heads)
        dropout = module.attn_drop if module.training else 0.0
        out = module.mimiq_core(q, k, v, module.head_dims ** -0.5, dropout_p=dropout)
        x = module.proj(merge_heads(out))
        x = module.out_drop(module.gamma1(module.proj_drop(x)))
        if module.v_shortcut:
            x = v.squeeze(1) + x
        return x
