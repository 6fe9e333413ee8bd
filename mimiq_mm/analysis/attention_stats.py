"""Per-head attention statistics for analysis: layer selection, recording, per-image inter-head
similarity (paper Fig. 3) and the head maps of one query patch (paper Fig. 2)."""
import math
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from ..attention import AttentionRecord, AttentionRecorder, attention_cores, get_capture_context
from ..losses import head_coherency, minmax_normalize, require_field
from ..losses.ihc import SIMILARITIES, spatial_scores
from .errors import AnalysisInputError, LayerIndexError
from .images import batches

MAP_FIELDS = ('scores', 'probs')


def plain_forward(model, inputs):
    """Default way to run a model: ``model(inputs)``."""
    return model(inputs)


def attention_layer_names(model) -> List[str]:
    """Names of the model's attention modules, in the order their records come."""
    return [core.attn_name for core in attention_cores(model)]


def check_layers(layers: Optional[Sequence[int]], num_layers: int) -> List[int]:
    """``layers`` as non-negative indices (negatives count from the end); None = all layers.

    Raises:
        LayerIndexError: an index is out of range; the message says how many layers exist.
    """
    if layers is None:
        return list(range(num_layers))
    checked = []
    for index in layers:
        if not -num_layers <= index < num_layers:
            raise LayerIndexError(f'layer index {index} is out of range: the model has {num_layers} attention '
                                  f'layers, so use 0..{num_layers - 1} (or -1..-{num_layers} from the end)')
        checked.append(index % num_layers)
    return checked


@torch.no_grad()
def record_attention(model, inputs, fields=('scores',), layers=None,
                     forward: Callable = plain_forward) -> List[AttentionRecord]:
    """Run ``forward(model, inputs)`` once and return the detached records of ``layers``.

    Args:
        model (nn.Module): a model with attention capture installed (or installable).
        inputs (Tensor): normalised (B, 3, H, W).
        fields (Sequence[str]): record fields to keep ('scores', 'probs', 'outputs').
        layers (Sequence[int] | None): attention layer indices; None = all.
        forward (callable): ``forward(model, inputs)`` (e.g. the distiller's task adapter).

    Returns:
        list[AttentionRecord]: one per recorded layer, in call order.
    """
    layers = check_layers(layers, len(attention_cores(model)))
    with AttentionRecorder(model, fields=fields, layers=layers, detach=True) as recorder:
        forward(model, inputs)
    return recorder.records


def per_image(values: torch.Tensor, record: AttentionRecord) -> torch.Tensor:
    """(B', ...) -> (B, windows_per_image, ...): regroup the sequences of a record per image."""
    per = record.layout.windows_per_image
    if values.shape[0] % per:
        raise ValueError(f"record '{record.name}': {values.shape[0]} sequences are not a multiple of "
                         f'{per} windows per image')
    return values.view(values.shape[0] // per, per, *values.shape[1:])


def check_similarity(similarity):
    if similarity not in SIMILARITIES:
        raise AnalysisInputError(f'similarity must be one of {SIMILARITIES}, got {similarity!r}')
    return similarity


def records_head_similarity(records: Sequence[AttentionRecord], similarity='abs') -> torch.Tensor:
    """Inter-head attention similarity per image = 1 - L_IHC of that image alone.

    The mean over layers, spatial queries (and windows) of D_q, with prefix tokens dropped as
    queries and keys; maps are the min-max normalised pre-softmax scores, as in L_IHC.

    Args:
        records (Sequence[AttentionRecord]): with ``scores``, all from one batch of B images.

    Returns:
        Tensor: (B,) similarity per image.
    """
    if not records:
        raise AnalysisInputError('no attention records to measure; check the layer selection')
    check_similarity(similarity)
    per_layer = []
    for record in records:
        spatial_scores(record)                                             # checks the layout
        coherency = head_coherency(record.scores, record.layout.num_prefix_tokens, similarity)  # (B', Q)
        per_layer.append(per_image(coherency, record).flatten(1).mean(dim=1))  # (B,)
    return torch.stack(per_layer).mean(dim=0)


def image_head_similarity(model, inputs, layers=None, similarity='abs', batch_size=16,
                          forward: Callable = plain_forward) -> torch.Tensor:
    """:func:`records_head_similarity` of every image in ``inputs`` (N, 3, H, W), in batches.

    Returns:
        Tensor: (N,) on the CPU.
    """
    values = []
    for part in batches(inputs.shape[0], batch_size):
        records = record_attention(model, inputs[part], ('scores',), layers, forward)
        values.append(records_head_similarity(records, similarity).cpu())
    return torch.cat(values)


# ----------------------------------------------------------------------------- one query patch

Query = Union[str, Tuple[int, int]]


def resolve_query(query: Query, grid: Tuple[int, int]) -> Tuple[int, int]:
    """(row, col) of ``query`` ('center' or (row, col)) in a token ``grid`` (h, w)."""
    h, w = grid
    if query == 'center':
        return h // 2, w // 2
    row, col = query
    if not (0 <= row < h and 0 <= col < w):
        raise AnalysisInputError(f'query patch ({row}, {col}) is outside the {h}x{w} patch grid; use rows '
                                 f'0..{h - 1}, columns 0..{w - 1} or --query center')
    return int(row), int(col)


def _rescale_cell(cell, from_grid, to_grid):
    """The cell of ``to_grid`` holding the centre of ``cell`` of ``from_grid`` (same relative place)."""
    return tuple((2 * c + 1) * t // (2 * f) for c, f, t in zip(cell, from_grid, to_grid))


def _stage_grid(patch_grid, record):
    """Token grid (h, w) of a window-attention layer's stage: the patch grid halved k times, the
    first k whose window count matches the record (Swin's patch merging halves each stage)."""
    wh, ww = record.layout.window_size
    for k in range(8):
        h, w = math.ceil(patch_grid[0] / 2 ** k), math.ceil(patch_grid[1] / 2 ** k)
        if math.ceil(h / wh) * math.ceil(w / ww) == record.layout.windows_per_image:
            return h, w
    return None


def _window_position(cell, stage_grid, record):
    """(window index, token index in the window) of stage token ``cell`` after the cyclic shift."""
    layout = record.layout
    wh, ww = layout.window_size
    sh, sw = layout.shift_size or (0, 0)
    h, w = stage_grid
    # Shifted windows roll the map by -shift before partitioning: token r lands at (r - shift) mod h.
    row, col = (cell[0] - sh) % h, (cell[1] - sw) % w
    windows_per_row = math.ceil(w / ww)
    return (row // wh) * windows_per_row + col // ww, (row % wh) * ww + col % ww


@dataclass
class QueryHeadMaps:
    """The per-head maps of one query patch in one layer.

    Attributes:
        layer_name (str): the attention module.
        maps (Tensor): (B, H, h, w) min-max normalised maps over the spatial keys (for window
            attention: the keys of the query's window).
        query_cell (tuple[int, int]): the query's (row, col) in ``maps``' grid.
        coherency (Tensor): (B,) D_q of this query (mean f(SSIM) between its head maps).
        windowed (bool): the maps cover the query's attention window, not the whole image.
    """
    layer_name: str
    maps: torch.Tensor
    query_cell: Tuple[int, int]
    coherency: torch.Tensor
    windowed: bool = False


def query_head_maps(record: AttentionRecord, query: Query, patch_grid=None, field='scores',
                    similarity='abs') -> QueryHeadMaps:
    """Head maps of one query patch, as in the paper's Fig. 2.

    Args:
        record (AttentionRecord): with ``field`` (B', H, N, N).
        query: 'center' or (row, col) on the patch grid of the first layer.
        patch_grid (tuple | None): (h, w) patch grid of the image; needed for window attention,
            where the query is placed in its stage's grid and window. Defaults to the layer grid.
        field (str): 'scores' (pre-softmax, as L_IHC uses) or 'probs'.
    """
    if field not in MAP_FIELDS:
        raise AnalysisInputError(f'map field must be one of {MAP_FIELDS}, got {field!r}')
    values = require_field(record, field)
    layout = record.layout
    prefix = layout.num_prefix_tokens
    patch_grid = tuple(patch_grid or layout.grid)
    row, col = resolve_query(query, patch_grid)
    if not layout.is_windowed:
        cell = _rescale_cell((row, col), patch_grid, layout.grid)
        rows = values[:, :, prefix + cell[0] * layout.grid[1] + cell[1], prefix:]        # (B, H, K)
    else:
        stage = _stage_grid(patch_grid, record)
        if stage is None:
            warnings.warn(f"cannot place the query in the windows of '{record.name}'; showing the centre "
                          'token of its first window')
            window, token = 0, layout.num_spatial_tokens // 2
        else:
            window, token = _window_position(_rescale_cell((row, col), patch_grid, stage), stage, record)
        rows = per_image(values, record)[:, window, :, prefix + token, prefix:]          # (B, H, K)
        cell = divmod(token, layout.grid[1])
    maps = minmax_normalize(rows, dim=-1)
    coherency = head_coherency(rows.unsqueeze(2), similarity=check_similarity(similarity))[:, 0]   # (B,)
    return QueryHeadMaps(layer_name=record.name, maps=maps.view(*maps.shape[:2], *layout.grid).cpu(),
                         query_cell=tuple(int(v) for v in cell), coherency=coherency.cpu(),
                         windowed=layout.is_windowed)


def patch_grid_of(model) -> Optional[Tuple[int, int]]:
    """The patch grid (h, w) of the model's last forward pass (from its capture context)."""
    grid = get_capture_context(model).patch_grid
    return tuple(grid) if grid else None


def patch_centre_pixel(cell, grid, image_size) -> Tuple[float, float]:
    """(x, y) pixel centre of patch ``cell`` = (row, col) of a ``grid`` (h, w) on an image (H, W)."""
    return ((cell[1] + 0.5) * image_size[1] / grid[1] - 0.5, (cell[0] + 0.5) * image_size[0] / grid[0] - 0.5)
