"""Export a MimiQ-quantized student to ONNX (Q/DQ form) and check it against PyTorch.

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT --out MODEL.onnx \
        [--input-size H W] [--batch N] [--opset K] [--int8-weights] [--check N] [--check-data FOLDER]

CHECKPOINT is the ``student_wXaY.pth`` that StudentExportHook writes or a QuantDistiller
checkpoint of tools/train.py. The exported model takes normalised images (B, 3, H, W) with a
dynamic batch dimension; see ``mimiq_mm.deploy.ExportWrapper`` for what each task exports.
``--check N`` runs N random batches through ONNX Runtime and PyTorch (top-1 agreement, largest
output difference, and every activation quantizer within one step); ``--check-data FOLDER``
does the same on a folder of images. A JSON report is written next to the model
(``MODEL.onnx.json``).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None):
    from mmengine.config import DictAction
    from mimiq_mm.deploy import DEFAULT_OPSET
    p = argparse.ArgumentParser(description='Export a quantized student to ONNX (Q/DQ) and check it')
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
    p.add_argument('--signed-int8-weights', action='store_true',
                   help='keep 8-bit weight codes in int8 (faster on CPUs with VNNI or on ARM; on x86 CPUs without '
                        'VNNI ONNX Runtime then saturates). Default: uint8 codes with zero point 128, exact everywhere')
    p.add_argument('--check', type=int, default=0, metavar='N', help='compare with PyTorch on N random batches')
    p.add_argument('--check-data', metavar='FOLDER', help='compare with PyTorch on the images in FOLDER')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='overrides of the config')
    return p.parse_args(argv)


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
    from mimiq_mm.deploy.parity import compare_outputs, compare_quantizers
    from mimiq_mm.deploy.runtime import integer_ops, optimized_op_counts
    require_deploy_packages()
    torch.set_num_threads(1)
    model = init_model(args.config, args.checkpoint, part='student', cfg_options=args.cfg_options)
    size = tuple(args.input_size) if args.input_size else default_input_size(model.cfg)
    info = export_onnx(model, args.out, input_size=size, batch=args.batch, opset=args.opset,
                       int4_weights=False if args.int8_weights else None,
                       signed_8bit_weights=args.signed_int8_weights)
    info['integer_ops'] = integer_ops(optimized_op_counts(args.out))
    print(f"wrote {args.out}: {info['bytes'] / 2 ** 20:.2f} MiB, opset {info['opset']}, "
          f"{info['int4_initializers']} INT4 and {info['uint8_weight_initializers']} uint8 weight tensors, "
          f"integer ops after ONNX Runtime's optimisation: {info['integer_ops'] or 'none'}")
    checks = []
    if args.check:
        checks.append(('random', random_batches(args.check, args.batch, size)))
    if args.check_data:
        checks.append((args.check_data, list(folder_batches(model, args.check_data, size, args.batch))))
    for name, batches in checks:
        result = compare_outputs(model, args.out, batches)
        rows = compare_quantizers(model, args.out, batches[0])
        result['quantizers'] = len(rows)
        result['max_quantizer_step_diff'] = max(r['max_step_diff'] for r in rows)
        result['quantizers_with_differences'] = sum(r['differing'] > 0 for r in rows)
        info[f'check_{"random" if name == "random" else "data"}'] = dict(result, source=name)
        print(f'check on {name}: ' + ', '.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
                                                 for k, v in result.items()))
        if result['max_quantizer_step_diff'] > 1.001:
            print('WARNING: a quantizer differs by more than one step between ONNX Runtime and PyTorch')
    with open(args.out + '.json', 'w') as f:
        json.dump(dict(info, config=args.config, checkpoint=args.checkpoint), f, indent=1)
    return info


if __name__ == '__main__':
    from mimiq_mm.deploy import DeployError
    try:
        main()
    except (DeployError, FileNotFoundError, ImportError) as err:
        sys.exit(f'error: {err}')
