"""Distribution of inter-head attention similarity per image, real vs synthetic (MimiQ paper, Fig. 3).

An image's similarity is the mean over layers and spatial query patches of D_q, the mean |SSIM|
between the heads' min-max normalised pre-softmax attention maps (prefix tokens dropped; all H²
head pairs as in Eq. 9), i.e. 1 - L_IHC of that image. Writes overlaid histograms (PNG) and the
per-source mean and quartiles (printed and JSON, with every image's value).

Example:
    python tools/analysis/head_similarity.py configs/demo/mimiq_vit_digits_w3a3.py \\
        --real data/digits/test --synthetic work_dirs/a/synthetic_base work_dirs/b/synthetic_mimiq \\
        --num-images 256
"""
import os
import sys


from mimiq_mm.analysis import (attention_layer_names, check_layers, format_summary_table,
                               image_head_similarity, save_json, summarize)
from mimiq_mm.analysis.cli import (add_model_arguments, add_output_arguments, add_source_arguments,
                                   build_model, load_sources, new_parser, run_tool)
from mimiq_mm.analysis.plots import plot_similarity_histograms


def parse_args(argv=None):
    parser = new_parser(__doc__)
    add_model_arguments(parser, checkpoint_help='teacher weights (a teacher checkpoint, or a trained distiller '
                        'checkpoint whose teacher is used); default: model.teacher_checkpoint of the config')
    add_source_arguments(parser, num_images=256)
    parser.add_argument('--layers', type=int, nargs='+', help='attention layer indices to average (default: all)')
    parser.add_argument('--similarity', choices=['abs', 'squared'], default='abs',
                        help='f(SSIM) between heads: |SSIM| (paper) or SSIM^2 (code lineage)')
    parser.add_argument('--bins', type=int, default=30, help='histogram bins')
    parser.add_argument('--density', action='store_true',
                        help='normalise each histogram (compare sources of different sizes)')
    parser.add_argument('--prefix', default='head_similarity', help='file name prefix of the outputs')
    add_output_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args)
    num_layers = len(attention_layer_names(model.teacher))
    layers = check_layers(args.layers, num_layers)
    sources = load_sources(args, model.input_size)

    values, report_sources = {}, {}
    for source in sources:
        similarity = image_head_similarity(model.teacher, model.inputs(source.pixels), layers, args.similarity,
                                           args.batch_size, model.forward).tolist()
        values[source.name] = similarity
        report_sources[source.name] = dict(
            kind=source.kind, root=source.root, **summarize(similarity),
            images=[dict(file=f, label=l, similarity=s) for f, l, s in zip(source.files, source.labels, similarity)])

    figure = plot_similarity_histograms(values, os.path.join(args.out_dir, f'{args.prefix}.png'), bins=args.bins,
                                        density=args.density)
    print(format_summary_table({name: summarize(v) for name, v in values.items()}))
    report = dict(tool='head_similarity', model=model.description, similarity=args.similarity, layers=layers,
                  num_layers=num_layers, figure=figure, sources=report_sources)
    print('figure:', figure)
    print('report:', save_json(report, os.path.join(args.out_dir, f'{args.prefix}.json')))


if __name__ == '__main__':
    sys.exit(run_tool(main))
