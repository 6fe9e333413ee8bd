"""Run a config under torch.distributed (gloo on CPU) and dump each rank's quantizer state.

Usage (from tests): python -m torch.distributed.run --nproc_per_node 2 tests/dist_train_and_dump.py \
    CONFIG WORK_DIR key=value ...
"""
import os
import sys

import torch

import mimiq_mm  # noqa: F401
from mimiq_mm.apis.runner import prepare_distributed_without_cuda  # what tools/train.py does: gloo + CPU DDP
from mimiq_mm.quant import quantizers


def main():
    from mmengine.config import Config, DictAction
    from mmengine.runner import Runner
    config, work_dir, *options = sys.argv[1:]
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({k: DictAction._parse_iterable(v) for k, v in (o.split('=', 1) for o in options)})
    cfg.work_dir = work_dir
    cfg.launcher = 'pytorch'
    prepare_distributed_without_cuda(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()
    student = runner.model.module.student
    state = {}
    for name, module in student.named_modules():
        if module in quantizers(student):
            for key, value in list(module.named_parameters()) + list(module.named_buffers()):
                state[f'{name}.{key}'] = value.detach().cpu().clone()
    rank = int(os.environ.get('RANK', 0))
    torch.save(state, os.path.join(work_dir, f'quantizers_rank{rank}.pt'))


if __name__ == '__main__':
    main()
