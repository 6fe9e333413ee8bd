"""Speed and size of the exported student against PyTorch and ONNX Runtime's own quantization.

Times, in one run and interleaved (one call of each candidate per round, process CPU time of
this single-threaded process, median over rounds), at each batch size:

* ``torch_fp32``: the full-precision model in PyTorch;
* ``torch_fakequant``: the fake-quantized student in PyTorch;
* ``ort_fp32``: the full-precision model exported to ONNX, in ONNX Runtime;
* ``ort_mimiq``: the student exported by ``mimiq_mm.deploy`` (Q/DQ with its own scales);
* ``ort_mimiq_int8w``: the same with 2–4-bit weight codes kept in int8 (only below 8-bit weights);
* ``ov_*`` (``--openvino``): the FP32 and exported files compiled by OpenVINO (CPU, one thread);
* ``ort_static``: ONNX Runtime's static W8A8 quantization of ``ort_fp32`` (its pre-processing,
  then QDQ with per-channel weights on MatMul/Gemm/Conv, min-max calibration on the student's
  calibration images), the limit of its integer kernels.

Also reports file sizes, the integer operators of each optimised graph, and the exported
model's agreement with the PyTorch student. Random weights are fine for speed:

    OMP_NUM_THREADS=1 taskset -c 1 python tools/deploy/benchmark_onnx.py --timm-model deit_small_patch16_224 \
        --w-bits 8 --a-bits 8
    python tools/deploy/benchmark_onnx.py CONFIG CHECKPOINT   # a trained student
"""
import argparse
import copy
import json
import os
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Benchmark the ONNX export of a quantized student')
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


def time_candidates(calls, rounds, warmup):
    """Median process CPU time (ms) of each callable, called in alternation."""
    times = {name: [] for name in calls}
    for r in range(warmup + rounds):
        for name, fn in calls.items():
            t0 = time.process_time()
            fn()
            if r >= warmup:
                times[name].append((time.process_time() - t0) * 1e3)
    return {name: dict(ms_median=statistics.median(t), ms_min=min(t), times_ms=t) for name, t in times.items()}


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mimiq_mm.deploy import ExportWrapper, export_onnx, require_deploy_packages
    from mimiq_mm.deploy.parity import compare_outputs
    from mimiq_mm.deploy.runtime import integer_ops, openvino_model, optimized_op_counts, ort_session, run
    from mimiq_mm.benchmark.timing import environment
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
    export_onnx(student, files['ort_mimiq'], input_size=size, opset=args.opset)
    if args.w_bits < 8:
        files['ort_mimiq_int8w'] = osp.join(args.work_dir, f'{tag}_int8w.onnx')
        export_onnx(student, files['ort_mimiq_int8w'], input_size=size, opset=args.opset, int4_weights=False)
    else:  # 8-bit weight codes as int8 (--signed-int8-weights): faster where the kernels cannot saturate
        files['ort_mimiq_s8w'] = osp.join(args.work_dir, f'{tag}_s8w.onnx')
        export_onnx(student, files['ort_mimiq_s8w'], input_size=size, opset=args.opset, signed_8bit_weights=True)
    ort_static_quantize(files['ort_fp32'], files['ort_static'], size)
    sessions = {key: ort_session(path) for key, path in files.items()}
    openvino = {key.replace('ort_', 'ov_'): openvino_model(files[key])
                for key in ('ort_fp32', 'ort_mimiq', 'ort_mimiq_int8w') if args.openvino and key in files}
    fp_wrapper, q_wrapper = ExportWrapper(fp).eval(), ExportWrapper(student).eval()
    probe = [calibration_images(size, seed=s) for s in (2, 3)]  # the parity checks' images
    result = dict(model=name, w_bits=args.w_bits, a_bits=args.a_bits, act_method=args.act_method,
                  input_size=list(size), opset=args.opset, rounds=args.rounds, warmup=args.warmup,
                  timer='process CPU time, one thread (torch and ONNX Runtime), candidates interleaved',
                  files={k: dict(path=p, bytes=osp.getsize(p)) for k, p in files.items()},
                  integer_ops={k: integer_ops(optimized_op_counts(p)) for k, p in files.items()},
                  parity=compare_outputs(student, files['ort_mimiq'], probe),
                  **({'parity_s8w': compare_outputs(student, files['ort_mimiq_s8w'], probe)}
                     if 'ort_mimiq_s8w' in files else {}),
                  timings={})
    if openvino:  # the exported file in OpenVINO against the PyTorch student, as for ONNX Runtime
        with torch.no_grad():
            ours = [q_wrapper(x).argmax(1).numpy() for x in probe]
        theirs = [openvino['ov_mimiq'](x)[0].argmax(1) for x in probe]
        result['parity_openvino'] = dict(images=sum(len(a) for a in ours), top1_agreement=float(
            sum((a == b).sum() for a, b in zip(ours, theirs)) / sum(len(a) for a in ours)))
        result['environment_openvino'] = __import__('openvino').__version__
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
        result['timings'][f'batch_{batch}'] = time_candidates(calls, args.rounds, args.warmup)
    command = 'python tools/deploy/benchmark_onnx.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    result['environment'] = environment('cpu', command.split())
    result['environment']['onnxruntime'] = __import__('onnxruntime').__version__
    print(format_table(result))
    out = args.out or osp.join('benchmarks', 'results', f'onnx_{tag}.json')
    with open(out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {out}')
    return result


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
