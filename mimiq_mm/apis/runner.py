"""Setting up mmengine's Runner from a config file as ``tools/train.py``, ``tools/test.py`` and
``tools/synthesize.py`` do: the config with its overrides, the work directory, CPU-only
distributed runs, automatic mixed precision, resuming, and post-training quantization."""
import datetime

from .cli import default_work_dir, exit_with_error, is_remote, require_file


def read_config(config_path: str, cfg_options=None):
    """Import mimiq_mm (registers its components and the safe checkpoint loading) and read the
    config; ``Config.fromfile`` also imports the config's ``custom_imports``."""
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
        cfg.work_dir = default_work_dir(config_path)


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


def release_distributed(runner=None) -> None:
    """Wait for every rank, then destroy the process group before the interpreter exits. A rank
    that tears gloo down while another still works (rank 0 writing the last checkpoint) can abort
    with 'terminate called without an active exception'; so can a process group that outlives
    ``destroy_process_group`` because the runner's DDP wrapper still holds it and is only freed
    while the interpreter shuts down. The runner's model is dropped first for that reason."""
    import gc

    import torch.distributed as dist
    if runner is not None:
        runner.model = None  # the DDP wrapper and its reducer hold the process group
        gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
