"""Summaries and JSON reports of the analysis tools."""
import json
import os

import numpy as np

from ..utils.tables import console_table


def summarize(values) -> dict:
    """Count, mean, std, min, quartiles and max of a 1-D sequence of numbers."""
    data = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return dict(count=int(data.size), mean=float(data.mean()), std=float(data.std()), min=float(data.min()),
                q1=float(q1), median=float(median), q3=float(q3), max=float(data.max()))


def format_summary_table(summaries: dict) -> str:
    """A console table of ``{name: summarize(...)}``."""
    keys = ('count', 'mean', 'std', 'min', 'q1', 'median', 'q3', 'max')
    return console_table(['source', *keys], [[name] + [s['count']] + [f'{s[k]:.4f}' for k in keys[1:]]
                                            for name, s in summaries.items()])


def save_json(data, path) -> str:
    """Write ``data`` as indented JSON (folders created); returns the path."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)
    return path
