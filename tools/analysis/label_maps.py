"""Segmentation label maps of several models side by side, each compared with a reference.

Reads the ``.npz`` label maps that ``tools/test.py --save-label-maps`` (``mimiq_mm.SegPredictionWriter``)
writes, e.g. one for the full-precision teacher and one per quantized student. Each model's map is
drawn with the pixels where it differs from the reference in red; the JSON report gives every
model's pixel agreement with the reference over all images of the files.

Example:
    python tools/analysis/label_maps.py --images data/dense_digits/images/validation \\
        --reference teacher=work_dirs/teacher_maps.npz --maps 'noise PTQ=noise.npz' MimiQ=mimiq.npz \\
        --num-images 4
"""
import os
import os.path as osp
import sys

import numpy as np

from mimiq_mm.analysis import AnalysisInputError, save_json
from mimiq_mm.analysis.cli import add_output_arguments, new_parser, run_tool, split_named_path
from mimiq_mm.analysis.plots import plot_label_map_agreement


def parse_args(argv=None):
    parser = new_parser(__doc__)
    parser.add_argument('--images', required=True, help='folder of the test images the maps were made on')
    parser.add_argument('--reference', required=True, metavar='NAME=MAPS.npz', help='the reference model\'s maps')
    parser.add_argument('--maps', nargs='+', required=True, metavar='NAME=MAPS.npz', help='the compared models\' maps')
    parser.add_argument('--num-images', type=int, default=4, help='images (rows) in the figure')
    parser.add_argument('--prefix', default='label_maps', help='file name prefix of the outputs')
    add_output_arguments(parser)
    return parser.parse_args(argv)


def named_file(text):
    name, path = split_named_path(text, 'PATH.npz')
    if not osp.isfile(path):
        raise FileNotFoundError(f'label maps {path} not found (write them with tools/test.py --save-label-maps)')
    with np.load(path) as stored:
        return name, {key: stored[key] for key in stored.files}


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1:
        raise AnalysisInputError(f'--num-images must be at least 1, got {args.num_images}')
    from PIL import Image
    reference_name, reference = named_file(args.reference)
    models = dict(named_file(text) for text in args.maps)
    for name, maps in models.items():
        if set(maps) != set(reference):
            raise AnalysisInputError(f'{name}\'s maps cover other images than {reference_name}\'s '
                                     '(another test split?)')
    agreement = {name: 100 * float(np.mean([np.mean(maps[key] == reference[key]) for key in reference]))
                 for name, maps in models.items()}
    shown = sorted(reference)[:args.num_images]
    images = [np.asarray(Image.open(osp.join(args.images, key)).convert('RGB')) for key in shown]
    num_classes = 1 + int(max(m.max() for maps in [reference, *models.values()] for m in maps.values()))
    path = plot_label_map_agreement(images, reference_name, [reference[k] for k in shown],
                                    {name: [maps[k] for k in shown] for name, maps in models.items()},
                                    shown, os.path.join(args.out_dir, f'{args.prefix}.png'), num_classes)
    for name, value in agreement.items():
        print(f'{name}: {value:.2f} % of the pixels of {len(reference)} images agree with {reference_name}')
    report = dict(tool='label_maps', reference={reference_name: args.reference}, maps=args.maps, images=args.images,
                  shown=shown, pixel_agreement_percent=agreement, num_images=len(reference), figure=path)
    print('figure:', path)
    print('report:', save_json(report, os.path.join(args.out_dir, f'{args.prefix}.json')))


if __name__ == '__main__':
    sys.exit(run_tool(main))
