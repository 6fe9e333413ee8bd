"""Detections of several models side by side, each compared with a reference model's.

Reads the COCO files that ``tools/test.py --save-detections`` (``mimiq_mm.DetPredictionWriter``)
writes, e.g. one for the full-precision teacher and one per quantized student. Each model's boxes
are drawn green where they reproduce a reference box (same class, IoU >= 0.5), red where they do
not, and the reference boxes a model misses dashed yellow; the JSON report gives every model's
recall and precision of the reference's boxes over all images of the files.

Example:
    python tools/analysis/detections.py --images data/dense_digits/images/validation \\
        --reference teacher=work_dirs/teacher_detections.json \\
        --detections 'noise PTQ=noise.json' MimiQ=mimiq.json --num-images 4
"""
import os
import os.path as osp
import sys

import numpy as np

from mimiq_mm.analysis import AnalysisInputError, save_json
from mimiq_mm.analysis.cli import add_output_arguments, new_parser, run_tool, split_named_path
from mimiq_mm.analysis.detections import box_agreement, boxes_to_draw, load_detections
from mimiq_mm.analysis.plots import plot_detection_agreement


def parse_args(argv=None):
    parser = new_parser(__doc__)
    parser.add_argument('--images', required=True, help='folder of the test images the detections were made on')
    parser.add_argument('--reference', required=True, metavar='NAME=DETS.json', help='the reference model\'s')
    parser.add_argument('--detections', nargs='+', required=True, metavar='NAME=DETS.json',
                        help='the compared models\' detections')
    parser.add_argument('--num-images', type=int, default=4, help='images (rows) in the figure')
    parser.add_argument('--prefix', default='detections', help='file name prefix of the outputs')
    add_output_arguments(parser)
    return parser.parse_args(argv)


def named_file(text):
    name, path = split_named_path(text, 'PATH.json')
    return name, load_detections(path)


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1:
        raise AnalysisInputError(f'--num-images must be at least 1, got {args.num_images}')
    from PIL import Image
    reference_name, reference = named_file(args.reference)
    models = dict(named_file(text) for text in args.detections)
    agreement = box_agreement(models, reference)
    shown = sorted(reference)[:args.num_images]
    images = [np.asarray(Image.open(osp.join(args.images, key)).convert('RGB')) for key in shown]
    drawn = {name: [boxes_to_draw(dets[key], reference[key]) for key in shown] for name, dets in models.items()}
    titles = {name: f'{name}\nrecall {a["recall"]:.0f} %, prec. {a["precision"]:.0f} %'
              for name, a in agreement.items()}
    path = plot_detection_agreement(images, reference_name, [reference[k]['boxes'] for k in shown], drawn, shown,
                                    os.path.join(args.out_dir, f'{args.prefix}.png'), titles)
    for name, a in agreement.items():
        print(f'{name}: {a["recall"]:.2f} % of {reference_name}\'s {a["reference_boxes"]} boxes reproduced, '
              f'{a["precision"]:.2f} % of its {a["boxes"]} boxes reproduce one ({len(reference)} images)')
    report = dict(tool='detections', reference={reference_name: args.reference}, detections=args.detections,
                  images=args.images, shown=shown, agreement=agreement, num_images=len(reference), figure=path)
    print('figure:', path)
    print('report:', save_json(report, os.path.join(args.out_dir, f'{args.prefix}.json')))


if __name__ == '__main__':
    sys.exit(run_tool(main))
