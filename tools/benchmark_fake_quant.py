"""torch's fake-quantize kernels against mimiq_mm's: values, gradients, CPU speed, bf16.

Compared on the same inputs (activations per tensor with an offset, weights per output channel):

* ``ours``: :func:`mimiq_mm.quant.fake_quantize` (the quantizers' kernel);
* ``reference``: the autograd formulation it replaced (``--reference`` FILE, the
  ``quantizers.py`` of an older checkout), when given;
* ``torch_per_tensor`` / ``torch_per_channel``: ``torch.fake_quantize_per_{tensor,channel}_affine``;
* ``torch_learnable``: ``torch._fake_quantize_learnable_per_tensor_affine`` against our LSQ
  quantizer's step/offset path (gradients of the input, step and offset).

Speed is the process CPU time of this (single-threaded) process, the candidates called in
alternation, median over ``--rounds``. Writes a JSON (default
``benchmarks/results/fake_quant_kernels_cpu.json``) and prints a table.

Example (one thread, pinned)::

    OMP_NUM_THREADS=1 taskset -c 1 python tools/benchmark_fake_quant.py \
        --reference /work/baseline/mimiq_mm/quant/quantizers.py
"""
import argparse
import importlib.util
import json
import math
import os
import os.path as osp
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

ACT_SHAPES = {'tokens (8,197,384)': (8, 197, 384), 'mlp (8,197,1536)': (8, 197, 1536),
              'probs (8,6,197,197)': (8, 6, 197, 197)}
WEIGHT_SHAPES = {'weight (1536,384)': (1536, 384)}
VALUE_CASES = [  # (bits, signed, step, offset)
    (8, False, 0.0371, 97), (8, False, 0.02, 128), (4, False, 0.41, 7), (4, True, 0.37, 1), (2, False, 1.3, 1)]


def load_reference(path):
    spec = importlib.util.spec_from_file_location('reference_quantizers', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def q_range(bits, signed):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def per_tensor_impls(reference):
    from mimiq_mm.quant import fake_quantize
    impls = {'ours': fake_quantize}
    if reference is not None:
        impls['reference'] = reference.fake_quantize
    impls['torch_per_tensor'] = lambda x, s, o, lo, hi: torch.fake_quantize_per_tensor_affine(
        x, s.float(), o.int(), lo, hi)
    return impls


def per_channel_impls(reference):
    """Callables (w, step (C, 1), q_min, q_max) -> fake-quantized w, symmetric per output channel."""
    from mimiq_mm.quant import fake_quantize
    impls = {'ours': lambda w, s, lo, hi: fake_quantize(w, s, 0.0, lo, hi)}
    if reference is not None:
        impls['reference'] = lambda w, s, lo, hi: reference.fake_quantize(w, s, 0.0, lo, hi)
    impls['torch_per_channel'] = lambda w, s, lo, hi: torch.fake_quantize_per_channel_affine(
        w, s.flatten().float(), torch.zeros(w.shape[0], dtype=torch.int32), 0, lo, hi)
    return impls


def compare_values_and_grads(reference, n=2_000_000, seed=0):
    """Per case: elements whose value or input gradient differs from ``ours``."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, generator=g) * 3
    rows = []
    for bits, signed, step, offset in VALUE_CASES:
        lo, hi = q_range(bits, signed)
        s, o = torch.tensor(step), torch.tensor(float(offset))
        outs, grads = {}, {}
        for name, fn in per_tensor_impls(reference).items():
            x = x0.clone().requires_grad_(True)
            y = fn(x, s, o, lo, hi)
            y.sum().backward()
            outs[name], grads[name] = y.detach(), x.grad
        z = x0 / step + offset
        half_bins = ((z > hi) & (z < hi + 0.5)) | ((z < lo) & (z >= lo - 0.5))
        for name in outs:
            if name == 'ours':
                continue
            diff = (outs[name] - outs['ours']).abs()
            grad_diff = grads[name] != grads['ours']
            rows.append(dict(case=f'per-tensor {bits}-bit {"signed" if signed else "unsigned"} step={step} '
                                  f'offset={offset}', impl=name, elements=n,
                             value_mismatches=int((diff > 0).sum()),
                             max_value_diff_in_steps=float(diff.max() / step),
                             grad_mismatches=int(grad_diff.sum()),
                             grad_mismatches_in_half_bins_beyond_range=int((grad_diff & half_bins).sum())))
    w0 = torch.randn(1536, 384, generator=g) * torch.logspace(-3, 1, 1536)[:, None]
    for bits in (8, 4, 3, 2):
        q_max = 2 ** (bits - 1) - 1
        s = (w0.abs().amax(1, keepdim=True) / q_max).clamp_min(1e-8)
        outs, grads = {}, {}
        for name, fn in per_channel_impls(reference).items():
            w = w0.clone().requires_grad_(True)
            y = fn(w, s, -q_max - 1, q_max)
            y.sum().backward()
            outs[name], grads[name] = y.detach(), w.grad
        for name in outs:
            if name == 'ours':
                continue
            diff = (outs[name] - outs['ours']).abs()
            rows.append(dict(case=f'per-channel weight {bits}-bit', impl=name, elements=w0.numel(),
                             value_mismatches=int((diff > 0).sum()),
                             max_value_diff_in_steps=float((diff / s).max()),
                             grad_mismatches=int((grads[name] != grads['ours']).sum()),
                             grad_mismatches_in_half_bins_beyond_range=None))
    return rows


def _ours():
    from mimiq_mm.quant import fake_quantize
    return fake_quantize


def lsq_ours(x, step_p, offset_p, lo, hi, factor):
    from mimiq_mm.quant.quantizers import grad_scale, round_ste
    step = grad_scale(step_p, factor).abs().clamp_min(1e-8)
    offset = round_ste(grad_scale(offset_p, factor))
    return _ours()(x, step, offset, lo, hi)


def lsq_torch(x, step_p, offset_p, lo, hi, factor):
    return torch._fake_quantize_learnable_per_tensor_affine(x, step_p.reshape(1), offset_p.reshape(1), lo, hi, factor)


def compare_lsq(n=2_000_000, seed=1):
    """LSQ: values and gradients (input, step, offset) of torch's learnable kernel against ours."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, generator=g) * 2
    rows = []
    for bits, signed, step, offset in [(8, False, 0.031, 100.0), (4, True, 0.25, 1.0), (4, False, 0.3, 3.4)]:
        lo, hi = q_range(bits, signed)
        factor = 1.0 / math.sqrt(n * hi)
        res = {}
        for name, fn in (('ours', lsq_ours), ('torch_learnable', lsq_torch)):
            x = x0.clone().requires_grad_(True)
            s, o = torch.tensor(step, requires_grad=True), torch.tensor(offset, requires_grad=True)
            y = fn(x, s, o, lo, hi, factor)
            y.sum().backward()
            res[name] = (y.detach(), x.grad, s.grad, o.grad)
        (y0, gx0, gs0, go0), (y1, gx1, gs1, go1) = res['ours'], res['torch_learnable']
        rows.append(dict(case=f'LSQ {bits}-bit {"signed" if signed else "unsigned"} step={step} offset={offset}',
                         elements=n, value_mismatches=int((y0 != y1).sum()),
                         max_value_diff_in_steps=float((y0 - y1).abs().max() / step),
                         input_grad_mismatches=int((gx0 != gx1).sum()),
                         step_grad_ours=float(gs0), step_grad_torch=float(gs1),
                         step_grad_rel_diff=float((gs0 - gs1).abs() / gs0.abs().clamp_min(1e-12)),
                         offset_grad_ours=float(go0), offset_grad_torch=float(go1),
                         offset_grad_rel_diff=float((go0 - go1).abs() / go0.abs().clamp_min(1e-12))))
    return rows


def compare_bf16(reference, n=1_000_000, seed=2):
    """bf16 inputs: quantized levels against the same inputs quantized in float32.

    ``ours`` is called as the quantizers call it (float32 step and offset); ``reference`` as the
    old quantizers called it (step and offset cast to the input's dtype, arithmetic in bf16).
    """
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 3).bfloat16()
    rows = []
    for bits, signed, step, offset in VALUE_CASES:
        lo, hi = q_range(bits, signed)
        s, o = torch.tensor(step), torch.tensor(float(offset))
        exact = _ours()(x.float(), s, o, lo, hi)
        impls = {'ours': lambda: _ours()(x, s, o, lo, hi),
                 'torch_per_tensor': lambda: torch.fake_quantize_per_tensor_affine(x, s, o.int(), lo, hi)}
        if reference is not None:
            impls['reference'] = lambda: reference.fake_quantize(x, s.bfloat16(), o.bfloat16(), lo, hi)
        for name, fn in impls.items():
            try:
                y = fn()
            except Exception as err:  # an unsupported dtype is a result too
                rows.append(dict(case=f'{bits}-bit step={step} offset={offset}', impl=name,
                                 error=f'{type(err).__name__}: {str(err).splitlines()[0]}'))
                continue
            levels = torch.round(y.float() / step)
            ref_levels = torch.round(exact / step)
            rows.append(dict(case=f'{bits}-bit step={step} offset={offset}', impl=name, out_dtype=str(y.dtype),
                             level_mismatches_vs_fp32=int((levels != ref_levels).sum()),
                             max_level_diff=float((levels - ref_levels).abs().max()), elements=n))
    return rows


def _timed(fn):
    t0 = time.thread_time()
    fn()
    return (time.thread_time() - t0) * 1e3


def time_kernels(reference, rounds=15, warmup=2, seed=3):
    """CPU time (ms) per call: eval (no autograd) and train (forward + backward)."""
    g = torch.Generator().manual_seed(seed)
    calls = {}
    for label, shape in ACT_SHAPES.items():
        x = torch.randn(*shape, generator=g) * 3
        s, o = torch.tensor(0.0371), torch.tensor(97.0)
        xg = x.clone().requires_grad_(True)
        gy = torch.randn_like(x)
        for name, fn in per_tensor_impls(reference).items():
            calls[(label, 'eval', name)] = (lambda fn=fn, x=x, s=s, o=o: _no_grad(fn, x, s, o, 0, 255))
            calls[(label, 'train', name)] = (lambda fn=fn, x=xg, s=s, o=o, gy=gy: _grad(fn(x, s, o, 0, 255), [x], gy))
        sp, op = torch.tensor(0.0371, requires_grad=True), torch.tensor(97.0, requires_grad=True)
        factor = 1.0 / math.sqrt(x.numel() * 255)
        for name, fn in (('ours', lsq_ours), ('torch_learnable', lsq_torch)):
            calls[(label, 'train LSQ', name)] = (lambda fn=fn, x=xg, s=sp, o=op, f=factor, gy=gy:
                                                 _grad(fn(x, s, o, 0, 255, f), [x, s, o], gy))
    for label, shape in WEIGHT_SHAPES.items():
        w = torch.randn(*shape, generator=g)
        s = (w.abs().amax(1, keepdim=True) / 127).clamp_min(1e-8)
        wg = w.clone().requires_grad_(True)
        gy = torch.randn_like(w)
        for name, fn in per_channel_impls(reference).items():
            calls[(label, 'eval', name)] = (lambda fn=fn, w=w, s=s: _no_grad(fn, w, s, -128, 127))
            calls[(label, 'train', name)] = (lambda fn=fn, w=wg, s=s, gy=gy: _grad(fn(w, s, -128, 127), [w], gy))
    times = {key: [] for key in calls}
    for r in range(warmup + rounds):
        for key, fn in calls.items():
            t = _timed(fn)
            if r >= warmup:
                times[key].append(t)
    rows = []
    for (label, mode, name), ts in times.items():
        rows.append(dict(tensor=label, mode=mode, impl=name, ms_median=statistics.median(ts), ms_min=min(ts),
                         times_ms=ts))
    return rows


def _grad(y, inputs, grad_output):
    """Forward already done; backward to ``inputs`` without accumulating into ``.grad``."""
    return torch.autograd.grad(y, inputs, grad_output)


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def format_speed(rows):
    lines = [f'{"tensor":22s} {"mode":10s} {"impl":18s} {"ms (median)":>12s} {"x ours":>8s}']
    ours = {(r['tensor'], r['mode']): r['ms_median'] for r in rows if r['impl'] == 'ours'}
    for r in rows:
        ratio = r['ms_median'] / ours[(r['tensor'], r['mode'])]
        lines.append(f'{r["tensor"]:22s} {r["mode"]:10s} {r["impl"]:18s} {r["ms_median"]:12.3f} {ratio:8.2f}')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--reference', help='quantizers.py of an older checkout (its fake_quantize is compared too)')
    p.add_argument('--rounds', type=int, default=15)
    p.add_argument('--out', default='benchmarks/results/fake_quant_kernels_cpu.json')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from mimiq_mm.benchmark.timing import environment
    reference = load_reference(args.reference) if args.reference else None
    result = dict(values_and_grads=compare_values_and_grads(reference), lsq=compare_lsq(),
                  bf16=compare_bf16(reference))
    for key in ('values_and_grads', 'lsq', 'bf16'):
        for row in result[key]:
            print(key, json.dumps(row))
    result['speed'] = time_kernels(reference, rounds=args.rounds)
    print(format_speed(result['speed']))
    result['environment'] = environment('cpu', ['python', 'tools/benchmark_fake_quant.py'] +
                                        list(sys.argv[1:] if argv is None else argv))
    result['timer'] = 'process CPU time (time.thread_time), one thread, candidates interleaved'
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
