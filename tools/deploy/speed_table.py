"""The ONNX speed table of docs/deploy.md, from the JSON files of ``benchmark_onnx.py``: one row per
candidate and file, with the CPU each figure was measured on and its speed-up over FP32 in the
same run; the FP32 and ONNX Runtime static rows of a model and CPU are shown once.

    python tools/deploy/speed_table.py benchmarks/results/onnx_deit-s_w8a8_*.json \
        [--candidates ort_fp32 ort_static ort_mimiq ...]
"""
import argparse
import json
import os.path as osp

LABELS = dict(torch_fp32='PyTorch FP32', torch_fakequant='PyTorch, fake-quantized student',
              ort_fp32='ONNX Runtime FP32', ort_static="ONNX Runtime's own static W8/A8",
              ort_mimiq='mimiq_mm export', ort_mimiq_int8w='mimiq_mm export, 4-bit codes in int8 (`--int8-weights`)',
              ort_mimiq_u8w='mimiq_mm export, `--target x86-no-vnni` (uint8 + 128 weights)',
              ort_mimiq_s8w='mimiq_mm export, int8 weights (`--target x86-vnni`)',
              ov_fp32='OpenVINO FP32', ov_mimiq='mimiq_mm export in OpenVINO',
              ov_mimiq_int8w='mimiq_mm export in OpenVINO, 4-bit codes in int8')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Markdown table of benchmark_onnx.py's results")
    p.add_argument('results', nargs='+', help='JSON files written by tools/deploy/benchmark_onnx.py')
    p.add_argument('--candidates', nargs='+', help='rows to show, in this order (default: all of each file)')
    return p.parse_args(argv)


def cpu_label(env):
    """'AMD EPYC, AVX512, VNNI, BF16' from the recorded CPU features (older files: the vector
    level and whether int8 dot products use VNNI)."""
    cpu = env.get('cpu')
    if cpu:
        features = [name.upper() for name in ('avx512', 'vnni', 'amx', 'bf16') if cpu.get(name)]
        if not cpu.get('avx512') and cpu.get('avx2'):
            features.insert(0, 'AVX2')
        if cpu.get('vnni') is False:
            features.append('no VNNI')
        return ', '.join([cpu.get('model') or cpu.get('arch') or '?'] + features)
    parts = [env.get('device_name') or '?', env.get('cpu_capability')]
    parts.append({'vnni': 'VNNI', 'no vnni': 'no VNNI'}.get(env.get('cpu_int8_dot')))
    return ', '.join(p for p in parts if p)


def candidate_label(result, key):
    label = LABELS.get(key, key)
    bits = f"W{result['w_bits']}/A{result['a_bits']}"
    if key == 'ort_mimiq':
        # files written before --target: 8-bit weights as uint8 + 128 where an int8 candidate
        # (ort_mimiq_s8w) was timed beside them, as int8 before that
        target = result.get('target')
        older = ('uint8 + 128 weights, as `--target x86-no-vnni`' if 'ort_mimiq_s8w' in result['files'] else
                 'int8 weights, as `--target x86-vnni`')
        how = f'`--target {target}`' if target else (older if result['w_bits'] == 8 else None)
        if result['w_bits'] < 8 and result.get('opset', 21) >= 21 and 'ort_mimiq_int8w' in result['files']:
            how = 'INT4 weights'
        label = f'**{label} {bits}**' + (f', {how}' if how else '')
    elif key.startswith(('ort_mimiq', 'ov_mimiq')):
        label = label.replace('mimiq_mm export', f'mimiq_mm export {bits}')
    return label


def rows(result, candidates=None, shown=None):
    """Markdown rows (without the header) of one result file; ``shown`` (a set) holds the
    baselines (FP32, ORT static) already shown for a model and CPU, which are left out."""
    timings = result['timings']
    batches = list(timings)
    keys = [k for k in (candidates or timings[batches[0]]) if k in timings[batches[0]]]
    cpu = cpu_label(result.get('environment', {}))
    fp32_bytes = result['files']['ort_fp32']['bytes']
    lines = []
    for key in keys:
        if 'mimiq' not in key and shown is not None:
            if (key, result['model'], cpu) in shown:
                continue
            shown.add((key, result['model'], cpu))
        cells = []
        for batch in batches:
            t = timings[batch]
            base = 'ov_fp32' if key.startswith('ov_') and 'ov_fp32' in t else 'ort_fp32'
            speedup = t[base]['ms_median'] / t[key]['ms_median']
            reference = 'OpenVINO FP32' if base == 'ov_fp32' else 'ORT FP32'
            ratio = '' if key == base else f' ({speedup:.2f}× {reference})'
            cells.append(f"{t[key]['ms_median']:.1f}{ratio}")
        info = result['files'].get(key.replace('ov_', 'ort_'))
        size = f"{info['bytes'] / 1e6:.1f} ({100 * info['bytes'] / fp32_bytes:.0f} %)" if info else ''
        lines.append(f'| {candidate_label(result, key)} | ' + ' | '.join(cells) + f' | {size} | {cpu} |')
    return batches, lines


def table(results, candidates=None):
    batches, lines, shown = None, [], set()
    for result in results:
        found, more = rows(result, candidates, shown)
        batches = batches or found
        lines += more
    columns = ' | '.join(b.replace('_', ' ') for b in batches)
    header = [f'| model, ms per call | {columns} | file MB (of FP32) | CPU |',
              '|---|' + '---|' * (len(batches) + 2)]
    return '\n'.join(header + lines)


def main(argv=None):
    args = parse_args(argv)
    results = []
    for path in args.results:
        with open(path) as f:
            results.append(json.load(f))
    text = table(results, args.candidates)
    sources = ', '.join(f'`{osp.basename(p)}`' for p in args.results)
    print(text + f'\n\nOne thread, process CPU time, median of the rounds, speed-ups over FP32 in the same run; '
                 f'from {sources} (tools/deploy/speed_table.py).')
    return text


if __name__ == '__main__':
    main()
