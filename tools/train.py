"""Train (or run a quantization loop of) a mimiq_mm / OpenMMLab config with mmengine's Runner.

Usage:
    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

Distributed runs go through tools/dist_train.sh. Without CUDA the gloo backend is selected
automatically (see prepare_distributed_without_cuda), so the same command works on CPU.

The helpers it shares with the other tools are in mimiq_mm.apis.cli and mimiq_mm.apis.runner.
"""
from mimiq_mm.apis.cli import add_common_arguments, new_parser, parse_common_args, user_errors_reported
from mimiq_mm.apis.runner import (apply_resume, build_runner, enable_amp,
                                  prepare_distributed_without_cuda, read_config, release_distributed, set_work_dir)


def parse_args(argv=None):
    parser = new_parser('Train with a mimiq_mm / OpenMMLab config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint; without a value, resume from the '
                        'latest checkpoint in the work directory')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision')
    add_common_arguments(parser)
    return parse_common_args(parser, argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = read_config(args.config, args.cfg_options)
    from mimiq_mm.engine.evaluation_data import skip_validation_without_data
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.config, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    apply_resume(cfg, args.resume)
    prepare_distributed_without_cuda(cfg)
    with user_errors_reported():
        # A data-free run needs no dataset: without the validation data, validation is skipped.
        skip_validation_without_data(cfg)
        runner = build_runner(cfg)
        runner.train()
    release_distributed(runner)


if __name__ == '__main__':
    main()
