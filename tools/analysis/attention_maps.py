"""Per-head attention maps of one query patch, real vs synthetic images (MimiQ paper, Fig. 2).

Rows are images (a few per source), the first column the input with the query patch marked,
then one column per head: the head's min-max normalised attention of the query over the spatial
keys (pre-softmax scores by default, as L_IHC compares them). Each row's title ends with D_q, the
mean |SSIM| between its head maps. One PNG per layer plus a JSON index.

Examples:
    python tools/analysis/attention_maps.py configs/demo/mimiq_vit_digits_w3a3.py \\
        --real data/digits/test --synthetic work_dirs/mimiq_vit_digits_w3a3/synthetic_mimiq \\
        --layers 0 3 --query center
    python tools/analysis/attention_maps.py --timm-model vit_small_patch16_224 --checkpoint vit_s.pth \\
        --real imagenet/val --synthetic sets/base sets/psaq sets/mimiq --layers 0 5 11 --query 7 7
"""
import os
import sys


from mimiq_mm.analysis import (AnalysisInputError, attention_layer_names, check_layers,
                               patch_centre_pixel, patch_grid_of, query_head_maps, record_attention,
                               resolve_query, save_json)
from mimiq_mm.analysis.cli import (add_model_arguments, add_output_arguments, add_source_arguments,
                                   build_model, load_sources, new_parser, run_tool)
from mimiq_mm.analysis.plots import HeadMapRow, plot_head_maps


def parse_args(argv=None):
    parser = new_parser(__doc__)
    add_model_arguments(parser, checkpoint_help='teacher weights (a teacher checkpoint, or a trained distiller '
                        'checkpoint whose teacher is used); default: model.teacher_checkpoint of the config')
    add_source_arguments(parser, num_images=1, batch_size=False)
    parser.add_argument('--layers', type=int, nargs='+',
                        help='attention layer indices, negatives from the end (default: first, middle, last)')
    parser.add_argument('--query', nargs='+', default=['center'], metavar='Q',
                        help="query patch: 'center' or ROW COL on the patch grid (also 'ROW,COL')")
    parser.add_argument('--map', choices=['scores', 'probs'], default='scores',
                        help='pre-softmax scores (what L_IHC compares) or softmax probabilities')
    parser.add_argument('--similarity', choices=['abs', 'squared'], default='abs',
                        help='f of the D_q in the row titles: |SSIM| (paper) or SSIM^2')
    parser.add_argument('--prefix', default='attention_maps', help='file name prefix of the outputs')
    add_output_arguments(parser)
    return parser.parse_args(argv)


def parse_query(tokens):
    """['center'] | ['3', '4'] | ['3,4'] | ['(3,4)'] -> 'center' or (3, 4)."""
    text = ' '.join(tokens).strip().lower()
    if text in ('center', 'centre'):
        return 'center'
    parts = text.strip('()[]').replace(',', ' ').split()
    try:
        row, col = (int(p) for p in parts)
    except ValueError:
        raise AnalysisInputError(f"--query must be 'center' or ROW COL (two integers), got {text!r}") from None
    return row, col


def default_layers(num_layers):
    """First, middle and last attention layer."""
    return sorted({0, num_layers // 2, num_layers - 1})


def row_label(source, index, class_names, coherency):
    parts = [source.name, source.files[index]]
    label = source.label_text(index, class_names)
    if label:
        parts.append(f'label {label}')
    parts.append(f'D_q = {coherency:.3f}')
    return '\n'.join(parts)


def main(argv=None):
    args = parse_args(argv)
    query = parse_query(args.query)
    model = build_model(args)
    num_layers = len(attention_layer_names(model.teacher))
    layers = check_layers(args.layers, num_layers) if args.layers else default_layers(num_layers)
    sources = load_sources(args, model.input_size)

    rows = {layer: [] for layer in layers}
    entries = {layer: [] for layer in layers}
    names, windowed = {}, {}
    for source in sources:
        records = record_attention(model.teacher, model.inputs(source.pixels), (args.map,), layers, model.forward)
        patch_grid = patch_grid_of(model.teacher) or records[0].layout.grid
        query_cell = resolve_query(query, patch_grid)
        query_pixel = patch_centre_pixel(query_cell, patch_grid, model.input_size)
        for layer, record in zip(layers, records):
            names[layer] = record.name
            maps = query_head_maps(record, query, patch_grid, args.map, args.similarity)
            windowed[layer] = maps.windowed
            for i in range(len(source)):
                coherency = float(maps.coherency[i])
                rows[layer].append(HeadMapRow(label=row_label(source, i, model.class_names, coherency),
                                              image=source.pixels[i], query_pixel=query_pixel,
                                              maps=maps.maps[i].numpy(), query_cell=maps.query_cell))
                entries[layer].append(dict(source=source.name, kind=source.kind, file=source.files[i],
                                           label=source.labels[i], coherency=coherency))

    figures = []
    for layer in layers:
        path = os.path.join(args.out_dir, f'{args.prefix}_layer{layer:02d}.png')
        title = (f'layer {layer} ({names[layer]}): per-head attention {args.map} of query patch '
                 f'{query_cell} (patch grid {patch_grid[0]}x{patch_grid[1]})'
                 + ('\nkeys: the attention window holding the query' if windowed[layer] else ''))
        plot_head_maps(rows[layer], title, path)
        figures.append(dict(index=layer, name=names[layer], windowed=windowed[layer], figure=path,
                            rows=entries[layer]))
        print(f'layer {layer}: {path}')
    report = dict(tool='attention_maps', model=model.description, query=list(query_cell), patch_grid=list(patch_grid),
                  map=args.map, similarity=args.similarity, num_layers=num_layers,
                  sources=[dict(name=s.name, kind=s.kind, root=s.root, num_images=len(s)) for s in sources],
                  layers=figures)
    print('report:', save_json(report, os.path.join(args.out_dir, f'{args.prefix}.json')))


if __name__ == '__main__':
    sys.exit(run_tool(main))
