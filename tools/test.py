"""Evaluate a checkpoint of a mimiq_mm / OpenMMLab config with mmengine's Runner.

Usage:
    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl]
                                           [--show-dir DIR] [--cfg-options k=v ...]
                                           [--save-label-maps MAPS.npz | --save-detections DETS.json]
                                           [--score-thr 0.3] [--agreement MAPS.npz|DETS.json]
                                           [--launcher {none,pytorch,slurm,mpi}]

Distributed runs go through tools/dist_test.sh.
"""
import os.path as osp

from mimiq_mm.apis.cli import (add_common_arguments, exit_with_error, is_remote, new_parser, parse_common_args,
                               require_file, user_errors_reported)
from mimiq_mm.apis.runner import (build_runner, prepare_distributed_without_cuda, read_config, release_distributed,
                                  set_work_dir)


def parse_args(argv=None):
    parser = new_parser('Test a checkpoint of a mimiq_mm / OpenMMLab config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (local path or URL)')
    parser.add_argument('--out', help='dump the predictions to this .pkl file')
    parser.add_argument('--show-dir', help='save visualised predictions under this directory '
                        '(mmdet resolves it inside <work_dir>/<timestamp>)')
    parser.add_argument('--save-label-maps', metavar='MAPS.npz',
                        help='segmentors: also write the predicted label maps to this .npz (the reference of '
                        '--agreement, e.g. made with the teacher)')
    parser.add_argument('--save-detections', metavar='DETS.json',
                        help='detectors: also write the detections scoring >= --score-thr to this COCO instances .json '
                        '(the reference of --agreement, e.g. made with the teacher)')
    parser.add_argument('--score-thr', type=float,
                        help='--save-detections keeps the detections scoring at least this (default 0.3); it is '
                        'recorded in the file, and an --agreement reference keeps the one it was written at')
    parser.add_argument('--agreement', metavar='MAPS.npz|DETS.json',
                        help='also score the predictions against a reference saved with --save-label-maps '
                        '(teacher/mIoU, teacher/aAcc) or --save-detections (teacher/bbox_mAP, teacher/segm_mAP): '
                        'fidelity to that model')
    add_common_arguments(parser)
    return parse_common_args(parser, argv)


def _enable_visualization(cfg, show_dir: str) -> None:
    """Turn on the scope's visualization hook; each OpenMMLab codebase spells it differently."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        exit_with_error('--show-dir needs default_hooks.visualization in the config')
    scope = cfg.get('default_scope')
    if scope == 'mmpretrain':
        hook.enable = True
        hook.out_dir = show_dir
        hook.interval = 1  # the hook draws every 5000th sample by default; mmpretrain's tool uses 1
    elif scope == 'mmdet':
        hook.draw = True
        hook.test_out_dir = show_dir
    elif scope == 'mmseg':
        hook.draw = True
        cfg.visualizer.save_dir = show_dir
    else:
        exit_with_error(f'--show-dir supports configs with default_scope mmpretrain, mmdet or mmseg, '
                        f'not {scope!r}')


def _add_fidelity_metrics(runner, args) -> None:
    """Append the writer of --save-label-maps/--save-detections and the metric of --agreement to
    the test evaluator, each chosen by the config's own evaluator (IoUMetric or CocoMetric)."""
    from mmengine.registry import METRICS

    from mimiq_mm.evaluation import fidelity_metric, reference_format, reference_writer
    evaluator = runner.cfg.test_evaluator
    model = ' '.join(str(a) for a in (getattr(args, 'config', None), getattr(args, 'checkpoint', None)) if a)
    try:
        configs = ([reference_writer(evaluator, args.save_label_maps)] if args.save_label_maps else []) + (
            [reference_writer(evaluator, args.save_detections, score_thr=args.score_thr, model=model or None)]
            if args.save_detections else []) + ([fidelity_metric(evaluator, args.agreement)] if args.agreement else [])
        if reference_format(evaluator) == 'detections':
            _check_score_thresholds(args)
    except ValueError as error:
        exit_with_error(str(error))
    for config in configs:  # the test loop gave the dataset's meta to the metrics it was built with
        metric = METRICS.build(config)
        metric.dataset_meta = runner.test_evaluator.dataset_meta
        runner.test_evaluator.metrics.append(metric)


def _check_score_thresholds(args) -> None:
    """A detections reference is only comparable at the score threshold it was written at, which
    the file records. Logs that threshold for --agreement; refuses an explicit --score-thr that
    would not apply to it (it only filters what --save-detections writes); warns where
    --save-detections replaces a file or writes at another threshold than the reference's."""
    import logging

    from mmengine.logging import print_log

    from mimiq_mm.evaluation import DEFAULT_SCORE_THR, describe_detections, detections_info
    written_thr = DEFAULT_SCORE_THR if args.score_thr is None else args.score_thr  # by --save-detections
    if args.agreement:
        reference = detections_info(args.agreement)
        print_log(f'--agreement: {args.agreement} holds {describe_detections(reference)}', logger='current')
        written_at = reference['score_thr']
        if written_at is None:
            print_log(f'--agreement: the score threshold of {args.agreement} is unknown (the file does not record '
                      'it): teacher/* metrics compare with detections kept at an unknown score; write it again with '
                      '--save-detections to record one', logger='current', level=logging.WARNING)
        elif args.save_detections is None and args.score_thr is not None and args.score_thr != written_at:
            raise ValueError(f'--score-thr {args.score_thr:g} does not apply to --agreement: {args.agreement} holds '
                             f'the detections scoring >= {written_at:g}, the threshold it was written at; drop '
                             f'--score-thr, or write the reference again with --save-detections --score-thr '
                             f'{args.score_thr:g}')
        elif args.save_detections and written_thr != written_at:
            print_log(f'--save-detections writes the detections scoring >= {written_thr:g}, '
                      f'the reference {args.agreement} those scoring >= {written_at:g}: compared box for box '
                      f'(tools/analysis/detections.py) they differ by the threshold; add --score-thr {written_at:g} '
                      'to match', logger='current', level=logging.WARNING)
    if args.save_detections and osp.isfile(args.save_detections):
        if args.agreement and osp.samefile(args.save_detections, args.agreement):
            raise ValueError(f'--save-detections would overwrite the reference of --agreement, {args.agreement}, '
                             'in the run that scores against it; write to another file')
        try:
            replaced = f'which holds {describe_detections(detections_info(args.save_detections))}'
        except ValueError:
            replaced = 'not a COCO detections file'
        print_log(f'--save-detections replaces {args.save_detections}, {replaced}', logger='current',
                  level=logging.WARNING)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not is_remote(args.checkpoint):
        require_file(args.checkpoint, 'checkpoint file')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        exit_with_error(f'--out must name a .pkl or .pickle file, got {args.out}')
    if args.save_label_maps and args.save_detections:
        exit_with_error('--save-label-maps (segmentors) and --save-detections (detectors) exclude each other')
    if args.agreement is not None:
        require_file(args.agreement, 'reference of --agreement (write it with --save-label-maps or --save-detections)')
    cfg = read_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show_dir is not None:
        _enable_visualization(cfg, args.show_dir)
    prepare_distributed_without_cuda(cfg)
    from mimiq_mm.engine.evaluation_data import require_evaluation_data
    with user_errors_reported():
        require_evaluation_data(cfg, 'test')  # unlike training, testing cannot do without the data
        runner = build_runner(cfg)
        if args.out is not None:
            from mmengine.evaluator import DumpResults
            runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
        _add_fidelity_metrics(runner, args)
        runner.test()
    release_distributed(runner)


if __name__ == '__main__':
    main()
