"""Attention records built by hand for the loss tests."""
import torch

from mimiq_mm.attention.core import AttentionRecord, TokenLayout


def scores_record(scores, grid, prefix, window=False, name='blk'):
    layout = TokenLayout(grid=tuple(grid), num_prefix_tokens=prefix,
                         window_size=tuple(grid) if window else None, shift_size=(0, 0) if window else None)
    return AttentionRecord(name=name, layout=layout, scores=scores)


def outputs_record(outputs, grid, prefix, name='blk'):
    return AttentionRecord(name=name, layout=TokenLayout(grid=tuple(grid), num_prefix_tokens=prefix),
                           outputs=outputs)


def random_scores(batch, heads, grid, prefix, seed=0, dtype=torch.float32):
    n = prefix + grid[0] * grid[1]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, n, n, generator=g, dtype=dtype)
