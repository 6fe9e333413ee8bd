"""The report of a benchmark: every finished result summarised over seeds, the recipe's checks,
a markdown table per teacher and metric, and all of it as JSON."""
import statistics

from mimiq_mm.utils.tables import markdown_table
from .recipe import bits_label


def fmt(value, digits=2):
    return '—' if value is None else f'{value:.{digits}f}'


def fmt_seconds(s):
    if s is None:
        return '—'
    return f'{s:.0f} s' if s < 120 else f'{s / 60:.1f} min'


def metric_value(record, metric):
    """A record's value of ``metric`` (dict(key, scale)) in table units, or None."""
    value = (record.get('metrics') or {}).get(metric['key'])
    return None if value is None else value * metric.get('scale', 1.0)


def teacher_value(record, metric):
    """The full-precision teacher's value of ``metric``: measured, or the metric's ``fp`` (a value
    true by definition, e.g. 100 for agreement with the teacher itself), or None."""
    value = metric_value(record, metric) if record else None
    return metric.get('fp') if value is None else value


def summarise(results, metrics):
    """{teacher: {row: {bits: {metric key: cell}}}}, a cell holding values, seeds, n, mean, std
    (sample), min and max."""
    summary = {}
    for rec in results:
        for metric in metrics:
            value = metric_value(rec, metric)
            if value is None:
                continue
            cell = summary.setdefault(rec['teacher'], {}).setdefault(rec['row'], {}).setdefault(
                rec['bits'], {}).setdefault(metric['key'], dict(values=[], seeds=[]))
            cell['values'].append(value)
            cell['seeds'].append(rec['seed'])
    for cell in (c for t in summary.values() for r in t.values() for b in r.values() for c in b.values()):
        v = cell['values']
        cell.update(n=len(v), mean=statistics.mean(v), std=statistics.stdev(v) if len(v) > 1 else None,
                    min=min(v), max=max(v))
    return summary


def synthetic_set_records(records):
    """{key: record} of the synthetic sets, each with its ``teacher``, ``set_name`` and ``seed``
    (from its key: seed 0's is ``<teacher>/synth/<set>``, seed s's ``<teacher>/synth/<set>/s<s>``),
    ordered by teacher, set and seed."""
    out = {}
    for rec in records:
        teacher, _, rest = rec['key'].partition('/synth/')
        name, _, seed = rest.partition('/')
        out[rec['key']] = dict(rec, teacher=teacher, set_name=name, seed=int(seed[1:]) if seed else 0)
    return dict(sorted(out.items(), key=lambda item: (item[1]['teacher'], item[1]['set_name'], item[1]['seed'])))


def checks_on_rows(checks, rows):
    """The checks that speak only of ``rows`` (and the FP teacher): a report of some rows leaves out
    the checks of rows it does not show instead of listing them as n/a."""
    shown = set(rows) | {'fp'}

    def rows_of(check):
        return set(check.get('rows', [])) | {check[k] for k in ('row', 'ref', 'over') if k in check}
    return [check for check in checks if rows_of(check) <= shown]


def run_checks(checks, summary, teachers, metrics, labels):
    """Evaluate the recipe's checks on the measured means.

    Check kinds (``metric`` defaults to the first metric a teacher has; a ``row`` or ``ref`` of
    'fp' is the full-precision teacher):

    * ``gap``: ``ref - row <= at_most`` (e.g. MimiQ within 5 points of real-data FT);
    * ``margin``: ``row - over >= at_least``;
    * ``below``: ``row < value``;
    * ``order``: the ``rows`` in non-increasing order.

    A failing ``gap`` or ``margin`` says why (:func:`failure_reason`): by how much, and whether the
    difference of the two means lies within the seeds' spread.
    """
    out = []
    for t, rows in summary.items():
        keys = [m['key'] for m in metrics if any(m['key'] in c for r in rows.values() for c in r.values())]
        for check in checks:
            metric = check.get('metric') or (keys[0] if keys else None)
            if metric not in keys:  # a metric this teacher's task does not report (e.g. box mAP of a segmentor)
                continue
            for bits in check.get('bits', []):
                def mean(row):
                    if row == 'fp':
                        spec = next((m for m in metrics if m['key'] == metric), dict(key=metric))
                        return teacher_value(teachers.get(t), spec)
                    return (rows.get(row, {}).get(bits, {}).get(metric) or {}).get('mean')
                kind = check['type']
                if kind == 'order':
                    values = [mean(r) for r in check['rows']]
                    ok = None if None in values else all(a >= b for a, b in zip(values, values[1:]))
                    text = 'ordering ' + ' ≥ '.join(labels.get(r, r) for r in check['rows'])
                    detail = ', '.join(f'{r} {fmt(v)}' for r, v in zip(check['rows'], values))
                else:
                    a = mean(check['row'])
                    if kind == 'gap':
                        b = mean(check['ref'])
                        ok = None if None in (a, b) else b - a <= check['at_most']
                        text = f'{labels.get(check["row"], check["row"])} within {check["at_most"]} of ' \
                               f'{labels.get(check["ref"], check["ref"])}'
                        detail = f'{fmt(a)} vs {fmt(b)}, gap {fmt(None if None in (a, b) else b - a)}'
                    elif kind == 'margin':
                        b = mean(check['over'])
                        ok = None if None in (a, b) else a - b >= check['at_least']
                        text = f'{labels.get(check["row"], check["row"])} at least {check["at_least"]} above ' \
                               f'{labels.get(check["over"], check["over"])}'
                        detail = f'{fmt(a)} vs {fmt(b)}, margin {fmt(None if None in (a, b) else a - b)}'
                    elif kind == 'below':
                        ok = None if a is None else a < check['value']
                        text = f'{labels.get(check["row"], check["row"])} below {check["value"]}'
                        detail = fmt(a)
                    else:
                        raise ValueError(f'unknown check type {kind!r}')
                result = dict(teacher=t, bits=bits, metric=metric, check=text, detail=detail,
                              status='n/a' if ok is None else 'pass' if ok else 'FAIL')
                if ok is False and kind in ('gap', 'margin'):
                    other = check['ref'] if kind == 'gap' else check['over']
                    cells = [(rows.get(r, {}).get(bits, {}).get(metric) or {}) for r in (check['row'], other)]
                    result['reason'] = failure_reason(check, cells, labels)
                out.append(result)
    return out


def failure_reason(check, cells, labels):
    """Why a ``gap`` / ``margin`` check failed: the shortfall, and whether the two means differ by
    less than their seeds' standard deviations added (a difference the seeds do not resolve)."""
    row = labels.get(check['row'], check['row'])
    a, b = (cell.get('mean') for cell in cells)
    if check['type'] == 'margin':
        short = check['at_least'] - (a - b)
        text = f'{row} is {short:.2f} short of the margin'
    else:
        short = (b - a) - check['at_most']
        text = f'{row} is {short:.2f} beyond the allowed gap'
    spreads = [cell.get('std') for cell in cells]
    if None in spreads:
        return text + ' (one seed: no spread to compare with)'
    within = abs(a - b) <= sum(spreads)
    return text + (f"; the means differ by {abs(a - b):.2f}, {'within' if within else 'beyond'} the seeds' spread "
                   f'(std {spreads[0]:.2f} and {spreads[1]:.2f})')


def cell_text(cell):
    if not cell:
        return '—'
    if cell['n'] == 1:
        return f'{cell["mean"]:.2f} (1 seed)'
    return f'{cell["mean"]:.2f} ± {cell["std"]:.2f} (n={cell["n"]})'


def markdown(data, labels, teacher_labels):
    """The report as markdown: header, one table per teacher and metric, checks, synthetic sets,
    wall times and command lines."""
    status = 'complete' if data['complete'] else f'incomplete, {len(data["missing"])} units missing'
    data_root = f'`{data["data_root"]}`' if data['data_root'] else "the configs' own `data_root`"
    lines = [f'# Data-free quantization benchmark: {data["benchmark"]}', '',
             f'- Scale preset: **`{data["scale"]}`** — {data["scale_description"]}'
             + (f' (overrides: {data["scale_overrides"]})' if data['scale_overrides'] else ''),
             f'- Data: {data_root}; teachers are trained on the train split only; every row but the '
             'real-data ones quantizes without reading a train image; metrics on the test split.',
             f'- Status: {status}; generated {data["generated"]}', '']
    for t in data['teacher_names']:
        fp = data['teachers'].get(t, {})
        lines += [f'## Teacher `{t}`: {teacher_labels.get(t, t)}', '']
        train = fp.get('train') or {}
        if train.get('train_seconds'):
            cut = ' — **TRAINING CUT by the time cap**' if train.get('cut') else ''
            lines += [f'{train.get("epochs_trained") or "given"} epochs, {fmt_seconds(train.get("train_seconds"))} '
                      f'training, {(train.get("params") or 0) / 1e6:.2f} M parameters{cut}.', '']
        elif fp:
            lines += ['Trained outside the driver (a given checkpoint, see the recipe\'s `teacher_checkpoints`).', '']
        for metric in data['metrics']:
            key = metric['key']
            rows = data['summary'].get(t, {})
            if not any(key in c for r in rows.values() for c in r.values()) and key not in (fp.get('metrics') or {}):
                continue
            lines += [f'{metric["name"]}:', '']
            body = []
            fp_value = teacher_value(fp, metric)
            if fp_value is not None:
                body.append(['FP teacher'] + [fmt(fp_value)] * len(data['bits']))
            for row in data['rows']:
                if row in rows:
                    body.append([labels.get(row, row)] + [cell_text(rows[row].get(b, {}).get(key))
                                                          for b in data['bits']])
            lines += [markdown_table(['row'] + [bits_label(b) for b in data['bits']], body), '']
    lines += ['Cells: mean ± sample standard deviation over seeds (n); per-seed values are in results.json. '
              '"—": not run yet.', '']
    if data['checks']:
        lines += ['## Checks', '']
        lines += [f'- [{c["status"]}] `{c["teacher"]}` {bits_label(c["bits"])}, `{c["metric"]}`: {c["check"]} '
                  f'({c["detail"]})' + (f' — {c["reason"]}' if c.get('reason') else '') for c in data['checks']]
        lines.append('')
    if data['synthetic_sets']:
        shared = ('one per teacher, set and seed: the units of a seed read the sets of that seed; shared by all '
                  'bit-widths' if data.get('synthetic_set_per_seed', True)
                  else 'one per teacher and set, shared by all bit-widths and seeds')
        lines += [f'## Synthetic sets ({shared})', '',
                  markdown_table(['set', 'seed', 'images', 'steps', 'batch', 'synthesis time'],
                                 [[f'{s["teacher"]}/synth/{s["set_name"]}', s['seed'], s.get('num_images'),
                                   s.get('steps'), s.get('batch_size'), fmt_seconds(s.get('synthesis_seconds'))]
                                  for s in data['synthetic_sets'].values()]),
                  '']
    lines += ['## Wall times per stage', '',
              markdown_table(['stage', 'units', 'total', 'median'],
                             [[k, len(v), fmt_seconds(sum(v)), fmt_seconds(statistics.median(v))]
                              for k, v in sorted(data['timings'].items())]), '',
              '## Command lines', '']
    lines += [f'- `{inv["command"]}` — {inv.get("started")}, {fmt_seconds(inv.get("seconds"))}, {inv.get("device")}'
              + (f', commit {inv["commit"]}' if inv.get('commit') else '')
              for inv in data['invocations']]
    lines.append('')
    return '\n'.join(lines)
