"""The embedded default, end to end on a CPU in a few minutes, with no network:

1. export scikit-learn's digits (shipped inside the package) as a 16x16 ImageFolder;
2. train a small DeiT-style ViT teacher on the train split (mmpretrain runner);
3. quantize it to W3/A3 without touching the train images: post-training quantization calibrated
   on Gaussian noise, and MimiQ (IHC synthesis + KL + HAD fine-tuning);
4. print top-1 on the test split of the FP teacher and both quantized students.

W3/A3 because on data this easy a small ViT survives W4/A4 even with noise-calibrated PTQ, so
W4/A4 would not show the difference the method makes; at 3 bits naive PTQ visibly breaks.

Usage: python tools/demo.py [--work-dir work_dirs/demo] [--data-root data/digits]
"""
import argparse
import json
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import mimiq_mm  # noqa: E402,F401  (registers components, safe checkpoint loading)
from mimiq_mm.datasets.digits import export_digits  # noqa: E402

CONFIGS = {
    'teacher': 'configs/demo/vit_digits_teacher.py',
    'ptq_noise': 'configs/demo/ptq_noise_vit_digits_w3a3.py',
    'mimiq': 'configs/demo/mimiq_vit_digits_w3a3.py',
}


def build_runner(config, work_dir, data_root, extra=None):
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.work_dir = work_dir
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
    if extra:
        cfg.merge_from_dict(extra)
    return Runner.from_cfg(cfg)


def top1(metrics):
    return float(metrics['accuracy/top1'])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/digits')
    args = parser.parse_args()
    import torch
    torch.manual_seed(0)
    n_train, n_test = export_digits(args.data_root)
    print(f'digits: {n_train} train / {n_test} test images in {args.data_root}')

    results, timings = {}, {}
    teacher_dir = osp.join(args.work_dir, 'teacher')
    teacher_ckpt = osp.join(teacher_dir, 'epoch_30.pth')
    t0 = time.time()
    trained = osp.isfile(teacher_ckpt)  # a second `make demo` reuses the teacher
    runner = build_runner(CONFIGS['teacher'], teacher_dir, args.data_root,
                          extra={'load_from': teacher_ckpt} if trained else None)
    if not trained:
        runner.train()
    results['FP teacher'] = top1(runner.test())
    timings['FP teacher'] = time.time() - t0

    for key, label in (('ptq_noise', 'PTQ, Gaussian-noise calibration'), ('mimiq', 'MimiQ (data-free QAT)')):
        t0 = time.time()
        runner = build_runner(CONFIGS[key], osp.join(args.work_dir, key), args.data_root,
                              extra={'model.teacher_checkpoint': teacher_ckpt})
        runner.train()
        results[f'W3/A3 {label}'] = top1(runner.test())
        timings[f'W3/A3 {label}'] = time.time() - t0

    width = max(len(k) for k in results)
    print('\n' + '=' * (width + 22))
    print(f'{"model":<{width}}  top-1 (%)  time (s)')
    for k, v in results.items():
        print(f'{k:<{width}}  {v:9.2f}  {timings[k]:8.1f}')
    print('=' * (width + 22))
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(dict(top1=results, seconds=timings, configs=CONFIGS), f, indent=1)


if __name__ == '__main__':
    main()
