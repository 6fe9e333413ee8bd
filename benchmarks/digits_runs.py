"""The embedded default (`make demo`, the digits teacher) measured across what varies: seeds,
thread counts and bit-widths, against post-training quantization and the fixed LSQ starts.

Two commands (from the repository root), each writing ``<out>.json`` and ``<out>.md`` with the
provenance of the run (commit, command, CPU and its instruction sets, threads, versions):

  python -m benchmarks.digits_runs demo --seeds 0 1 2 --threads 1 2 --out benchmarks/results/NAME
      tools/demo.py once per seed and thread count (its own teacher per seed); the check: MimiQ at
      least 15 points above Gaussian-noise PTQ in every run.
  python -m benchmarks.digits_runs robustness --threads 1 2 --bits w4a4 w3a3 w2a4 --out ...
      on the seed-0 demo of each thread count (made first if missing): Gaussian-noise PTQ, the
      default recipe and the recipe from each fixed LSQ start at every bit-width, on the demo's
      synthetic sets; the checks: the default at or above noise PTQ in every cell, and within 1
      point of the better fixed start in 90 % of the cells, never more than 3 below it.

Every run keeps its work directory under ``--work-dir`` and is skipped when its result is there.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

from .paths import REPO_ROOT
from .provenance import provenance

DEMO_TEACHER = 'teacher/epoch_30.pth'
DATA_ROOT = 'data/digits'  # tools/demo.py's default, where it exports the digits
MIMIQ_CONFIG = 'configs/demo/mimiq_vit_digits_w3a3.py'
PTQ_CONFIG = 'configs/demo/ptq_noise_vit_digits_w3a3.py'
#: the rows of the robustness table: (label, config, extra options)
ROWS = dict(
    noise_ptq=('Gaussian-noise PTQ (min-max)', PTQ_CONFIG, []),
    mimiq=('MimiQ, default recipe', MIMIQ_CONFIG, []),
    mimiq_lsq=("MimiQ, LSQ's start (lsq_init='mean_abs')", MIMIQ_CONFIG, ['model.quant.lsq_init=mean_abs']),
    mimiq_lsqplus=("MimiQ, min-max start (lsq_init='minmax')", MIMIQ_CONFIG, ['model.quant.lsq_init=minmax']),
)
FIXED_STARTS = ('mimiq_lsq', 'mimiq_lsqplus')


def _env(threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def run_demo(work_dir, seed, threads):
    """tools/demo.py at ``seed`` on ``threads`` threads in ``work_dir``; its results dict."""
    summary = osp.join(work_dir, 'results.json' if seed == 0 else f'results_seed{seed}.json')
    if not osp.isfile(summary):
        print(f'[digits] demo, seed {seed}, {threads} thread(s) -> {work_dir}', flush=True)
        start = time.time()
        subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools', 'demo.py'), '--work-dir', work_dir,
                        '--seed', str(seed)], check=True, cwd=REPO_ROOT, env=_env(threads),
                       stdout=subprocess.DEVNULL)
        print(f'[digits] done in {time.time() - start:.0f} s', flush=True)
    with open(summary) as f:
        return json.load(f)


def top1(work_dir):
    """The last accuracy/top1 a run logged (mmengine's vis_data scalars)."""
    values = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            values += [json.loads(line)['accuracy/top1'] for line in f if 'accuracy/top1' in line]
    if not values:
        raise RuntimeError(f'no accuracy/top1 in the logs of {work_dir}')
    return values[-1]


def run_row(demo_dir, row, bits, threads):
    """One cell: ``row`` at ``bits`` ('w4a4') on the demo in ``demo_dir``; its top-1 (%)."""
    work_dir = osp.join(demo_dir, 'robustness', f'{row}_{bits}')
    result = osp.join(work_dir, 'result.json')
    if osp.isfile(result):
        with open(result) as f:
            return json.load(f)['top1']
    _, config, extra = ROWS[row]
    data = (osp.join(demo_dir, 'ptq_noise', 'synthetic_noise') if row == 'noise_ptq' else
            osp.join(demo_dir, 'mimiq', 'synthetic_mimiq'))
    options = [f'model.teacher_checkpoint={osp.join(demo_dir, DEMO_TEACHER)}', f'train_cfg.synthetic_set={data}',
               f'model.quant.w_bits={bits[1]}', f'model.quant.a_bits={bits[3]}',
               f'train_dataloader.dataset.data_root={DATA_ROOT}', f'val_dataloader.dataset.data_root={DATA_ROOT}',
               f'test_dataloader.dataset.data_root={DATA_ROOT}'] + extra
    print(f'[digits] {row} {bits}, {threads} thread(s)', flush=True)
    subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools', 'train.py'), osp.join(REPO_ROOT, config),
                    '--work-dir', work_dir, '--cfg-options', *options], check=True, cwd=REPO_ROOT,
                   env=_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    value = top1(work_dir)
    with open(result, 'w') as f:
        json.dump(dict(top1=value, row=row, bits=bits, threads=threads), f)
    return value



def demo_command(args):
    runs = []
    for threads in args.threads:
        for seed in args.seeds:
            result = run_demo(osp.join(args.work_dir, f'threads{threads}'), seed, threads)
            fp, ptq, mimiq = (result['top1'][k] for k in ('FP teacher', 'W3/A3 PTQ, Gaussian-noise calibration',
                                                           'W3/A3 MimiQ (data-free QAT)'))
            runs.append(dict(seed=seed, threads=threads, fp=fp, noise_ptq=ptq, mimiq=mimiq,
                             margin=mimiq - ptq, seconds=result['seconds']))
    ok = all(r['margin'] >= 15 for r in runs)
    lines = ['| seed | threads | FP teacher | W3/A3 noise PTQ | W3/A3 MimiQ | MimiQ − PTQ |', '|---|---|---|---|---|---|']
    lines += [f"| {r['seed']} | {r['threads']} | {r['fp']:.2f} | {r['noise_ptq']:.2f} | {r['mimiq']:.2f} | "
              f"{r['margin']:+.2f} |" for r in runs]
    lines += ['', f"Check: MimiQ at least 15 points above noise PTQ in every run: **{'pass' if ok else 'FAIL'}**"]
    return dict(runs=runs, checks=[dict(check='MimiQ >= noise PTQ + 15 in every run', status='pass' if ok else 'FAIL')]), lines


def robustness_command(args):
    cells = []
    for threads in args.threads:
        demo_dir = osp.join(args.work_dir, f'threads{threads}')
        run_demo(demo_dir, 0, threads)
        for bits in args.bits:
            values = {row: run_row(demo_dir, row, bits, threads) for row in ROWS}
            best_fixed = max(values[r] for r in FIXED_STARTS)
            cells.append(dict(threads=threads, bits=bits, **values, below_best_fixed=best_fixed - values['mimiq']))
    above_ptq = all(c['mimiq'] >= c['noise_ptq'] for c in cells)
    within_1 = sum(c['below_best_fixed'] <= 1 for c in cells) / len(cells)
    within_3 = all(c['below_best_fixed'] <= 3 for c in cells)
    checks = [dict(check='default >= noise PTQ in every cell', status='pass' if above_ptq else 'FAIL'),
              dict(check=f'default within 1 of the better fixed start in >= 90 % of cells ({within_1:.0%})',
                   status='pass' if within_1 >= 0.9 else 'FAIL'),
              dict(check='default never more than 3 below the better fixed start',
                   status='pass' if within_3 else 'FAIL')]
    lines = ['| threads | bits | ' + ' | '.join(label for label, _, _ in ROWS.values()) + ' | default − better fixed start |',
             '|---|---|' + '---|' * (len(ROWS) + 1)]
    lines += [f"| {c['threads']} | {c['bits'][:2].upper()}/{c['bits'][2:].upper()} | "
              + ' | '.join(f'{c[r]:.2f}' for r in ROWS) + f" | {-c['below_best_fixed']:+.2f} |" for c in cells]
    lines += [''] + [f"- {c['check']}: **{c['status']}**" for c in checks]
    return dict(cells=cells, checks=checks), lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('what', choices=['demo', 'robustness'])
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='demo: the seeds')
    parser.add_argument('--bits', nargs='+', default=['w4a4', 'w3a3', 'w2a4'], help='robustness: the bit-widths')
    parser.add_argument('--work-dir', default='work_dirs/digits_runs')
    parser.add_argument('--out', required=True, help='result path without extension (.json and .md are written)')
    args = parser.parse_args(argv)
    args.work_dir = osp.abspath(args.work_dir)
    start = time.time()
    data, lines = (demo_command if args.what == 'demo' else robustness_command)(args)
    record = dict(what=f'digits {args.what}', provenance=provenance(['python', '-m', 'benchmarks.digits_runs']
                                                                     + list(argv if argv is not None else sys.argv[1:]),
                                                                     threads=args.threads),
                  wall_seconds=round(time.time() - start, 1), **data)
    with open(args.out + '.json', 'w') as f:
        json.dump(record, f, indent=1)
    cpu = record['provenance']['cpu']
    header = [f"# The digits demo teacher: {args.what}", '',
              f"Command: `{record['provenance']['command']}` at commit {record['provenance']['commit']}"
              + (' (with uncommitted changes)' if record['provenance']['uncommitted_changes'] else '')
              + f"; CPU {cpu.get('model')} (AVX2 {cpu.get('avx2')}, AVX512 {cpu.get('avx512')}, VNNI "
              f"{cpu.get('vnni')}, AMX {cpu.get('amx')}); threads as in the table; top-1 (%) on the 539 test images.", '']
    with open(args.out + '.md', 'w') as f:
        f.write('\n'.join(header + lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
