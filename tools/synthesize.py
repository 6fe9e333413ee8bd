"""Make a synthetic set alone, from a mimiq_mm config (no fine-tuning).

One synthesis serves many fine-tuning runs: point ``train_cfg.synthesis.out_dir`` of those runs
at the folder made here. An interrupted synthesis resumes where it stopped when run again; under
``tools/dist_train.sh``-style launching (``--launcher pytorch``) ranks split the batches.

Example:
    python tools/synthesize.py configs/deit/deit-s_mimiq_w4a4.py --out-dir data/synthetic/deit-s_mimiq \
        --cfg-options model.teacher_checkpoint=deit-small.pth
"""
from mimiq_mm.apis.cli import (add_common_arguments, default_work_dir, exit_with_error, new_parser, parse_common_args,
                               user_errors_reported)
from mimiq_mm.apis.runner import read_config


def parse_args(argv=None):
    parser = new_parser('Make a MimiQ synthetic set from a config')
    parser.add_argument('config')
    parser.add_argument('--out-dir', help='where the set is written (default: <work_dir>/synthetic_<method>)')
    parser.add_argument('--method', choices=['mimiq', 'base', 'psaq', 'noise'], help='override the method')
    parser.add_argument('--num-images', type=int, help='override the number of images')
    add_common_arguments(parser)
    return parse_common_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = dict(args.cfg_options)
    if args.out_dir:
        overrides['train_cfg.synthesis.out_dir'] = args.out_dir
    if args.method:
        overrides['train_cfg.synthesis.method'] = args.method
    if args.num_images:
        overrides['train_cfg.synthesis.num_images'] = args.num_images
    cfg = read_config(args.config, overrides)
    if cfg.get('train_cfg', {}).get('type') not in ('mimiq_mm.DataFreeQATLoop', 'DataFreeQATLoop'):
        exit_with_error('this config has no mimiq_mm.DataFreeQATLoop train_cfg; use a config from configs/')
    work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    import torch
    from mmengine.dist import get_dist_info, init_dist
    from mimiq_mm.apis import init_model
    from mimiq_mm.synthesis import SyntheticSetMaker
    if args.launcher != 'none':  # ranks split the batches; gloo without CUDA
        init_dist(args.launcher, backend='nccl' if torch.cuda.is_available() else 'gloo')
    device = f'cuda:{get_dist_info()[0] % torch.cuda.device_count()}' if torch.cuda.is_available() else 'cpu'
    with user_errors_reported():
        distiller = init_model(cfg, device=device)  # the teacher from model.teacher_checkpoint
        maker = SyntheticSetMaker.from_config(cfg.train_cfg.synthesis, distiller, work_dir)
        maker.make()
    print(f'synthetic set ready: {maker.synthetic_set.num_images} images in {maker.synthetic_set.root}')


if __name__ == '__main__':
    main()
