"""mmcv ``MultiheadAttention`` (wrapping ``nn.MultiheadAttention``): the attention of mmseg's
VisionTransformer (UPerNet + DeiT/ViT backbones)."""
import torch.nn as nn
import torch.nn.functional as F

from .base import AttentionAdapter, is_instance_of


class PackedInProjection(nn.Module):
    """Stands in for ``nn.MultiheadAttention`` with the same parameter names.

    Keeps ``in_proj_weight``/``in_proj_bias``/``out_proj`` (so checkpoints load unchanged) but
    computes the q/k/v projection itself, which lets the quantizer reach the packed weight and
    its input through ``weight_quantizer``/``input_quantizer``.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim:
            raise NotImplementedError('nn.MultiheadAttention with kdim/vdim != embed_dim is not supported')
        self.embed_dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.dropout = mha.dropout
        self.batch_first = mha.batch_first
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.weight_quantizer = nn.Identity()
        self.input_quantizer = nn.Identity()

    def project(self, x, index):
        """Project (B, N, C) ``x`` with the ``index``-th third (0 q, 1 k, 2 v) of the packed weight."""
        c = self.embed_dim
        weight = self.weight_quantizer(self.in_proj_weight)[index * c:(index + 1) * c]
        bias = None if self.in_proj_bias is None else self.in_proj_bias[index * c:(index + 1) * c]
        return F.linear(self.input_quantizer(x), weight, bias)


class MMCVMultiheadAttentionAdapter(AttentionAdapter):
    family = 'mmseg VisionTransformer (mmcv.cnn.bricks.transformer.MultiheadAttention)'

    def matches(self, module):
        return is_instance_of(module, 'mmcv.cnn.bricks.transformer.MultiheadAttention')

    def prepare(self, module):
        if isinstance(module.attn, nn.MultiheadAttention):
            module.attn = PackedInProjection(module.attn)

    @staticmethod
    def forward(module, query, key=None, value=None, identity=None, query_pos=None, key_pos=None,
                attn_mask=None, key_padding_mask=None, **unused):
        if attn_mask is not None or key_padding_mask is not None:
            raise NotImplementedError('masked mmcv MultiheadAttention is not used by ViT backbones')
        key = query if key is None else key
        value = key if value is None else value
        identity = query if identity is None else identity
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        if not module.batch_first:  # (N, B, C) -> (B, N, C)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        proj = module.attn
        heads = proj.num_heads

        def to_heads(t):
            b, n, c = t.shape
            return t.reshape(b, n, heads, c // heads).transpose(1, 2)

        q = to_heads(proj.project(query, 0))
        k = to_heads(proj.project(key, 1))
        v = to_heads(proj.project(value, 2))
        dropout = proj.dropout if module.training else 0.0
        out = module.mimiq_core(q, k, v, q.shape[-1] ** -0.5, dropout_p=dropout)
        b, h, n, d = out.shape
        out = proj.out_proj(out.transpose(1, 2).reshape(b, n, h * d))
        if not module.batch_first:
            out = out.transpose(0, 1)
        return identity + module.dropout_layer(module.proj_drop(out))
