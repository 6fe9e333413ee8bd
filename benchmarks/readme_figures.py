"""The figures of the README's result tables, generated from the result files of
``benchmarks/results/``; a test fails when a table in the README differs from what its files give.

A generated table sits between two markers in README.md or a page of docs/::

    <!-- figures: demo_runs digits_demo_runs_cpu-2core_amd-epyc-zen4_2026-12-07.json -->
    ...
    <!-- /figures -->

naming a generator of :data:`GENERATORS` and its result files (paths under ``benchmarks/results``).

  python -m benchmarks.readme_figures --check   # exit status 1, with a diff, where a table is stale
  python -m benchmarks.readme_figures --write   # rewrite every table from its files
"""
import argparse
import difflib
import glob
import json
import os.path as osp
import re
import subprocess
import sys

from .paths import REPO_ROOT

RESULTS = osp.join(REPO_ROOT, 'benchmarks', 'results')
BLOCK = re.compile(r'(<!-- figures: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /figures -->)', re.S)


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


# ----------------------------------------------------------------------------- generators
def demo_runs(name):
    """The demo's six runs (benchmarks.digits_runs demo): mean and range per row and thread count."""
    data = load(name)
    runs = data['runs']
    lines = ['| W3/A3 on digits, top-1 (%) | ' + ' | '.join(f'{t} thread{"s" * (t > 1)}: mean (range)'
                                                          for t in sorted({r['threads'] for r in runs})) + ' |',
             '|---|' + '---|' * len({r['threads'] for r in runs})]
    for key, label in (('fp', 'FP teacher'), ('noise_ptq', 'Gaussian-noise PTQ'), ('mimiq', 'MimiQ, default recipe'),
                       ('margin', 'MimiQ − noise PTQ')):
        cells = []
        for t in sorted({r['threads'] for r in runs}):
            values = [r[key] for r in runs if r['threads'] == t]
            cells.append(f'{sum(values) / len(values):.2f} ({min(values):.2f}–{max(values):.2f})')
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    seeds = sorted({r['seed'] for r in runs})
    lines += ['', f"Seeds {', '.join(map(str, seeds))} (each seed its own teacher), {cpu_line(data)}; "
              f"check MimiQ ≥ noise PTQ + 15 in every run: **{data['checks'][0]['status']}** "
              f"([`{name[:-5]}.md`](benchmarks/results/{name[:-5]}.md))."]
    return lines


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


#: rows of older result files whose recipe row has since gone
RETIRED_ROWS = dict(mimiq_auto="MimiQ (its LSQ start chosen by `lsq_init='auto'`, since retired)")


def row_labels(data, default_recipe):
    """{row: label} of the recipe a table driver's result was made with (its ``recipe``, a config
    of this checkout), rows since retired included."""
    rows = recipe_rows(data, default_recipe)
    return {**RETIRED_ROWS, **{key: row.get('label', key) for key, row in rows.items()}}



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


def cifar10_table(name):
    """A CIFAR-10 table (benchmarks.cifar10_table): top-1 of every row × bit-width, per teacher."""
    data = load(name)
    labels = row_labels(data, 'configs/cifar10/benchmark.py')
    bits = [b for b in BITS_ORDER if b in data['bits']]
    lines = []
    for teacher, summary in data['summary'].items():
        fp = data['teachers'][teacher]['metrics']['accuracy/top1']
        lines += [f'| {teacher} (FP {fp:.2f}), top-1 (%) | ' + ' | '.join(map(bits_label, bits)) + ' |',
                  '|---|' + '---|' * len(bits)]
        lines += [f'| {labels.get(row, row)} | ' + ' | '.join(cell(summary, row, b, 'accuracy/top1') for b in bits)
                  + ' |' for row in data['rows'] if row in summary]
        lines.append('')
    return lines + [source_line(name, data)]


def dense_table(name, bits='w4a4'):
    """A dense table (benchmarks.dense_table) at one bit-width: annotation metrics and fidelity per teacher."""
    data = load(name)
    labels = row_labels(data, 'configs/dense_bench/benchmark.py')
    columns = []  # (teacher, metric, header)
    for teacher in data['teacher_names']:
        fp = data['teachers'][teacher]['metrics']
        if 'coco/bbox_mAP' in fp:
            columns += [(teacher, 'coco/bbox_mAP', f"{teacher} box mAP (FP {fp['coco/bbox_mAP'] * 100:.1f})"),
                        (teacher, 'coco/segm_mAP', f"mask mAP (FP {fp['coco/segm_mAP'] * 100:.1f})"),
                        (teacher, 'teacher/bbox_mAP', 'box fidelity'), (teacher, 'teacher/segm_mAP', 'mask fidelity')]
        else:
            columns += [(teacher, 'mIoU', f"{teacher} mIoU (FP {fp['mIoU']:.2f})"),
                        (teacher, 'teacher/mIoU', 'fidelity mIoU')]
    lines = [f'| {bits_label(bits)} | ' + ' | '.join(h for _, _, h in columns) + ' |', '|---|' + '---|' * len(columns)]
    rows = [r for r in data['rows'] if any(r in data['summary'][t] for t in data['teacher_names'])]
    for row in rows:
        cells = [cell(data['summary'][teacher], row, bits, metric, digits=2 if metric.endswith('IoU') else 1)
                 for teacher, metric, _ in columns]
        if any(c != '—' for c in cells):
            lines.append(f'| {labels.get(row, row)} | ' + ' | '.join(cells) + ' |')
    return lines + ['', 'Fidelity: the same evaluator with the teacher\'s own predictions as ground truth (100 = the '
                    'teacher exactly). ' + source_line(name, data)]


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
        for metric in metrics:
            for c in robustness_cells(data, metric):
                cells.append(c)
                fp = fp_value(data, c['teacher'], metric) or 0
                lines.append('| ' + f'{unit_threads(data)} | ' * threads + f"{c['teacher']} ({fp:.2f}) | "
                             f"{bits_label(c['bits'])} | " + f"{metric_names.get(metric, metric)} | " * several
                             + f"{c['ptq']:.2f} | {c['default']:.2f} | {c['fixed'][0]:.2f} | {c['fixed'][1]:.2f} | "
                               f"{-c['below_best_fixed']:+.2f} |")
    if not cells:
        return lines + ['', 'No complete cell yet.']
    above = sum(c['default'] >= c['ptq'] for c in cells)
    within_1 = sum(c['below_best_fixed'] <= 1 for c in cells)
    worst = max(c['below_best_fixed'] for c in cells)
    verdict = lambda ok: '**pass**' if ok else '**FAIL**'  # noqa: E731
    lines += ['', f'Checks over the {len(cells)} cells: default ≥ noise PTQ in {above} ({verdict(above == len(cells))}); '
              f'within 1 point of the better fixed start in {within_1} ({within_1 / len(cells):.0%}, '
              f'{verdict(within_1 >= 0.9 * len(cells))} at 90 %); at most {max(worst, 0):.2f} below it '
              f'({verdict(worst <= 3)} at 3). One seed per cell.']
    if not threads:
        return lines[:-1] + [lines[-1] + ' ' + source_line(*files[0])]
    return lines + [''] + [f'- {unit_threads(data)} thread(s) per unit: ' + source_line(name, data)
                           for name, data in files]


def recipe_rows(data, default_recipe):
    """The rows of the recipe a table driver's result was made with (see :func:`row_labels`)."""
    from mmengine.config import Config
    recipe = data.get('recipe') or default_recipe
    if osp.isabs(recipe) or not osp.isfile(osp.join(REPO_ROOT, recipe)):
        recipe = default_recipe
    return Config.fromfile(osp.join(REPO_ROOT, recipe)).rows


def row_costs(name, teacher=None):
    """What each row of a table driver's result costs on its machine: the synthetic set it reads
    (seed 0's, made once per seed) and its quantization unit (calibration + fine-tuning, or the
    generator's training beside it), mean seconds."""
    data = load(name)
    teacher = teacher or data['teacher_names'][0]
    labels, rows = row_labels(data, 'configs/cifar10/benchmark.py'), recipe_rows(data, 'configs/cifar10/benchmark.py')
    timings = data.get('timings', {})
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    lines = ['| row | its synthetic set, s | quantization unit, s | units |', '|---|---|---|---|']
    for row in data['rows']:
        units = timings.get(f'quant/{teacher}/{row}')
        if not units:
            continue
        set_seconds = timings.get(f"synth/{teacher}/{(rows.get(row) or {}).get('data')}")
        lines.append(f"| {labels.get(row, row)} | {f'{mean(set_seconds):.0f}' if set_seconds else '—'} | "
                     f'{mean(units):.0f} | {len(units)} |')
    return lines + ['', f'Teacher `{teacher}`, one thread per unit; ' + source_line(name, data)]


def synthesis_precision(fp32_name, bf16_name, metric='accuracy/top1'):
    """The same table driver rows with float32 and with bf16 synthesis, side by side per bit-width."""
    fp32, bf16 = load(fp32_name), load(bf16_name)
    labels = row_labels(fp32, 'configs/cifar10/benchmark.py')
    lines = ['| row, bits | float32 synthesis | bf16 synthesis | bf16 − float32 |', '|---|---|---|---|']
    for teacher, summary in fp32['summary'].items():
        for row in fp32['rows']:
            for bits in [b for b in BITS_ORDER if b in fp32['bits']]:
                a = ((summary.get(row) or {}).get(bits) or {}).get(metric)
                b = (((bf16['summary'].get(teacher) or {}).get(row) or {}).get(bits) or {}).get(metric)
                if a and b:
                    lines.append(f"| {labels.get(row, row)}, {bits_label(bits)} | {cell(summary, row, bits, metric)} | "
                                 f"{cell(bf16['summary'][teacher], row, bits, metric)} | {b['mean'] - a['mean']:+.2f} |")
    return lines + ['', 'Float32: ' + source_line(fp32_name, fp32), '', 'bf16: ' + source_line(bf16_name, bf16)]


def synthesis_steps(*names):
    """Synthesis step times (benchmarks.step_times), one row per file, speed-up over the first file."""
    records = [load(n) for n in names]
    kinds = [k for k in ('plain', 'ihc', 'psaq', 'kd', 'kd_had') if all(k in r['steps'] for r in records)]
    lines = ['| model, batch, precision | ' + ' | '.join(
        f"{records[0]['steps'][k]['description']}, ms per step" for k in kinds) + ' | CPU, threads |',
             '|---|' + '---|' * (len(kinds) + 1)]
    for record in records:
        cells = []
        for k in kinds:
            ms = record['steps'][k]['ms_median']
            base = records[0]['steps'][k]['ms_median']
            cells.append(f'{ms:.0f}' + ('' if record is records[0] else f' ({base / ms:.2f}×)'))
        env = record.get('environment', {})
        threads = (record.get('provenance') or {}).get('threads', env.get('cpu_threads'))
        lines.append(f"| {record['model']}, {record['batch']}, {record['precision']} | " + ' | '.join(cells)
                     + f' | {cpu_line(record)}, {threads} |')
    return lines + ['', 'Median of the timed steps, process CPU time; from ' + ', '.join(f'`{n}`' for n in names) + '.']


# The paper's recipe: 10K images synthesised at batch 32 for 2K steps each, fine-tuning for 200
# epochs of the 10K images at batch 16: 10 synthesis image-steps per fine-tuning image.
PAPER_SYNTHESIS_STEPS_PER_FT_IMAGE = (10_000 * 2_000) / (200 * 10_000)
BASELINE_ITERATIONS = ('gdfq', 'qimera', 'adadfq', 'psaq_v2')


def iteration_costs(name):
    """One fine-tuning iteration of each baseline that changes its data while the student learns
    (benchmarks.step_times: generator or sample update + student step) against MimiQ's: its QAT
    step plus its synthesis, amortised over the paper's recipe (10 synthesis steps of each image
    per fine-tuning image, same batch). PSAQ-ViT V2 starts from a PSAQ-ViT set of the same size:
    that synthesis is amortised into its data step alike."""
    record = load(name)
    steps = record['steps']
    missing = [k for k in ('ihc', 'psaq', 'kd_had') + BASELINE_ITERATIONS if k not in steps]
    if missing:
        raise ValueError(f'{name}: no step kinds {missing} (time them with benchmarks.step_times --steps ...)')
    synthesis = {k: PAPER_SYNTHESIS_STEPS_PER_FT_IMAGE * steps[k]['ms_median'] for k in ('ihc', 'psaq')}
    rows = [('MimiQ: synthesis amortised over the paper\'s recipe + QAT step L_KL+L_HAD', synthesis['ihc'],
             steps['kd_had']['ms_median'])]
    for k in BASELINE_ITERATIONS:
        label, data_ms = steps[k]['description'], steps[k]['split']['generator_ms']
        if k == 'psaq_v2':
            label, data_ms = label + ', its PSAQ-ViT set\'s synthesis amortised alike', data_ms + synthesis['psaq']
        rows.append((label, data_ms, steps[k]['split']['student_ms']))
    mimiq = rows[0][1] + rows[0][2]
    lines = ['| one fine-tuning iteration | data (synthesis, generator or samples), ms | student step, ms | '
             'total, ms | against MimiQ |', '|---|---|---|---|---|']
    for label, data_ms, student_ms in rows:
        total = data_ms + student_ms
        lines.append(f'| {label} | {data_ms:.0f} | {student_ms:.0f} | {total:.0f} | {total / mimiq:.2f}× |')
    threads = (record.get('provenance') or {}).get('threads')
    return lines + ['', f"{record['model']}, batch {record['batch']}, {record['precision']}; {cpu_line(record)}, "
                        f"{threads} thread{'s' * (threads != 1)}; medians of the timed steps (the baselines' two "
                        f"parts timed apart); from `{name}`."]


def onnx_speed(*names):
    """The ONNX speed table (tools/deploy/speed_table.py on the given benchmark_onnx files)."""
    paths = [osp.join(RESULTS, n) for n in names]
    out = subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools', 'deploy', 'speed_table.py'), *paths],
                         capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
    return out.rstrip('\n').split('\n')


GENERATORS = dict(demo_runs=demo_runs, digits_robustness=digits_robustness, cifar10_table=cifar10_table,
                  dense_table=dense_table, onnx_speed=onnx_speed, synthesis_steps=synthesis_steps,
                  robustness_table=robustness_table, synthesis_precision=synthesis_precision,
                  row_costs=row_costs, iteration_costs=iteration_costs)


# ----------------------------------------------------------------------------- the documents
def documents():
    return [osp.join(REPO_ROOT, 'README.md')] + sorted(glob.glob(osp.join(REPO_ROOT, 'docs', '*.md')))


def render(text, path=None):
    """``text`` (of the document at ``path``) with every figure block regenerated; the generators'
    links, relative to the repository root, are made relative to the document's folder."""
    prefix = osp.relpath(REPO_ROOT, osp.dirname(osp.abspath(path))) + '/' if path else ''
    prefix = '' if prefix == './' else prefix

    def block(match):
        generator, *files = match.group('spec').split()
        if generator not in GENERATORS:
            raise ValueError(f'unknown figures generator {generator!r}; known: {sorted(GENERATORS)}')
        body = '\n'.join(GENERATORS[generator](*files)).replace('](benchmarks/', f']({prefix}benchmarks/')
        return match.group(1) + body + '\n' + match.group(4)
    return BLOCK.sub(block, text)


def stale_documents(paths=None):
    """(path, diff) of every document (default: README.md and docs/*.md) whose figure blocks differ
    from their result files."""
    out = []
    for path in paths or documents():
        with open(path) as f:
            text = f.read()
        fresh = render(text, path)
        if fresh != text:
            diff = ''.join(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True), path, 'generated'))
            out.append((path, diff))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('--check', action='store_true')
    group.add_argument('--write', action='store_true')
    args = parser.parse_args(argv)
    stale = stale_documents()
    if args.write:
        for path in documents():
            with open(path) as f:
                text = f.read()
            with open(path, 'w') as f:
                f.write(render(text, path))
        print(f'rewrote the figures of {len(stale)} document(s)')
        return 0
    for path, diff in stale:
        print(diff)
    return 1 if stale else 0


if __name__ == '__main__':
    sys.exit(main())
