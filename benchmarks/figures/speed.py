"""Generators of the speed tables: synthesis steps, one fine-tuning iteration of each method, ONNX."""
import os.path as osp
import subprocess
import sys

from ..paths import REPO_ROOT
from .sources import RESULTS, cpu_line, load

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
