"""Make a synthetic set alone, from a mimiq_mm config (no fine-tuning).

One synthesis serves many fine-tuning runs: point ``train_cfg.synthesis.out_dir`` of those runs
at the folder made here. An interrupted synthesis resumes where it stopped when run again; under
``tools/dist_train.sh``-style launching (``--launcher pytorch``) ranks split the batches.

Example:
    python tools/synthesize.py configs/deit/deit-s_mimiq_w4a4.py --out-dir data/synthetic/deit-s_mimiq \
        --cfg-options model.teacher_checkpoint=deit-small.pth
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import mimiq_mm  # noqa: E402,F401


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Make a MimiQ synthetic set from a config')
    parser.add_argument('config')
    parser.add_argument('--out-dir', help='where the set is written (default: <work_dir>/synthetic_<method>)')
    parser.add_argument('--method', choices=['mimiq', 'base', 'psaq', 'noise'], help='override the method')
    parser.add_argument('--num-images', type=int, help='override the number of images')
    parser.add_argument('--work-dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, e.g. key=value or key="[a,b]" (as in tools/train.py)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    from mmengine.config import Config
    args = parse_args(argv)
    if not osp.isfile(args.config):
        sys.exit(f'config file {args.config!r} not found')
    cfg = Config.fromfile(args.config)
    overrides = dict(args.cfg_options)
    if args.out_dir:
        overrides['train_cfg.synthesis.out_dir'] = args.out_dir
    if args.method:
        overrides['train_cfg.synthesis.method'] = args.method
    if args.num_images:
        overrides['train_cfg.synthesis.num_images'] = args.num_images
    cfg.merge_from_dict(overrides)
    if cfg.get('train_cfg', {}).get('type') not in ('mimiq_mm.DataFreeQATLoop', 'DataFreeQATLoop'):
        sys.exit('this config has no mimiq_mm.DataFreeQATLoop train_cfg; use a config from configs/')
    work_dir = args.work_dir or cfg.get('work_dir') or osp.join('./work_dirs', osp.splitext(
        osp.basename(args.config))[0])
    import torch
    from mmengine.dist import get_dist_info, init_dist
    from mimiq_mm.apis import init_model
    from mimiq_mm.synthesis import SyntheticSetMaker
    if args.launcher != 'none':  # ranks split the batches; gloo without CUDA
        init_dist(args.launcher, backend='nccl' if torch.cuda.is_available() else 'gloo')
    device = f'cuda:{get_dist_info()[0] % torch.cuda.device_count()}' if torch.cuda.is_available() else 'cpu'
    from train import user_errors_reported  # tools/train.py: bad input ends with its message
    with user_errors_reported():
        distiller = init_model(cfg, device=device)  # the teacher from model.teacher_checkpoint
        maker = SyntheticSetMaker.from_config(cfg.train_cfg.synthesis, distiller, work_dir)
        maker.make()
    print(f'synthetic set ready: {maker.synthetic_set.num_images} images in {maker.synthetic_set.root}')


if __name__ == '__main__':
    main()
