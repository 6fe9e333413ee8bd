"""Does the data-free criterion of BestStudentHook track accuracy on real data?

For each checkpoint of one fine-tuning run (e.g. ``iter_*.pth`` saved every few iterations), the
student's distance from the teacher on held-out synthetic images (the hook's criterion: the task's
KD loss, lower is closer) and its metric on the config's test set (real data), then the rank
correlation of the two over the checkpoints. Writes a JSON report and prints a table.

Example:
    python tools/analysis/holdout_criterion.py work_dirs/run/config.py work_dirs/run/iter_*.pth \\
        --synthetic work_dirs/run/synthetic_mimiq --holdout 64 --metric accuracy/top1
"""
import json
import os
import os.path as osp
import sys


from mimiq_mm.analysis import AnalysisInputError
from mimiq_mm.analysis.cli import new_parser, run_tool
from mimiq_mm.utils.tables import console_table


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = new_parser(__doc__)
    parser.add_argument('config', help='the run\'s config (its test dataloader and evaluator measure the metric)')
    parser.add_argument('checkpoints', nargs='+', help='checkpoints of the run (distiller or student exports)')
    parser.add_argument('--synthetic', required=True, help='the synthetic set the run fine-tuned on')
    parser.add_argument('--holdout', type=int, required=True, help='the last N images of the set, kept out of '
                        'fine-tuning (train_cfg.holdout_images)')
    parser.add_argument('--metric', default='accuracy/top1', help='the test metric to compare with')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={}, help='key=value overrides')
    parser.add_argument('--out', default='work_dirs/analysis/holdout_criterion.json', help='JSON report')
    return parser.parse_args(argv)


def measure(config, checkpoint, holdout, cfg_options, work_dir):
    """(held-out KD of the student, test metrics) of one checkpoint."""
    from mmengine.runner import Runner
    from mimiq_mm.apis import load_config
    cfg = load_config(config, dict(cfg_options, load_from=checkpoint, resume=False, work_dir=work_dir))
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
        cfg[key] = None
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()  # loads the checkpoint
    return runner.model.holdout_distance(holdout), {k: float(v) for k, v in metrics.items()}


def spearman(a, b):
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic) if len(a) > 2 else None


def main(argv=None):
    args = parse_args(argv)
    from mimiq_mm.datasets import SyntheticImageDataset
    from mimiq_mm.synthesis import load_manifest
    size = load_manifest(args.synthetic)['num_images']
    holdout = SyntheticImageDataset(args.synthetic, num_images=size, holdout=args.holdout, part='holdout').load()
    rows = []
    for ckpt in args.checkpoints:
        if not osp.isfile(ckpt):
            raise AnalysisInputError(f'checkpoint {ckpt} not found')
        distance, metrics = measure(args.config, ckpt, holdout, args.cfg_options,
                                    osp.join(osp.dirname(args.out) or '.', 'holdout_criterion_runs'))
        if args.metric not in metrics:
            raise AnalysisInputError(f'the test evaluator gives {sorted(metrics)}, not {args.metric!r}; set --metric')
        rows.append(dict(checkpoint=ckpt, holdout_kd=distance, metric=metrics[args.metric]))
    rho = spearman([-r['holdout_kd'] for r in rows], [r['metric'] for r in rows])
    best = min(rows, key=lambda r: r['holdout_kd'])
    report = dict(config=args.config, synthetic=args.synthetic, holdout=args.holdout, metric=args.metric,
                  checkpoints=rows, spearman_closeness_vs_metric=rho, chosen=best['checkpoint'],
                  chosen_metric=best['metric'], best_metric=max(r['metric'] for r in rows))
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print(console_table(['checkpoint', 'held-out KD', args.metric],
                        [[osp.basename(r['checkpoint']), f"{r['holdout_kd']:.5f}", f"{r['metric']:.2f}"] for r in rows]))
    print(f'Spearman(closeness to the teacher, {args.metric}) = {rho}; the criterion picks '
          f'{osp.basename(best["checkpoint"])} ({best["metric"]:.2f}; best {report["best_metric"]:.2f})')
    return report


if __name__ == '__main__':
    sys.exit(run_tool(main))
