"""Teacher vs quantized-student distance of the per-head attention outputs, per layer.

For each attention layer: DSSIM (1 - |SSIM|, as L_HAD) and MSE between teacher and student head
outputs attn·v (prefix tokens dropped), averaged over heads and images — shows where
quantization hurts. Bar chart (PNG; one bar colour per image source) + JSON with per-head values.

The student comes from a trained distiller --checkpoint; without one it is the config's
freshly quantized student (or, for --timm-model / plain task configs, one quantized with
--w-bits/--a-bits), calibrated on the images of the first source.

Examples:
    python tools/analysis/head_distance.py configs/demo/mimiq_vit_digits_w3a3.py \\
        --checkpoint work_dirs/mimiq_vit_digits_w3a3/iter_400.pth --real data/digits/test
    python tools/analysis/head_distance.py configs/demo/mimiq_vit_digits_w3a3.py \\
        --synthetic work_dirs/mimiq_vit_digits_w3a3/synthetic_mimiq     # freshly calibrated student
"""
import os
import sys


from mimiq_mm.analysis import calibrate_fresh_student, head_distances, save_json
from mimiq_mm.analysis.cli import (add_model_arguments, add_output_arguments, add_source_arguments,
                                   build_model, load_sources, new_parser, run_tool)
from mimiq_mm.analysis.plots import plot_layer_distances
from mimiq_mm.losses import HAD_METRICS


def parse_args(argv=None):
    parser = new_parser(__doc__)
    add_model_arguments(parser, checkpoint_help='trained distiller checkpoint (tools/train.py) or student export; '
                        'with --timm-model: the teacher weights. Leave out for a freshly calibrated student')
    parser.add_argument('--teacher-checkpoint',
                        help='teacher weights (default: model.teacher_checkpoint of the config)')
    parser.add_argument('--w-bits', type=int, default=4, help='weight bits (--timm-model / plain task configs only)')
    parser.add_argument('--a-bits', type=int, default=4, help='activation bits (--timm-model / plain configs only)')
    parser.add_argument('--act-method', choices=['minmax', 'lsq'], default='minmax',
                        help='activation quantizer (--timm-model / plain task configs only)')
    add_source_arguments(parser, num_images=64)
    parser.add_argument('--layers', type=int, nargs='+', help='attention layer indices (default: all)')
    parser.add_argument('--metrics', nargs='+', choices=HAD_METRICS, default=['dssim', 'mse'],
                        help='head output distances')
    parser.add_argument('--prefix', default='head_distance', help='file name prefix of the outputs')
    add_output_arguments(parser)
    return parser.parse_args(argv)


def print_table(layer_indices, per_source):
    for source, result in per_source.items():
        print(f'{source}:')
        metrics = list(result.per_head)
        print('  layer  ' + '  '.join(f'{m:>10}' for m in metrics) + '  name')
        for row, (index, name) in enumerate(zip(layer_indices, result.layer_names)):
            cells = '  '.join(f'{result.per_layer(m)[row]:>10.5f}' for m in metrics)
            print(f'  {index:>5}  {cells}  {name}')


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args, with_student=True, w_bits=args.w_bits, a_bits=args.a_bits,
                        act_method=args.act_method)
    sources = load_sources(args, model.input_size)
    calibrated_on = None
    if calibrate_fresh_student(model, model.inputs(sources[0].pixels), args.batch_size):
        calibrated_on = sources[0].name
        print(f'student quantizers calibrated on {len(sources[0])} images of {calibrated_on}')

    results = {}
    for source in sources:
        results[source.name] = head_distances(model.teacher, model.student, model.inputs(source.pixels),
                                              args.metrics, args.layers, args.batch_size, model.forward)
    first = next(iter(results.values()))
    print_table(first.layer_indices, results)
    figure = plot_layer_distances([str(i) for i in first.layer_indices],
                                  {name: {m: r.per_layer(m) for m in args.metrics} for name, r in results.items()},
                                  os.path.join(args.out_dir, f'{args.prefix}.png'))
    report = dict(tool='head_distance', model=model.description, checkpoint=args.checkpoint,
                  calibrated_on=calibrated_on, metrics=list(args.metrics), figure=figure,
                  sources={name: dict(kind=s.kind, root=s.root, **results[name].to_dict())
                           for name, s in zip(results, sources)})
    print('figure:', figure)
    print('report:', save_json(report, os.path.join(args.out_dir, f'{args.prefix}.json')))


if __name__ == '__main__':
    sys.exit(run_tool(main))
