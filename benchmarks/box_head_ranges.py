"""How far a detector's activations on synthetic images are from those on real ones, per part.

For every Linear/Conv2d input of a two-stage detector (the patch embedding's raw image excepted):
its min-max range and its least-squared-error range (the default LSQ start, ``mse_range``) on a
batch of synthetic images and on a batch of real test images, both run as the detection task runs
them (the model's own top RPN proposals through the box head, its most confident RoIs through the
mask head). A part whose real least-squared-error range is far above its synthetic one is clipped
by a start fitted on synthetic images. It also counts the RoIs the RoI classifier is confident on.

Example (the dense benchmark's registered Mask R-CNN, the robustness run's synthetic set)::

    python -m benchmarks.box_head_ranges --checkpoint ~/.cache/mimiq_mm/teachers/dense-digits_maskrcnn.pth \\
        --synthetic work_dirs/dense_robustness_v2/jobs2/maskrcnn/synthetic/mimiq/images \\
        --out benchmarks/results/dense_box-head-ranges_maskrcnn_cpu_amd-epyc-zen4_2026-12-07
"""
import argparse
import glob
import os.path as osp
import statistics
import sys

import numpy as np
import torch
import torch.nn as nn

from .provenance import provenance
from .table.state import write_json

PARTS = ('backbone', 'neck', 'rpn_head', 'roi_head.bbox_head', 'roi_head.mask_head')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default='configs/dense_bench/mask-rcnn_swin-e48-w4_fpn64_digits.py')
    p.add_argument('--checkpoint', required=True, help='the teacher detector')
    p.add_argument('--synthetic', required=True, help='folder of synthetic images (PNG)')
    p.add_argument('--real', default='data/dense_digits/images/validation', help='folder of real test images')
    p.add_argument('--images', type=int, default=16, help='images of each kind (the first by name)')
    p.add_argument('--size', type=int, default=128, help='side the images are resized to')
    p.add_argument('--num-rois', type=int, default=128, help="proposals per image through the box head")
    p.add_argument('--bits', type=int, default=4, help='activation bits of the least-squared-error range')
    p.add_argument('--out', required=True, help='output path without extension (.json and .md are written)')
    return p.parse_args(argv)


def load_images(folder, count, size):
    from PIL import Image
    files = sorted(f for f in glob.glob(osp.join(folder, '*')) if f.lower().endswith(('.png', '.jpg', '.jpeg')))
    if not files:
        raise SystemExit(f'no images in {folder}')
    arrays = [np.asarray(Image.open(f).convert('RGB').resize((size, size))) for f in files[:count]]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # (N, 3, H, W) RGB 0-255


def ranges_on(model, task, pixels, bits):
    """{layer name: (min-max high, least-squared-error high)} of each layer input, and the number
    of RoIs whose top foreground class probability exceeds 0.5, out of all."""
    from mimiq_mm.quant.ranges import minmax_range, mse_range
    pre = model.data_preprocessor
    x = pixels[:, [2, 1, 0]] if getattr(pre, '_channel_conversion', False) else pixels
    x = (x - pre.mean) / pre.std
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][1:]
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.setdefault(n, []).append(i[0].detach().flatten()))
             for n, m in layers]  # every call (the RPN runs once per FPN level)
    with torch.no_grad():
        out = task.forward_tensor(model, x)
    for h in hooks:
        h.remove()
    found = {}
    for name, values in inputs.items():
        value = torch.cat(values)
        found[name] = (float(minmax_range(value)[1]), float(mse_range(value, 2 ** bits)[1]))
    conf = out['cls_score'].softmax(-1)[:, :-1].max(-1).values
    return found, int((conf > 0.5).sum()), len(conf)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    from mmdet.apis import init_detector
    from mimiq_mm.tasks import build_task
    model = init_detector(args.config, args.checkpoint, device='cpu').eval()
    task = build_task(model, dict(type='detection', num_rois=args.num_rois))
    results = {}
    for kind, folder in (('synthetic', args.synthetic), ('real', args.real)):
        ranges, confident, rois = ranges_on(model, task, load_images(folder, args.images, args.size), args.bits)
        results[kind] = dict(ranges=ranges, confident_rois=confident, rois=rois)
    parts = {}
    for part in PARTS:
        names = [n for n in results['real']['ranges'] if n.startswith(part + '.')]
        ratios = [results['real']['ranges'][n][1] / results['synthetic']['ranges'][n][1] for n in names]
        parts[part] = dict(layers=len(names), median_lse_ratio=statistics.median(ratios), max_lse_ratio=max(ratios))
    record = dict(what='activation ranges of a detector on synthetic and real images', parts=parts, **results,
                  provenance=provenance(['python', '-m', 'benchmarks.box_head_ranges'] + list(argv or sys.argv[1:]),
                                        threads=1))
    write_json(args.out + '.json', record)
    lines = [f'# {record["what"]}', '', f'Command: `{record["provenance"]["command"]}`; commit '
             f'{record["provenance"]["commit"]}; CPU: {record["provenance"]["cpu"]}.', '',
             f'{args.images} synthetic and {args.images} real images; RoIs the RoI classifier is confident on '
             f'(> 0.5): synthetic {results["synthetic"]["confident_rois"]} of {results["synthetic"]["rois"]}, '
             f'real {results["real"]["confident_rois"]} of {results["real"]["rois"]}.', '',
             f'Least-squared-error range ({args.bits}-bit) of each layer input on real images over the same on '
             'synthetic images:', '', '| part | layers | median ratio | largest ratio |', '|---|---|---|---|']
    lines += [f'| {p} | {v["layers"]} | {v["median_lse_ratio"]:.2f} | {v["max_lse_ratio"]:.2f} |' for p, v in parts.items()]
    lines += ['', '| layer input | synthetic min-max | synthetic LSE | real min-max | real LSE |', '|---|---|---|---|---|']
    lines += [f'| {n} | {s[0]:.2f} | {s[1]:.2f} | {r[0]:.2f} | {r[1]:.2f} |'
              for n, s in results['synthetic']['ranges'].items() for r in [results['real']['ranges'][n]]]
    with open(args.out + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines[:12 + len(parts)]))


if __name__ == '__main__':
    main()
