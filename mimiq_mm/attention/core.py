"""The one attention kernel every adapted backbone runs through.

Adapters (one per backbone family) compute q, k, v with the block's own weights and call
:class:`AttentionCore`, which

* quantizes both inputs of both attention matmuls when quantizer slots are filled
  (q and k of q·kᵀ; probabilities and v of attn·v),
* hands the per-head scores, probabilities and outputs to an active recorder, and
* otherwise uses PyTorch's fused ``scaled_dot_product_attention``, so a model that is neither
  recorded nor quantized runs as fast as the original; so does a float model whose recorders
  want only the per-head outputs. The explicit path computes the scores once and reuses them for
  the softmax, so recording adds no pass over the N×N matrices.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_OUTPUT_ONLY = frozenset({'outputs'})


@dataclass
class TokenLayout:
    """How the N tokens of one attention call map to space.

    Attributes:
        grid (tuple[int, int]): (h, w) of the spatial tokens of one sequence: the patch grid for
            global attention, the window size for window attention.
        num_prefix_tokens (int): tokens before the spatial ones (class / distillation tokens).
        window_size (tuple | None): window (h, w) for Swin-style attention, else None.
        shift_size (tuple | None): cyclic shift (h, w) of the windows; (0, 0) for regular windows.
        windows_per_image (int): how many sequences of the batch dimension belong to one image
            (number of windows; 1 for global attention).
    """
    grid: Tuple[int, int]
    num_prefix_tokens: int = 0
    window_size: Optional[Tuple[int, int]] = None
    shift_size: Optional[Tuple[int, int]] = None
    windows_per_image: int = 1

    @property
    def num_spatial_tokens(self):
        return self.grid[0] * self.grid[1]

    @property
    def is_windowed(self):
        return self.window_size is not None


@dataclass
class AttentionRecord:
    """What one attention call produced, per head.

    Shapes use B' = batch × windows_per_image, H heads, N tokens, D head dims:

    * ``scores``: (B', H, N, N) pre-softmax q·kᵀ·scale, without position bias or mask;
    * ``probs``: (B', H, N, N) attention probabilities after softmax (bias and mask included);
    * ``outputs``: (B', H, N, D) per-head outputs attn·v, before the output projection.

    Only the requested fields are filled; the others stay None.
    """
    name: str
    layout: TokenLayout
    scores: Optional[torch.Tensor] = None
    probs: Optional[torch.Tensor] = None
    outputs: Optional[torch.Tensor] = None


class CaptureContext:
    """Per-model state the cores share: the current image batch and patch grid.

    Filled by a hook on the model's patch-embedding convolution; global-attention cores read the
    grid from it to describe their token layout, even for non-square inputs.
    """

    def __init__(self):
        self.batch_size = None
        self.patch_grid = None
        self.recorders = []

    def on_patch_embed(self, module, inputs, output):
        if isinstance(output, (tuple, list)):
            output = output[0]
        if output.dim() == 4:  # (B, C, h, w)
            self.batch_size = output.shape[0]
            self.patch_grid = (int(output.shape[2]), int(output.shape[3]))


class AttentionCore(nn.Module):
    """softmax(q·kᵀ·scale + bias + mask) · v, with quantizer slots and recording.

    Args:
        name (str): the attention module's name in the model (used in records).
        num_heads (int): heads of the block.
        window_size (tuple | None): set for window attention.
        shift_size (tuple | None): the block's cyclic shift, for window attention.
    """

    def __init__(self, name, num_heads, window_size=None, shift_size=None):
        super().__init__()
        self.attn_name = name
        self.num_heads = num_heads
        self.window_size = tuple(window_size) if window_size is not None else None
        self.shift_size = tuple(shift_size) if shift_size is not None else None
        self.query_quantizer = nn.Identity()
        self.key_quantizer = nn.Identity()
        self.prob_quantizer = nn.Identity()
        self.value_quantizer = nn.Identity()
        # Plain attribute, not a submodule: the context is shared and holds no state_dict.
        self.__dict__['context'] = None

    def extra_repr(self):
        return f'name={self.attn_name}, heads={self.num_heads}, window={self.window_size}'

    @property
    def quantized(self):
        # A disabled quantizer (set_quantization(..., activations=False)) counts as absent, so the
        # core takes the same fused path as the float model and reproduces its outputs exactly.
        return not isinstance(self.prob_quantizer, nn.Identity) and getattr(self.prob_quantizer, 'enabled', True)

    def layout(self, num_tokens, batch_prime, shifted=True):
        """The :class:`TokenLayout` of a call with ``num_tokens`` tokens and B' sequences.

        ``shifted=False`` marks a window call made without a shift mask: the block skipped its
        shift for this input (mmpretrain's Swin does so once the feature map is no larger than
        the window), so the layout reports (0, 0) rather than the configured shift.
        """
        ctx = self.context
        if self.window_size is not None:
            per_image = 1
            if ctx is not None and ctx.batch_size:
                per_image = max(1, batch_prime // ctx.batch_size)
            shift = (self.shift_size or (0, 0)) if shifted else (0, 0)
            return TokenLayout(grid=self.window_size, num_prefix_tokens=num_tokens - self.window_size[0] *
                               self.window_size[1], window_size=self.window_size,
                               shift_size=shift, windows_per_image=per_image)
        grid = ctx.patch_grid if ctx is not None and ctx.patch_grid else None
        if grid is None or grid[0] * grid[1] > num_tokens:
            side = int((num_tokens - 1) ** 0.5)  # fallback: square grid after one class token
            grid = (side, side)
        return TokenLayout(grid=grid, num_prefix_tokens=num_tokens - grid[0] * grid[1])

    def _active_recorders(self):
        ctx = self.context
        return [r for r in ctx.recorders if r.wants(self.attn_name)] if ctx is not None else []

    def forward(self, q, k, v, scale, bias=None, window_mask=None, dropout_p=0.0):
        """
        Args:
            q, k, v (Tensor): (B', H, N, D).
            scale (float): multiplier of q·kᵀ.
            bias (Tensor | None): additive bias broadcastable to (B', H, N, N) (relative position).
            window_mask (Tensor | None): (nW, N, N) additive Swin shift mask, B' = B·nW.
            dropout_p (float): attention dropout (training only).

        Returns:
            Tensor: (B', H, N, D) per-head outputs.
        """
        recorders = self._active_recorders()
        if not self.quantized and all(_OUTPUT_ONLY.issuperset(rec.fields) for rec in recorders):
            # Nothing needs the N×N matrices (no recorder, or recorders of the head outputs only,
            # e.g. L_HAD's teacher and PSAQ): the fused kernel gives the same outputs.
            q, k, v = self.query_quantizer(q), self.key_quantizer(k), self.value_quantizer(v)
            attn_mask = self._additive_mask(bias, window_mask, q)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
            if recorders:
                layout = self.layout(q.shape[-2], q.shape[0], shifted=window_mask is not None)
                for rec in recorders:
                    rec.add(self.attn_name, layout, outputs=out)
            return out

        wanted = {field for rec in recorders for field in rec.fields}
        scores = self.quantized_scores(q, k, scale)
        logits = self._masked_logits(scores, bias, window_mask, inplace='scores' not in wanted)
        probs = logits.softmax(dim=-1)
        if dropout_p > 0:
            probs = F.dropout(probs, p=dropout_p, training=True)
        if 'probs' in wanted or torch.is_grad_enabled() or isinstance(self.prob_quantizer, nn.Identity):
            probs_q = self.prob_quantizer(probs)
        else:  # nothing else reads the float probabilities: quantize them where they are
            probs_q = self.prob_quantizer(probs, out=probs)
        out = probs_q @ self.value_quantizer(v)
        if recorders:
            layout = self.layout(q.shape[-2], q.shape[0], shifted=window_mask is not None)
            for rec in recorders:
                rec.add(self.attn_name, layout, scores=scores, probs=probs, outputs=out)
        return out

    def quantized_scores(self, q, k, scale):
        """``(q̂ · scale) @ k̂ᵀ`` (B', H, N, N), q̂ and k̂ through their quantizers.

        k is quantized after its transpose (per tensor, the same values): the quantized kᵀ comes
        out contiguous for the matmul, and an exported graph (mimiq_mm.deploy, which replaces
        this method to fold ``scale`` into q's dequantization) feeds the matmul directly.
        """
        return (self.query_quantizer(q) * scale) @ self.key_quantizer(k.transpose(-2, -1))

    @staticmethod
    def _masked_logits(scores, bias, window_mask, inplace):
        """``scores + bias + window mask`` (B', H, N, N), added to ``scores`` in place when
        ``inplace`` (the raw scores are not recorded): the sum of the two masks is never built at
        (B', H, N, N)."""
        logits = scores
        if bias is not None:
            bias = bias.to(scores.dtype)
            logits = logits.add_(bias) if inplace else logits + bias
            inplace = True
        if window_mask is not None:
            if not inplace:
                logits = logits.clone()
            b, h, n, _ = logits.shape
            num_windows = window_mask.shape[0]
            logits.view(b // num_windows, num_windows, h, n, n).add_(
                window_mask.to(scores.dtype).view(1, num_windows, 1, n, n))
        return logits

    def _additive_mask(self, bias, window_mask, q):
        mask = bias
        if window_mask is not None:
            n = q.shape[-2]
            num_windows = window_mask.shape[0]
            wm = window_mask.view(1, num_windows, 1, n, n).expand(q.shape[0] // num_windows, -1, -1, -1, -1)
            wm = wm.reshape(q.shape[0], 1, n, n)
            mask = wm if mask is None else mask + wm
        if mask is not None:
            mask = mask.to(q.dtype)
        return mask
