"""The result files behind the figures of the README and docs/ (``benchmarks/results/``): reading
them, and the pieces every generated table shares (a cell, the CPU, the source line)."""
import json
import os.path as osp

from ..paths import REPO_ROOT

RESULTS = osp.join(REPO_ROOT, 'benchmarks', 'results')


def load(name):
    path = osp.join(RESULTS, name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: the result file a README table names is missing (make it with the '
                                f'command of benchmarks/README.md, or drop the table)')
    with open(path) as f:
        return json.load(f)


def cpu_line(record):
    """'AMD EPYC (AVX2, AVX512, VNNI, BF16)' from a result's provenance."""
    cpu = record.get('provenance', {}).get('cpu')
    if not cpu:
        return 'CPU not recorded'
    features = [k.upper() for k in ('avx2', 'avx512', 'vnni', 'amx', 'bf16') if cpu.get(k)]
    return f"{cpu.get('model') or '?'} ({', '.join(features) or 'no AVX2'})"


def bits_label(bits):
    return f'{bits[:2].upper()}/{bits[2:].upper()}'


#: rows of older result files whose recipe row has since gone
RETIRED_ROWS = dict(mimiq_auto="MimiQ (its LSQ start chosen by `lsq_init='auto'`, since retired)")


def row_labels(data, default_recipe):
    """{row: label} of the recipe a table driver's result was made with (its ``recipe``, a config
    of this checkout), rows since retired included."""
    rows = recipe_rows(data, default_recipe)
    return {**RETIRED_ROWS, **{key: row.get('label', key) for key, row in rows.items()}}


def recipe_rows(data, default_recipe):
    """The rows of the recipe a table driver's result was made with (see :func:`row_labels`)."""
    from mmengine.config import Config
    recipe = data.get('recipe') or default_recipe
    if osp.isabs(recipe) or not osp.isfile(osp.join(REPO_ROOT, recipe)):
        recipe = default_recipe
    return Config.fromfile(osp.join(REPO_ROOT, recipe)).rows


def cell(summary, row, bits, metric, digits=2):
    """'mean ± std' over seeds of one cell ('mean' for one seed, '—' where not measured)."""
    value = ((summary.get(row) or {}).get(bits) or {}).get(metric)
    if not value:
        return '—'
    if value['n'] == 1:
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def source_line(name, data):
    """Where a table comes from: the file, the machine and the wall time."""
    invocations = data.get('invocations') or []
    minutes = sum(i.get('seconds') or 0 for i in invocations) / 60
    machine = cpu_line(data) if 'provenance' in data else (
        (invocations[0].get('device') if invocations else None) or 'machine not recorded') + ', CPU model not recorded'
    seeds = sorted({s for t in data['summary'].values() for r in t.values() for b in r.values()
                    for m in b.values() if isinstance(m, dict) for s in m.get('seeds', [])})
    return (f"Seeds {', '.join(map(str, seeds))} (mean ± std where more than one); {machine}; {minutes:.0f} min of wall time in "
            f"{len(invocations)} invocation(s); [`{name[:-5]}.md`](benchmarks/results/{name[:-5]}.md).")


BITS_ORDER = ('w8a8', 'w4a8', 'w4a4', 'w3a3', 'w2a4')
