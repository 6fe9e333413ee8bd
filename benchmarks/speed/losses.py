"""L_IHC and L_HAD alone, at a model's real attention shapes, timed forward + backward: L_IHC's
C++ kernel against its PyTorch definition (compared in value and gradient), L_HAD as it is."""
import contextlib

import torch

from mimiq_mm.attention import AttentionRecord, AttentionRecorder
from mimiq_mm.losses import HeadAttentionDistillLoss, InterHeadCoherencyLoss
from mimiq_mm.losses.ihc_cpu import kernel_applies, load_kernel
from mimiq_mm.utils.tables import console_table
from mimiq_mm.utils.timing import time_calls
from .steps import PRECISIONS


def _teacher_records(setup, batch, precision, device):
    d = setup.distiller
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    images = torch.randn(batch, 3, *setup.image_size, device=device)
    with torch.no_grad(), autocast, AttentionRecorder(d.teacher, fields=('scores', 'outputs'), detach=True) as rec:
        d.task.forward_tensor(d.teacher, images)
    return rec.records


def time_losses(setup, batch, precision='fp32', device='cpu', warmup=3, iters=10, timer='wall', ihc_kernel='auto'):
    """Time L_IHC and L_HAD (forward + backward) on the teacher's attention records of one batch,
    in alternation.

    The scores / head outputs are recorded once (under the run's precision, so bf16 runs feed
    bf16 tensors, as in synthesis); the student's outputs for L_HAD are the teacher's plus noise.
    L_IHC runs with ``kernel=ihc_kernel`` ('auto', 'cpp' or 'torch') and, where that is the C++
    kernel, also with its PyTorch definition (``kernel='torch'``), for the speed-up and the
    value and gradient differences.

    Returns:
        dict: per loss, one timing per implementation (``ihc``: ``fast`` with ``ihc_kernel`` and
        ``torch``; ``had``: ``fast``), and for L_IHC ``speedup`` (torch / fast median time),
        ``value_diff`` and ``grad_max_abs_diff`` / ``grad_max_abs`` between the two.
    """
    device = torch.device(device)
    records = _teacher_records(setup, batch, precision, device)
    g = torch.Generator(device='cpu').manual_seed(0)
    scores = [r.scores.detach().clone().requires_grad_() for r in records]
    ihc_records = [AttentionRecord(r.name, r.layout, scores=x) for r, x in zip(records, scores)]
    t_records = [AttentionRecord(r.name, r.layout, outputs=r.outputs.detach()) for r in records]
    students = []
    for r in records:
        noise = torch.randn(r.outputs.shape, generator=g).to(device=device, dtype=r.outputs.dtype)
        students.append((r.outputs.detach() + 0.1 * r.outputs.detach().std() * noise).requires_grad_())
    s_records = [AttentionRecord(r.name, r.layout, outputs=x) for r, x in zip(records, students)]
    fast_ihc, torch_ihc, had = (InterHeadCoherencyLoss(kernel=ihc_kernel), InterHeadCoherencyLoss(kernel='torch'),
                                HeadAttentionDistillLoss())
    uses_kernel = ihc_kernel != 'torch' and kernel_applies(scores[0]) and load_kernel(ihc_kernel == 'cpp')
    ihc = dict(fast=lambda: fast_ihc(ihc_records), torch=lambda: torch_ihc(ihc_records)) if uses_kernel else \
        dict(fast=lambda: fast_ihc(ihc_records))
    cases = dict(ihc=(scores, ihc), had=(students, dict(fast=lambda: had(t_records, s_records))))
    result = {}
    for name, (leaves, impls) in cases.items():
        entry, values, grads, calls = {}, {}, {}, {}
        for impl, fn in impls.items():
            def step(fn=fn):
                for x in leaves:
                    x.grad = None
                loss = fn()
                loss.backward()
                return loss
            calls[impl] = step
        entry.update(time_calls(calls, device, warmup=warmup, iters=iters, timer=timer))
        for impl, step in calls.items():
            values[impl] = float(step().item())
            grads[impl] = [x.grad.detach().float().clone() for x in leaves]
        entry['value'] = values['fast']
        if name == 'ihc':
            entry['kernel'] = ihc_kernel
        if 'torch' in impls:
            entry['speedup'] = entry['torch']['ms_median'] / entry['fast']['ms_median']
            entry['value_diff'] = abs(values['fast'] - values['torch'])
            entry['grad_max_abs_diff'] = max(float((a - b).abs().max()) for a, b in zip(grads['fast'], grads['torch']))
            entry['grad_max_abs'] = max(float(b.abs().max()) for b in grads['torch'])
            # At exact ties of a row's min / max (frequent in bf16) the two may give that
            # gradient to different tied keys; compare all other entries and the row sums, which
            # must agree.
            off, rows = 0.0, 0.0
            for a, b, r in zip(grads['fast'], grads['torch'], records):
                p = r.layout.num_prefix_tokens
                x = r.scores[:, :, p:, p:]
                extreme = (x == x.amin(-1, keepdim=True)) | (x == x.amax(-1, keepdim=True))
                d = (a - b)[:, :, p:, p:]
                off = max(off, float(d.masked_fill(extreme, 0).abs().max()))
                rows = max(rows, float((a.sum(-1) - b.sum(-1)).abs().max()))
            entry['grad_max_abs_diff_off_minmax'] = off
            entry['grad_row_sum_max_abs_diff'] = rows
        entry['shapes'] = [list(x.shape) for x in leaves[:1]] + ([f'x{len(leaves)} layers'] if leaves else [])
        entry['dtype'] = str(leaves[0].dtype).replace('torch.', '') if leaves else None
        result[name] = entry
        del grads
    return result


def format_losses(result):
    """A plain-text table of :func:`time_losses`; gradient differences relative to max |grad|
    (also away from each row's min/max keys, where ties may be split differently)."""
    rows = []
    for name, e in result.items():
        if 'torch' not in e:
            rows.append([name, f"{e['fast']['ms_median']:.2f}", '-', '-', '-', '-', '-'])
            continue
        scale = max(e['grad_max_abs'], 1e-30)
        off = e.get('grad_max_abs_diff_off_minmax')
        rows.append([name, f"{e['fast']['ms_median']:.2f}", f"{e['torch']['ms_median']:.2f}", f"{e['speedup']:.2f}x",
                     f"{e['value_diff']:.2e}", f"{e['grad_max_abs_diff'] / scale:.2e}",
                     f'{off / scale:.2e}' if off is not None else '-'])
    return console_table(['loss', 'ms', 'torch ms', 'speedup', '|dvalue|', '|dgrad|', '|dgrad| off min/max'], rows)
