"""Figures of the analysis tools, drawn with matplotlib's Agg canvas.

Figures are built with the object API (``Figure`` + ``FigureCanvasAgg``) rather than pyplot, so
nothing here touches the global backend of a user's interactive session.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DPI = 110


def new_figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path) -> str:
    """Write ``figure`` as PNG to ``path`` (folders created); returns the path."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, format='png', dpi=DPI, bbox_inches='tight')
    return path


def to_hwc(pixels) -> np.ndarray:
    """uint8 (3, H, W) tensor or array -> (H, W, 3) array for imshow."""
    array = pixels.numpy() if hasattr(pixels, 'numpy') else np.asarray(pixels)
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _hide_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass
class HeadMapRow:
    """One row of a head-map figure: an input image and the head maps of its query patch.

    Attributes:
        label (str): row title (source, image, label, D_q).
        image (Tensor): uint8 (3, H, W) RGB input.
        query_pixel (tuple[float, float]): (x, y) of the query patch centre on the image.
        maps (np.ndarray): (H, h, w) maps in [0, 1].
        query_cell (tuple[int, int] | None): (row, col) of the query in the maps' grid, marked.
    """
    label: str
    image: object
    query_pixel: Tuple[float, float]
    maps: np.ndarray
    query_cell: Optional[Tuple[int, int]] = None


def plot_head_maps(rows: Sequence[HeadMapRow], title, path, cmap='viridis') -> str:
    """Rows = images, first column the input with the query marked, then one column per head."""
    num_heads = max(len(row.maps) for row in rows)
    cell = 1.25
    figure = new_figure(cell * (num_heads + 1) + 1.6, cell * len(rows) + 0.6)
    axes = figure.subplots(len(rows), num_heads + 1, squeeze=False)
    for r, row in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(to_hwc(row.image), interpolation='nearest')
        ax.plot(*row.query_pixel, marker='x', color='red', markersize=8, markeredgewidth=2)
        ax.set_ylabel(row.label, rotation=0, ha='right', va='center', fontsize=8)
        _hide_ticks(ax)
        for h in range(num_heads):
            ax = axes[r, h + 1]
            _hide_ticks(ax)
            if h >= len(row.maps):
                ax.set_axis_off()
                continue
            ax.imshow(row.maps[h], cmap=cmap, vmin=0, vmax=1, interpolation='nearest')
            if row.query_cell is not None:
                ax.plot(row.query_cell[1], row.query_cell[0], marker='+', color='red', markersize=5)
            if r == 0:
                ax.set_title(f'H{h}', fontsize=9)
    axes[0, 0].set_title('input', fontsize=9)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def plot_similarity_histograms(values: Dict[str, Sequence[float]], path, bins=30, density=False,
                               xlabel='inter-head attention similarity per image (1 - L_IHC)') -> str:
    """Overlaid histograms, one per source, with each source's mean as a dashed line.

    ``density`` normalises each histogram, to compare sources with different image counts.
    """
    from matplotlib.ticker import MaxNLocator
    figure = new_figure(7, 4)
    ax = figure.subplots()
    everything = np.concatenate([np.asarray(v, dtype=float) for v in values.values()])
    low, high = float(everything.min()), float(everything.max())
    edges = np.linspace(low, high if high > low else low + 1e-3, bins + 1)
    colors = [f'C{i}' for i in range(len(values))]
    for color, (name, data) in zip(colors, values.items()):
        data = np.asarray(data, dtype=float)
        ax.hist(data, bins=edges, alpha=0.5, color=color, density=density,
                label=f'{name}  (n={len(data)}, mean {data.mean():.3f})')
        ax.axvline(data.mean(), color=color, linestyle='--', linewidth=1.5)
    ax.set_xlabel(xlabel)
    if density:
        ax.set_ylabel('density')
    else:
        ax.set_ylabel('images')
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.set_title('Inter-head attention similarity: real vs synthetic')
    return save_figure(figure, path)


def plot_sample_grid(images, captions: Sequence[str], path, ncols=8, title=None) -> str:
    """A grid of uint8 (3, H, W) images with a caption under each."""
    count = len(images)
    ncols = max(1, min(ncols, count))
    nrows = -(-count // ncols)
    figure = new_figure(1.5 * ncols, 1.7 * nrows + (0.4 if title else 0))
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < count:
            ax.imshow(to_hwc(images[index]), interpolation='nearest')
            ax.set_title(captions[index], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def plot_layer_distances(layer_labels: Sequence[str], values: Dict[str, Dict[str, List[float]]], path,
                         title='Teacher vs quantized student: per-head output distance') -> str:
    """Grouped bars per layer, one subplot per metric, one bar colour per image source.

    Args:
        layer_labels: x tick labels (one per layer).
        values: source name -> metric -> per-layer values.
    """
    sources = list(values)
    metrics = list(next(iter(values.values())))
    figure = new_figure(max(6.0, 0.45 * len(layer_labels) * max(1, len(sources)) + 2), 2.8 * len(metrics))
    axes = figure.subplots(len(metrics), 1, squeeze=False)[:, 0]
    x = np.arange(len(layer_labels))
    width = 0.8 / len(sources)
    for ax, metric in zip(axes, metrics):
        for i, source in enumerate(sources):
            ax.bar(x + (i - (len(sources) - 1) / 2) * width, values[source][metric], width, label=source,
                   color=f'C{i}')
        ax.set_ylabel(metric.upper())
        ax.set_xticks(x)
        ax.set_xticklabels(layer_labels, fontsize=8)
        ax.grid(axis='y', alpha=0.3)
    axes[-1].set_xlabel('attention layer')
    axes[0].legend(fontsize=8)
    axes[0].set_title(title)
    return save_figure(figure, path)


def plot_label_map_agreement(images, reference_name: str, references: Sequence[np.ndarray],
                             maps: Dict[str, Sequence[np.ndarray]], row_titles: Sequence[str], path,
                             num_classes: int) -> str:
    """One row per image: the image, the reference label map, then each model's map with the
    pixels where it differs from the reference in red (the fraction of them in the title).

    Args:
        images: uint8 (H, W, 3) arrays.
        references: (H, W) integer label maps, one per image.
        maps: {model name: (H, W) label maps, one per image}.
    """
    from matplotlib import colormaps
    palette = colormaps['tab10' if num_classes <= 10 else 'tab20'].resampled(max(num_classes, 2))
    ncols = 2 + len(maps)
    figure = new_figure(1.9 * ncols, 2.0 * len(images))
    axes = figure.subplots(len(images), ncols, squeeze=False)
    for row, (image, reference) in enumerate(zip(images, references)):
        coloured_reference = palette(reference % palette.N)[..., :3]
        panels = [(image, row_titles[row]), (coloured_reference, reference_name)]
        for name, model_maps in maps.items():
            differs = model_maps[row] != reference
            panel = palette(model_maps[row] % palette.N)[..., :3].copy()
            panel[differs] = (1.0, 0.0, 0.0)
            panels.append((panel, f'{name}\n{100 * differs.mean():.1f} % differ'))
        for ax, (picture, title) in zip(axes[row], panels):
            ax.imshow(picture, interpolation='nearest')
            ax.set_title(title, fontsize=8)
            _hide_ticks(ax)
    return save_figure(figure, path)


def plot_detection_agreement(images, reference_name: str, reference_boxes: Sequence[list],
                             model_boxes: Dict[str, Sequence[list]], row_titles: Sequence[str], path,
                             model_titles: Dict[str, str]) -> str:
    """One row per image: the image, the reference's boxes (white), then each model's boxes
    coloured against the reference (from :func:`mimiq_mm.analysis.detections.boxes_to_draw`).

    Args:
        images: uint8 (H, W, 3) arrays.
        reference_boxes: per image, (N, 4) xyxy boxes.
        model_boxes: {model name: per image, [(box, colour, line style)]}.
        model_titles: {model name: column title}.
    """
    from matplotlib.patches import Rectangle
    ncols = 2 + len(model_boxes)
    figure = new_figure(2.2 * ncols, 2.4 * len(images))
    axes = figure.subplots(len(images), ncols, squeeze=False, gridspec_kw=dict(hspace=0.35))  # two-line titles
    for row, image in enumerate(images):
        columns = [(row_titles[row], []), (reference_name, [(b, 'white', '-') for b in reference_boxes[row]])]
        columns += [(model_titles[name], boxes[row]) for name, boxes in model_boxes.items()]
        for ax, (title, boxes) in zip(axes[row], columns):
            ax.imshow(image, interpolation='nearest')
            for (x1, y1, x2, y2), colour, style in boxes:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linestyle=style,
                                       linewidth=1.2))
            ax.set_title(title, fontsize=8)
            _hide_ticks(ax)
    return save_figure(figure, path)
