"""Speed and size of the exported student against PyTorch and ONNX Runtime's own quantization.

Times, in one run and interleaved (one call of each candidate per round, process CPU time of
this single-threaded process, median over rounds), at each batch size:

* ``torch_fp32``: the full-precision model in PyTorch;
* ``torch_fakequant``: the fake-quantized student in PyTorch;
* ``ort_fp32``: the full-precision model exported to ONNX, in ONNX Runtime;
* ``ort_mimiq``: the student exported by ``mimiq_mm.deploy`` (Q/DQ with its own scales) with the
  default ``--target auto`` (this CPU);
* ``ort_mimiq_int8w``: the same with 2–4-bit weight codes kept in int8 (only below 8-bit weights);
* ``ort_mimiq_u8w`` / ``ort_mimiq_s8w`` (8-bit weights): the other storage of the weight codes
  than ``auto`` chose here, uint8 + 128 (``--target x86-no-vnni``) or int8 (``x86-vnni``);
* ``ov_*`` (``--openvino``): the FP32 and exported files compiled by OpenVINO (CPU, one thread);
* ``ort_static``: ONNX Runtime's static W8A8 quantization of ``ort_fp32`` (its pre-processing,
  then QDQ with per-channel weights on MatMul/Gemm/Conv, min-max calibration on the student's
  calibration images), the limit of its integer kernels.

Also reports file sizes, the integer operators of each optimised graph, the exported model's
agreement with the PyTorch student (``mimiq_mm.deploy.parity``), and what the timings depend on
(CPU model and features, threads, versions, git commit). Random weights are fine for speed:

    OMP_NUM_THREADS=1 taskset -c 1 python tools/deploy/benchmark_onnx.py --timm-model deit_small_patch16_224 \
        --w-bits 8 --a-bits 8
    python tools/deploy/speed_table.py benchmarks/results/onnx_*.json   # the table of docs/deploy.md
    python tools/deploy/benchmark_onnx.py CONFIG CHECKPOINT   # a trained student
"""
import copy
import json
import os
import os.path as osp
import subprocess
import sys

from mimiq_mm.apis.cli import new_parser


def parse_args(argv=None):
    p = new_parser('Benchmark the ONNX export of a quantized student')
    p.add_argument('config', nargs='?', help='a mimiq_mm config (with CHECKPOINT), instead of --timm-model')
    p.add_argument('checkpoint', nargs='?', help='student_wXaY.pth or a QuantDistiller checkpoint')
    p.add_argument('--timm-model', help='a timm model name, randomly initialised, e.g. deit_small_patch16_224')
    p.add_argument('--w-bits', type=int, default=8)
    p.add_argument('--a-bits', type=int, default=8)
    p.add_argument('--act-method', default='minmax', choices=['minmax', 'lsq'])
    p.add_argument('--input-size', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    p.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--opset', type=int, default=21)
    p.add_argument('--work-dir', default='work_dirs/deploy_bench', help='where the .onnx files go')
    p.add_argument('--out', help='JSON path (default benchmarks/results/onnx_<model>_w<W>a<A>.json)')
    p.add_argument('--openvino', action='store_true', help='also time the FP32 and exported files in OpenVINO '
                                                            '(`pip install -e .[openvino]`)')
    args = p.parse_args(argv)
    if bool(args.timm_model) == bool(args.config):
        p.error('give either CONFIG CHECKPOINT or --timm-model')
    return args


def build_models(args, size):
    """(name, full-precision model, calibrated fake-quantized student)."""
    import torch
    from mimiq_mm.quant import calibration, quantize_model, set_quantization
    if args.timm_model:
        import timm
        torch.manual_seed(0)
        fp = timm.create_model(args.timm_model, pretrained=False, img_size=size).eval()
        student = quantize_model(copy.deepcopy(fp), w_bits=args.w_bits, a_bits=args.a_bits,
                                 act_method=args.act_method).eval()
        with torch.no_grad(), calibration(student):
            student(calibration_images(size))
        return args.timm_model, fp, student
    from mimiq_mm.apis import init_model
    student = init_model(args.config, args.checkpoint, part='student')
    fp = set_quantization(copy.deepcopy(student), False, False)
    return osp.splitext(osp.basename(args.config))[0], fp, student


def calibration_images(size, count=8, seed=1):
    import torch
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def export_fp32(fp, path, size, opset):
    import torch
    from mimiq_mm.deploy import ExportWrapper
    wrapper = ExportWrapper(fp).eval()
    with torch.no_grad():
        torch.onnx.export(wrapper, (torch.randn(1, 3, *size),), path, dynamo=True, opset_version=opset,
                          dynamic_shapes=({0: torch.export.Dim('batch', min=1, max=4096)},),
                          input_names=['images'], output_names=['logits'], external_data=False)


def ort_static_quantize(fp32_path, path, size):
    """ONNX Runtime's recipe: its pre-processing (shape inference, graph optimisation), then
    static QDQ quantization."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    prepared = path + '.pre.onnx'
    quant_pre_process(fp32_path, prepared)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([dict(images=calibration_images(size).numpy())])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(prepared, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=['MatMul', 'Gemm', 'Conv'])
    os.remove(prepared)


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mimiq_mm.deploy import WEIGHT_STORAGE, ExportWrapper, export_onnx, require_deploy_packages
    from mimiq_mm.deploy.parity import compare_outputs
    from mimiq_mm.deploy.runtime import integer_ops, openvino_model, optimized_op_counts, ort_session, run
    from mimiq_mm.utils.timing import time_calls
    require_deploy_packages()
    torch.set_num_threads(1)
    size = tuple(args.input_size)
    name, fp, student = build_models(args, size)
    os.makedirs(args.work_dir, exist_ok=True)
    tag = f'{name}_w{args.w_bits}a{args.a_bits}_{args.act_method}'
    files = dict(ort_fp32=osp.join(args.work_dir, f'{name}_fp32.onnx'),
                 ort_mimiq=osp.join(args.work_dir, f'{tag}.onnx'),
                 ort_static=osp.join(args.work_dir, f'{name}_ort_static_w8a8.onnx'))
    export_fp32(fp, files['ort_fp32'], size, args.opset)
    exported = export_onnx(student, files['ort_mimiq'], input_size=size, opset=args.opset)  # --target auto
    if args.w_bits < 8:
        files['ort_mimiq_int8w'] = osp.join(args.work_dir, f'{tag}_int8w.onnx')
        export_onnx(student, files['ort_mimiq_int8w'], input_size=size, opset=args.opset, int4_weights=False)
    else:  # the other storage of 8-bit weight codes, for comparison
        other, key = (('x86-no-vnni', 'ort_mimiq_u8w') if WEIGHT_STORAGE[exported['target']] == 'int8' else
                      ('x86-vnni', 'ort_mimiq_s8w'))
        files[key] = osp.join(args.work_dir, f'{tag}_{key[-3:]}.onnx')
        export_onnx(student, files[key], input_size=size, opset=args.opset, target=other)
    ort_static_quantize(files['ort_fp32'], files['ort_static'], size)
    sessions = {key: ort_session(path) for key, path in files.items()}
    openvino = {key.replace('ort_', 'ov_'): openvino_model(files[key])
                for key in ('ort_fp32', 'ort_mimiq', 'ort_mimiq_int8w') if args.openvino and key in files}
    fp_wrapper, q_wrapper = ExportWrapper(fp).eval(), ExportWrapper(student).eval()
    probe = [calibration_images(size, seed=s) for s in (2, 3)]  # the parity checks' images
    result = dict(model=name, w_bits=args.w_bits, a_bits=args.a_bits, act_method=args.act_method,
                  input_size=list(size), opset=args.opset, rounds=args.rounds, warmup=args.warmup,
                  target=exported['target'], target_source=exported['target_source'],
                  timer='process CPU time, one thread (torch, ONNX Runtime, OpenVINO), candidates interleaved',
                  files={k: dict(file=osp.basename(p), bytes=osp.getsize(p)) for k, p in files.items()},
                  integer_ops={k: integer_ops(optimized_op_counts(p)) for k, p in files.items()},
                  parity=compare_outputs(student, files['ort_mimiq'], probe), timings={})
    for key in ('ort_mimiq_u8w', 'ort_mimiq_s8w'):
        if key in files:
            result[f'parity_{key[-3:]}'] = compare_outputs(student, files[key], probe)
    if openvino:  # the exported file in OpenVINO against the PyTorch student, as for ONNX Runtime
        result['parity_openvino'] = compare_outputs(student, openvino['ov_mimiq'], probe)
        result['openvino_settings'] = openvino['ov_mimiq'].settings
    for batch in args.batches:
        images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        array = images.numpy()

        def torch_call(wrapper):
            def call():
                with torch.no_grad():
                    wrapper(images)
            return call
        calls = dict(torch_fp32=torch_call(fp_wrapper), torch_fakequant=torch_call(q_wrapper))
        calls.update({key: (lambda s=s: run(s, array)) for key, s in sessions.items()})
        calls.update({key: (lambda m=m: m(array)) for key, m in openvino.items()})
        result['timings'][f'batch_{batch}'] = time_calls(calls, 'cpu', args.warmup, args.rounds, timer='process')
    result['environment'] = benchmark_environment(sys.argv[1:] if argv is None else argv)
    print(format_table(result))
    out = args.out or osp.join('benchmarks', 'results', f'onnx_{tag}.json')
    with open(out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {out}')
    return result


def benchmark_environment(argv):
    """What the timings depend on, without paths of this machine: CPU model and features,
    threads, library versions, the git commit."""
    from mimiq_mm.utils.environment import cpu_features, environment
    command = ['python', 'tools/deploy/benchmark_onnx.py'] + [osp.basename(a) if osp.isabs(a) else a for a in argv]
    env = environment('cpu', command)
    try:
        openvino = __import__('openvino').__version__
    except ImportError:
        openvino = None
    env.update(cpu=cpu_features(), threads=dict(torch=1, onnxruntime=1, openvino=1),
               onnxruntime=__import__('onnxruntime').__version__, openvino=openvino, git=git_commit())
    return env


def git_commit():
    """The checkout's commit, '+uncommitted changes' where tracked files differ from it; None without git."""
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    try:
        commit = subprocess.run(['git', '-C', root, 'rev-parse', '--short', 'HEAD'], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', root, 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return (commit + ('+uncommitted changes' if dirty else '')) or None


def format_table(result):
    fp32_bytes = result['files']['ort_fp32']['bytes']
    batches = list(result['timings'])
    lines = ['| candidate | ' + ' | '.join(f'{b} ms (× ort_fp32)' for b in batches) +
             ' | file MiB (× fp32) | integer ops |',
             '|---|' + '---|' * (len(batches) + 2)]
    for key in result['timings'][batches[0]]:
        cells = []
        for b in batches:
            t = result['timings'][b]
            speedup = t['ort_fp32']['ms_median'] / t[key]['ms_median']
            cells.append(f"{t[key]['ms_median']:.1f} ({speedup:.2f}× faster)")
        info = result['files'].get(key.replace('ov_', 'ort_'))
        size = f"{info['bytes'] / 2 ** 20:.1f} ({info['bytes'] / fp32_bytes:.2f})" if info else '-'
        ops = ', '.join(f'{op} {n}' for op, n in result['integer_ops'].get(key, {}).items()) or '-'
        lines.append(f'| {key} | ' + ' | '.join(cells) + f' | {size} | {ops} |')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
