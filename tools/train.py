"""Train (or run a quantization loop of) a mimiq_mm / OpenMMLab config with mmengine's Runner.

Usage:
    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

Distributed runs go through tools/dist_train.sh. Without CUDA the gloo backend is selected
automatically (see prepare_distributed_without_cuda), so the same command works on CPU.

tools/test.py reuses the helpers of this file.
"""
import argparse
import contextlib
import datetime
import os
import os.path as osp
import sys

# Let a plain checkout run `python tools/train.py` without `pip install -e .`.
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train.py and test.py, spelled as in mmdet/mmpretrain's tools."""
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='directory for logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. key=value or key="[a,b]"')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank (older).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train with a mimiq_mm / OpenMMLab config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint; without a value, resume from the '
                        'latest checkpoint in the work directory')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision')
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def exit_with_error(message: str) -> None:
    """Stop with a one-line explanation instead of a traceback for user mistakes."""
    sys.exit(f'error: {message}')


def require_file(path: str, what: str) -> None:
    if not osp.isfile(osp.expanduser(path)):
        exit_with_error(f'{what} not found: {path}')


def is_remote(path: str) -> bool:
    """Paths with a scheme (https://, s3://, open-mmlab://) are resolved by mmengine's loaders."""
    return '://' in path


def load_config(config_path: str, cfg_options=None):
    """Import mimiq_mm (registers its components and the safe checkpoint loading) and read the config.

    ``Config.fromfile`` also imports the config's ``custom_imports``.
    """
    require_file(config_path, 'config file')
    import mimiq_mm  # noqa: F401
    from mmengine.config import Config
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def set_work_dir(cfg, config_path: str, work_dir=None) -> None:
    """Priority: --work-dir, then the config's work_dir, then ./work_dirs/<config stem>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def prepare_distributed_without_cuda(cfg) -> None:
    """Make a distributed launch work on CPU-only machines.

    mmengine defaults to NCCL, wraps the model in DDP with ``device_ids=[LOCAL_RANK]`` and its
    pytorch launcher calls ``torch.cuda.set_device``; all three fail without CUDA. Use gloo, CPU
    DDP, and initialise the process group here so that the Runner does not initialise it again.
    """
    import torch
    from mmengine.config import ConfigDict
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    dist_cfg['backend'] = 'gloo'
    wrapper_cfg = cfg.get('model_wrapper_cfg')
    if wrapper_cfg is None:
        cfg.model_wrapper_cfg = ConfigDict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=True,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif wrapper_cfg.get('type') in ('MMDistributedDataParallel', 'DistributedDataParallel'):
        wrapper_cfg['device_ids'] = None
    if cfg.launcher == 'pytorch' and not torch.distributed.is_initialized():
        timeout = dist_cfg.get('timeout')
        extra = {'timeout': datetime.timedelta(seconds=timeout)} if timeout else {}
        torch.distributed.init_process_group(backend='gloo', **extra)
    print(f'[mimiq_mm] no CUDA device: distributed launcher {cfg.launcher!r} uses the gloo backend '
          'on CPU', flush=True)


def build_runner(cfg):
    """Build the default Runner, or the registered one named by the config's ``runner_type``."""
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def enable_amp(cfg) -> None:
    optim_wrapper = cfg.get('optim_wrapper')
    if optim_wrapper is None:
        exit_with_error('--amp needs an optim_wrapper in the config')
    if optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
        optim_wrapper.type = 'AmpOptimWrapper'
        optim_wrapper.setdefault('loss_scale', 'dynamic')


def apply_resume(cfg, resume) -> None:
    """``--resume`` alone: latest checkpoint of work_dir; ``--resume CKPT``: that checkpoint."""
    if resume is None:
        return
    cfg.resume = True
    if resume == 'auto':
        cfg.load_from = None
    else:
        if not is_remote(resume):
            require_file(resume, 'checkpoint given to --resume')
        cfg.load_from = resume


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    from mimiq_mm.engine.evaluation_data import skip_validation_without_data
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.config, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    apply_resume(cfg, args.resume)
    drop_schedule_without_fine_tuning(cfg)
    prepare_distributed_without_cuda(cfg)
    with user_errors_reported():
        # A data-free run needs no dataset: without the validation data, validation is skipped.
        skip_validation_without_data(cfg)
        runner = build_runner(cfg)
        runner.train()
    release_distributed()


def drop_schedule_without_fine_tuning(cfg) -> None:
    """``train_cfg.max_iters=0`` (or ``max_epochs=0``) is post-training quantization: nothing to
    schedule, and mmengine refuses a scheduler that ends at iteration 0."""
    train_cfg = cfg.get('train_cfg') or {}
    if cfg.get('param_scheduler') and any(train_cfg.get(key) == 0 for key in ('max_iters', 'max_epochs')):
        cfg.param_scheduler = None


def release_distributed() -> None:
    """Wait for every rank, then destroy the process group before the interpreter exits. A rank
    that tears gloo down while another still works (rank 0 writing the last checkpoint) can abort
    with 'terminate called without an active exception'."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def user_errors_reported():
    """Bad input (unknown backbone or method, impossible bit-width, missing, damaged, unsafe,
    unreachable or incompatible checkpoint, unusable image size, missing or broken evaluation
    data) ends with its message, which names the fix, instead of a long traceback.
    MIMIQ_DEBUG=1 shows the traceback."""
    from mimiq_mm.attention import UnsupportedBackboneError
    from mimiq_mm.utils import CheckpointDownloadError, UnsafeCheckpointError
    try:
        yield
    except (ValueError, FileNotFoundError, UnsupportedBackboneError, CheckpointDownloadError,
            UnsafeCheckpointError) as err:
        if os.environ.get('MIMIQ_DEBUG') or not str(err):
            raise
        exit_with_error(f'{err} (MIMIQ_DEBUG=1 shows the traceback)')


if __name__ == '__main__':
    main()
