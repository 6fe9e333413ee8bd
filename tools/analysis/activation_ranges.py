"""The activation ranges that calibration images give the quantizers, compared with real images.

Post-training quantization sets each activation quantizer's range (min-max) from the images it
is calibrated on. Images whose activations reach further than real ones spend the few levels of a
low-bit quantizer on values real images never produce. For each source (the first is the
reference, usually --real), the student's min-max quantizers are calibrated afresh on its images
and every quantizer's range (max - min) is divided by the reference's: the table gives, per kind
of quantizer (the module name's last part: qkv/proj/fc1/fc2 inputs, the attention matmuls' q, k,
probabilities and v), the median and the largest ratio.

Example:
    python tools/analysis/activation_ranges.py configs/cifar10/... --checkpoint TEACHER.pth \\
        --real data/cifar10/test --synthetic work/vit/synthetic/noise work/vit/synthetic/base
"""
import os
import statistics
import sys
from collections import defaultdict

import torch

from mimiq_mm.analysis import AnalysisInputError, calibrate_student, save_json
from mimiq_mm.analysis.cli import (add_model_arguments, add_output_arguments, add_source_arguments,
                                   build_model, load_sources, new_parser, run_tool)
from mimiq_mm.quant import MinMaxActQuantizer, reset_activation_ranges
from mimiq_mm.utils.tables import console_table


def parse_args(argv=None):
    parser = new_parser(__doc__)
    add_model_arguments(parser, checkpoint_help='the teacher\'s weights (a teacher or distiller checkpoint)')
    parser.add_argument('--w-bits', type=int, default=4, help='weight bits of the student')
    parser.add_argument('--a-bits', type=int, default=4, help='activation bits of the student')
    add_source_arguments(parser, num_images=128)
    add_output_arguments(parser)
    return parser.parse_args(argv)


def calibrated_ranges(model, pixels, batch_size):
    """{quantizer name: max - min} after min-max calibration on ``pixels``."""
    reset_activation_ranges(model.student)
    calibrate_student(model, model.inputs(pixels), batch_size)
    return {name: float(q.max_val - q.min_val) for name, q in model.student.named_modules()
            if isinstance(q, MinMaxActQuantizer) and bool(q.initialized)}


def kind_of(name):
    """'blocks.3.attn.qkv.input_quantizer' -> 'attn.qkv input'; 'blocks.0.attn.mimiq_core.prob_quantizer' -> 'prob'."""
    parts = name.split('.')
    if parts[-1] == 'input_quantizer':
        return '.'.join(p for p in parts[-3:-1] if not p.isdigit()) + ' input'
    return parts[-1].replace('_quantizer', '')


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args, with_student=True, w_bits=args.w_bits, a_bits=args.a_bits, act_method='minmax')
    if not any(isinstance(q, MinMaxActQuantizer) for q in model.student.modules()):
        raise AnalysisInputError('the student has no min-max activation quantizers; use a config with '
                                 "model.quant.act_method='minmax' (or --cfg-options model.quant.act_method=minmax)")
    sources = load_sources(args, model.input_size)
    with torch.no_grad():
        ranges = {s.name: calibrated_ranges(model, s.pixels, args.batch_size) for s in sources}
    reference = sources[0].name
    rows, report = [], {}
    for source in sources[1:]:
        by_kind = defaultdict(list)
        for name, width in ranges[source.name].items():
            by_kind[kind_of(name)].append(width / max(ranges[reference][name], 1e-12))
        report[source.name] = {k: dict(median=statistics.median(v), max=max(v), count=len(v))
                               for k, v in sorted(by_kind.items())}
        rows += [[source.name, kind, f"{s['median']:.2f}", f"{s['max']:.2f}", s['count']]
                 for kind, s in report[source.name].items()]
    print(f'range of each quantizer / its range on {reference}:')
    print(console_table(['source', 'quantizer', 'median ratio', 'max ratio', 'quantizers'], rows))
    path = save_json(dict(tool='activation_ranges', model=model.description, reference=reference,
                          ratios=report, ranges=ranges),
                     os.path.join(args.out_dir, 'activation_ranges.json'))
    print('report:', path)
    return report


if __name__ == '__main__':
    sys.exit(run_tool(main))
