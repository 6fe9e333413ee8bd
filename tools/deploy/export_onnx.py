"""Export a MimiQ-quantized student to ONNX (Q/DQ form) and check it against PyTorch.

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT --out MODEL.onnx [--target auto|x86-vnni|x86-no-vnni|arm] \
        [--input-size H W] [--batch N] [--opset K] [--int8-weights] [--check N] [--check-data FOLDER]

CHECKPOINT is the ``student_wXaY.pth`` that StudentExportHook writes or a QuantDistiller
checkpoint of tools/train.py. The exported model takes normalised images (B, 3, H, W) with a
dynamic batch dimension; see ``mimiq_mm.deploy.ExportWrapper`` for what each task exports.
``--target`` is the CPU the file is for (``mimiq_mm.deploy.target``; default: this one).
``--check N`` runs N random batches through ONNX Runtime and PyTorch, ``--check-data FOLDER``
the images of a folder: on every batch, the outputs against the student's own rounding envelope
(``mimiq_mm.deploy.parity``) and every activation quantizer, which may differ by one step at a
near-tie and nowhere else. A JSON report is written next to the model (``MODEL.onnx.json``); the
exit status is 1 when a check fails.
"""
import json
import sys

from mimiq_mm.apis.cli import USER_ERRORS, add_cfg_options, new_parser, user_errors_reported
from mimiq_mm.deploy import DEFAULT_OPSET, TARGETS, DeployError


def parse_args(argv=None):
    p = new_parser('Export a quantized student to ONNX (Q/DQ) and check it')
    p.add_argument('config', help='the mimiq_mm config the student was trained with')
    p.add_argument('checkpoint', help='student_wXaY.pth, or a QuantDistiller checkpoint')
    p.add_argument('--out', required=True, help='the .onnx file to write')
    p.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                   help="image size (default: the config's synthesis image size, else 224 224)")
    p.add_argument('--batch', type=int, default=1, help='batch of the example and check inputs (the exported '
                                                         'batch dimension is dynamic)')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    p.add_argument('--int8-weights', action='store_true',
                   help='keep 2-4-bit weight codes in int8 initializers (twice the file of INT4, but ONNX Runtime '
                        'runs those matmuls on integer kernels)')
    p.add_argument('--target', default='auto', choices=('auto',) + TARGETS,
                   help='the CPU the file is for: x86-vnni and arm store 8-bit weight codes as int8 (fast), '
                        'x86-no-vnni as uint8 + 128 (x86 CPUs without VNNI would saturate on int8); auto (default): '
                        'the CPU doing the export')
    p.add_argument('--signed-int8-weights', action='store_true',
                   help='deprecated: the same as --target x86-vnni')
    p.add_argument('--check', type=int, default=0, metavar='N', help='compare with PyTorch on N random batches')
    p.add_argument('--check-data', metavar='FOLDER', help='compare with PyTorch on the images in FOLDER')
    add_cfg_options(p)
    args = p.parse_args(argv)
    if args.signed_int8_weights:
        print('--signed-int8-weights is deprecated: use --target x86-vnni (or arm)')
        if args.target not in ('auto', 'x86-vnni'):
            p.error(f'--signed-int8-weights contradicts --target {args.target}')
        args.target = 'x86-vnni'
    return args


def default_input_size(cfg):
    size = (cfg.get('train_cfg') or {}).get('synthesis', {}).get('image_size') if cfg.get('train_cfg') else None
    if size is None:
        return 224, 224
    return (size, size) if isinstance(size, int) else tuple(size)


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mimiq_mm.apis import init_model
    from mimiq_mm.deploy import export_onnx, require_deploy_packages
    from mimiq_mm.deploy.data import folder_batches, random_batches
    from mimiq_mm.deploy.parity import check_parity
    from mimiq_mm.deploy.runtime import integer_ops, optimized_op_counts
    require_deploy_packages()
    torch.set_num_threads(1)
    model = init_model(args.config, args.checkpoint, part='student', cfg_options=args.cfg_options)
    size = tuple(args.input_size) if args.input_size else default_input_size(model.cfg)
    info = export_onnx(model, args.out, input_size=size, batch=args.batch, opset=args.opset,
                       int4_weights=False if args.int8_weights else None,
                       target=args.target)
    info['integer_ops'] = integer_ops(optimized_op_counts(args.out))
    print(f"wrote {args.out}: {info['bytes'] / 2 ** 20:.2f} MiB, opset {info['opset']}, target {info['target']}, "
          f"{info['int4_initializers']} INT4 and {info['uint8_weight_initializers']} uint8 weight tensors, "
          f"integer ops after ONNX Runtime's optimisation: {info['integer_ops'] or 'none'}")
    checks = []
    if args.check:
        checks.append(('random', random_batches(args.check, args.batch, size)))
    if args.check_data:
        checks.append((args.check_data, list(folder_batches(model, args.check_data, size, args.batch))))
    for name, batches in checks:
        result = check_parity(model, args.out, batches)
        info[f'check_{"random" if name == "random" else "data"}'] = dict(result, source=name)
        print(f'check on {name}: ' + ', '.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
                                                 for k, v in result.items()))
        if not result['passed']:
            print(f'PARITY CHECK FAILED on {name}: ONNX Runtime does not compute the student here '
                  '(outputs beyond its rounding envelope, or a quantizer off by more than a near-tie)')
    with open(args.out + '.json', 'w') as f:
        json.dump(dict(info, config=args.config, checkpoint=args.checkpoint), f, indent=1)
    return info


if __name__ == '__main__':
    with user_errors_reported(USER_ERRORS + (DeployError, ImportError)):
        report = main()
    sys.exit(0 if all(v['passed'] for k, v in report.items() if k.startswith('check_')) else 1)
