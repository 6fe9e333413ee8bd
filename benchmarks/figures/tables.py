"""Generators of the accuracy tables: the demo's runs, the CIFAR-10 and dense tables, what each
row costs, float32 against bf16 synthesis."""
from .sources import BITS_ORDER, bits_label, cell, cpu_line, load, recipe_rows, row_labels, source_line

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
