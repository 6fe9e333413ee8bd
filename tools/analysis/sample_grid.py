"""A grid of synthetic samples with their target labels.

Class names come from --classes (names or a file with one per line), else from the dataset of
--config (metainfo / classes / the dataset class / its class folders), else labels are shown as
numbers.

Example:
    python tools/analysis/sample_grid.py work_dirs/mimiq_vit_digits_w3a3/synthetic_mimiq \\
        --config configs/demo/mimiq_vit_digits_w3a3.py --num-images 32 --ncols 8
"""
import os
import random
import sys


from mimiq_mm.analysis import (AnalysisInputError, config_class_names, load_synthetic_set,
                               read_class_names, save_json)
from mimiq_mm.analysis.cli import add_output_arguments, new_parser, run_tool
from mimiq_mm.apis import load_config
from mimiq_mm.analysis.plots import plot_sample_grid
from mimiq_mm.synthesis import load_manifest


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = new_parser(__doc__)
    parser.add_argument('synthetic', help='synthetic set folder (with manifest.json)')
    parser.add_argument('--config', help='config whose dataset gives the class names')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={}, help='key=value overrides')
    parser.add_argument('--classes', nargs='+', metavar='NAME',
                        help='class names in label order, or one text file with a name per line')
    parser.add_argument('--num-images', type=int, default=32, help='images in the grid')
    parser.add_argument('--ncols', type=int, default=8, help='grid columns')
    parser.add_argument('--seed', type=int, help='pick images at random with this seed (default: the first ones)')
    parser.add_argument('--name-length', type=int, default=14, help='class names are cut to this many characters')
    parser.add_argument('--prefix', default='sample_grid', help='file name prefix of the outputs')
    add_output_arguments(parser)
    return parser.parse_args(argv)


def pick_indices(total, count, seed=None):
    """The first ``count`` of ``total`` images, or ``count`` at random when ``seed`` is given."""
    count = min(count, total)
    if seed is None:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(total), count))


def caption(label, class_names, max_length):
    if class_names is not None and 0 <= label < len(class_names):
        name = class_names[label]
        if name == str(label):  # class folders named by their index (e.g. digits)
            return f'label {label}'
        name = name if len(name) <= max_length else name[:max_length - 1] + '…'
        return f'{label}: {name}'
    return f'label {label}'


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1:
        raise AnalysisInputError(f'--num-images must be at least 1, got {args.num_images}')
    class_names = read_class_names(args.classes)
    if class_names is None and args.config:
        class_names = config_class_names(load_config(args.config, args.cfg_options))
    manifest = load_manifest(args.synthetic)
    indices = pick_indices(len(manifest['images']), args.num_images, args.seed)
    source = load_synthetic_set(args.synthetic, indices=indices)
    captions = [caption(label, class_names, args.name_length) for label in source.labels]
    settings = source.settings
    title = f"{source.name}: {len(source)} of {len(manifest['images'])} images"
    if settings.get('steps'):
        title += f", {settings['steps']} steps"
    path = plot_sample_grid(source.pixels, captions, os.path.join(args.out_dir, f'{args.prefix}.png'),
                            ncols=args.ncols, title=title)
    report = dict(tool='sample_grid', synthetic=args.synthetic, figure=path, settings=settings,
                  class_names=class_names,
                  images=[dict(file=f, label=l, caption=c) for f, l, c in zip(source.files, source.labels, captions)])
    print('figure:', path)
    print('report:', save_json(report, os.path.join(args.out_dir, f'{args.prefix}.json')))


if __name__ == '__main__':
    sys.exit(run_tool(main))
