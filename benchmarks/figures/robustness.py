"""Generators of the robustness tables: the default recipe against noise PTQ and the two fixed LSQ
starts, per cell and pooled over every table (the checks "default ≥ noise PTQ", "within 1 point of
the better fixed start in 90 % of cells", "never more than 3 below it")."""
import re

from .sources import BITS_ORDER, bits_label, cpu_line, load, source_line

def digits_robustness(name):
    """The digits robustness cells (benchmarks.digits_runs robustness)."""
    data = load(name)
    rows = [('noise_ptq', 'noise PTQ'), ('mimiq', '**default**'), ('mimiq_lsq', "LSQ's start"),
            ('mimiq_lsqplus', 'min-max start')]
    lines = ['| threads | bits | ' + ' | '.join(label for _, label in rows) + ' |', '|---|---|' + '---|' * len(rows)]
    for cell in data['cells']:
        lines.append(f"| {cell['threads']} | {bits_label(cell['bits'])} | "
                     + ' | '.join(f'{cell[key]:.2f}' for key, _ in rows) + ' |')
    lines += ['', f'{cpu_line(data)}; ' + '; '.join(f"{c['check']}: **{c['status']}**" for c in data['checks']) + '.']
    return lines


def robustness_cells(data, metric, default='mimiq', ptq='noise_ptq', fixed=('mimiq_lsq', 'mimiq_lsqplus')):
    """Every (teacher, bits) cell of a robustness table with the default, PTQ and fixed-start means."""
    cells = []
    for teacher in data['teacher_names']:
        summary = data['summary'].get(teacher, {})
        for bits in [b for b in BITS_ORDER if b in data['bits']]:
            value = lambda row: (((summary.get(row) or {}).get(bits) or {}).get(metric) or {}).get('mean')  # noqa: E731
            if None in (value(default), value(ptq)) or any(value(f) is None for f in fixed):
                continue
            best = max(value(f) for f in fixed)
            cells.append(dict(teacher=teacher, bits=bits, ptq=value(ptq), default=value(default),
                              fixed=[value(f) for f in fixed], below_best_fixed=best - value(default)))
    return cells


def fp_value(data, teacher, metric):
    """The full-precision teacher's ``metric`` on the scale of the table's cells (a fidelity metric's
    is fixed: the teacher against itself)."""
    spec = next((m for m in data.get('metrics') or [] if m['key'] == metric), {})
    if spec.get('fp') is not None:
        return spec['fp']
    value = data['teachers'][teacher]['metrics'].get(metric)
    return None if value is None else value * spec.get('scale', 1.0)


def check_counts(cells) -> tuple:
    """(cells, default ≥ noise PTQ, default within 1 of the better fixed start, most below it)."""
    return (len(cells), sum(c['default'] >= c['ptq'] for c in cells),
            sum(c['below_best_fixed'] <= 1 for c in cells), max(c['below_best_fixed'] for c in cells))


def verdict(ok) -> str:
    return '**pass**' if ok else '**FAIL**'


def unit_threads(data, row='mimiq'):
    """The CPU threads of each unit of ``row`` (its records' device string), e.g. '1', or '1, 2'."""
    found = {m.group(1) for r in data.get('results') or [] if r.get('row') == row
             for m in [re.search(r'(\d+) threads?\)', r.get('device') or '')] if m}
    return ', '.join(sorted(found, key=int)) or '?'


def robustness_table(*args):
    """Table driver robustness results (configs/*/robustness.py): the default recipe against noise
    PTQ and the fixed LSQ starts per teacher, bit-width and metric (default top-1), and the three
    checks over all their cells. ``args``: result files (``*.json``; with several, e.g. one per
    thread count, a column gives each cell's threads), then the metrics."""
    file_names = [a for a in args if a.endswith('.json')]
    metrics = [a for a in args if not a.endswith('.json')] or ['accuracy/top1']
    files = [(name, load(name)) for name in file_names]
    several, threads = len(metrics) > 1, len(files) > 1
    lines = ['| ' + 'threads | ' * threads + 'teacher (FP) | bits | ' + 'metric | ' * several
             + 'noise PTQ | **default** | LSQ\'s start | min-max start | default − better fixed |',
             '|' + '---|' * threads + '---|---|' + '---|' * several + '---|---|---|---|---|']
    cells = []
    for name, data in files:
        metric_names = {m['key']: m['name'] for m in data.get('metrics') or []}
        threads_cell = f'{unit_threads(data)} | ' * threads
        for metric in metrics:
            for c in robustness_cells(data, metric):
                cells.append(c)
                fp = fp_value(data, c['teacher'], metric) or 0
                lines.append('| ' + threads_cell + f"{c['teacher']} ({fp:.2f}) | "
                             f"{bits_label(c['bits'])} | " + f"{metric_names.get(metric, metric)} | " * several
                             + f"{c['ptq']:.2f} | {c['default']:.2f} | {c['fixed'][0]:.2f} | {c['fixed'][1]:.2f} | "
                               f"{-c['below_best_fixed']:+.2f} |".replace('-0.00', '+0.00'))
    if not cells:
        return lines + ['', 'No complete cell yet.']
    n, above, within_1, worst = check_counts(cells)
    lines += ['', f'Checks over the {n} cells: default ≥ noise PTQ in {above} ({verdict(above == n)}); '
              f'within 1 point of the better fixed start in {within_1} ({within_1 / n:.0%}, '
              f'{verdict(within_1 >= 0.9 * n)} at 90 %); at most {max(worst, 0):.2f} below it '
              f'({verdict(worst <= 3)} at 3). One seed per cell.']
    if not threads:
        return lines[:-1] + [lines[-1] + ' ' + source_line(*files[0])]
    return lines + [''] + [f'- {unit_threads(data)} thread(s) per unit: ' + source_line(name, data)
                           for name, data in files]


def file_cells(name):
    """(label, threads, cells) of one robustness result file, its cells as
    :func:`robustness_cells` gives them, for every metric it has: a table driver's (one thread
    count per file), or the digits runs' (one group per thread count)."""
    data = load(name)
    if 'cells' in data:  # benchmarks.digits_runs robustness
        return [('digits demo teacher', str(t),
                 [dict(c, ptq=c['noise_ptq'], default=c['mimiq']) for c in data['cells'] if c['threads'] == t])
                for t in sorted({c['threads'] for c in data['cells']})]
    metrics = [m['key'] for m in data.get('metrics') or []] or ['accuracy/top1']
    cells = [c for metric in metrics for c in robustness_cells(data, metric)]
    teachers = ', '.join(data['teacher_names'])
    return [(f"{data.get('benchmark', name)}: {teachers}", unit_threads(data), cells)]


def robustness_summary(*names):
    """The three checks of the robustness tables per file and thread count, and pooled over all."""
    lines = ['| table | threads | cells | default ≥ noise PTQ | within 1 point of the better fixed start | '
             'most below it |', '|---|---|---|---|---|---|']
    pooled = []
    for name in names:
        for label, threads, cells in file_cells(name):
            if not cells:
                continue
            pooled += cells
            n, above, within_1, worst = check_counts(cells)
            lines.append(f'| {label} | {threads} | {n} | {above} | {within_1} | {max(worst, 0):.2f} |')
    if not pooled:
        return lines + ['', 'No complete cell yet.']
    n, above, within_1, worst = check_counts(pooled)
    lines.append(f'| **all** | | {n} | {above} ({verdict(above == n)}) | {within_1}, {within_1 / n:.0%} '
                 f'({verdict(within_1 >= 0.9 * n)} at 90 %) | {max(worst, 0):.2f} ({verdict(worst <= 3)} at 3) |')
    cpus = sorted({cpu_line(load(n)) for n in names})
    return lines + ['', f"One seed per cell; {'; '.join(cpus)}; from " + ', '.join(f'`{n}`' for n in names) + '.']
