"""L_IHC and L_HAD alone, at a model's real attention shapes: the fast paths against the
formulations that build the per-head maps (the previous implementation), timed forward + backward
and compared in value and gradient."""
import contextlib

import torch

from ..attention import AttentionRecord, AttentionRecorder
from ..losses import (HeadAttentionDistillLoss, InterHeadCoherencyLoss, global_ssim, pairwise_global_ssim,
                      spatial_head_maps, upcast_half)
from ..utils.tables import console_table
from .steps import PRECISIONS
from .timing import time_interleaved


def ihc_from_maps(records, eps=1e-8):
    """Global-SSIM L_IHC (|SSIM|) through the min-max-normalised (B', Q, H, K) maps."""
    per_layer = []
    for record in records:
        sim = pairwise_global_ssim(spatial_head_maps(record, eps))
        per_layer.append((1 - sim.abs().mean(dim=(-2, -1))).mean())
    return torch.stack(per_layer).mean()


def had_from_maps(teacher_records, student_records, k1=0.01, k2=0.03, min_range=1e-6):
    """L_HAD 'dssim' through fp32 copies of the maps and :func:`global_ssim`."""
    per_layer = []
    for tr, sr in zip(teacher_records, student_records):
        p = tr.layout.num_prefix_tokens
        t = upcast_half(tr.outputs.detach()[:, :, p:, :]).flatten(2)
        s = upcast_half(sr.outputs[:, :, p:, :]).flatten(2)
        data_range = (t.amax(dim=-1) - t.amin(dim=-1)).clamp_min(min_range)
        ssim = global_ssim(t, s, c1=(k1 * data_range).pow(2), c2=(k2 * data_range).pow(2), dim=-1)
        per_layer.append((1 - ssim.abs()).mean())
    return torch.stack(per_layer).mean()


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
    the fast path and the map-building formulation in alternation.

    The scores / head outputs are recorded once (under the run's precision, so bf16 runs feed
    bf16 tensors, as in synthesis); the student's outputs for L_HAD are the teacher's plus noise.
    ``ihc_kernel``: the fast L_IHC's ``kernel`` option ('auto', 'cpp' or 'torch').

    Returns:
        dict: per loss, ``fast`` and ``maps`` timings, ``speedup`` (maps / fast median time),
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
    fast_ihc, fast_had = InterHeadCoherencyLoss(kernel=ihc_kernel), HeadAttentionDistillLoss()
    cases = dict(ihc=(scores, dict(fast=lambda: fast_ihc(ihc_records), maps=lambda: ihc_from_maps(ihc_records))),
                 had=(students, dict(fast=lambda: fast_had(t_records, s_records),
                                     maps=lambda: had_from_maps(t_records, s_records))))
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
        entry.update(time_interleaved(calls, device, warmup=warmup, iters=iters, timer=timer))
        for impl, step in calls.items():
            values[impl] = float(step().item())
            grads[impl] = [x.grad.detach().float().clone() for x in leaves]
        entry['speedup'] = entry['maps']['ms_median'] / entry['fast']['ms_median']
        entry['value'] = values['fast']
        entry['value_diff'] = abs(values['fast'] - values['maps'])
        entry['grad_max_abs_diff'] = max(float((a - b).abs().max()) for a, b in zip(grads['fast'], grads['maps']))
        entry['grad_max_abs'] = max(float(b.abs().max()) for b in grads['maps'])
        if name == 'ihc':
            entry['kernel'] = ihc_kernel
            # At exact ties of a row's min / max (frequent in bf16) the fast path gives that
            # gradient to one tied key instead of splitting it; compare all other entries and the
            # row sums, which must agree.
            off, rows = 0.0, 0.0
            for a, b, r in zip(grads['fast'], grads['maps'], records):
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
    (for L_IHC also away from each row's min/max keys, where ties may be split differently)."""
    rows = []
    for name, e in result.items():
        scale = max(e['grad_max_abs'], 1e-30)
        off = e.get('grad_max_abs_diff_off_minmax')
        rows.append([name, f"{e['fast']['ms_median']:.2f}", f"{e['maps']['ms_median']:.2f}", f"{e['speedup']:.2f}x",
                     f"{e['value_diff']:.2e}", f"{e['grad_max_abs_diff'] / scale:.2e}",
                     f'{off / scale:.2e}' if off is not None else '-'])
    return console_table(['loss', 'fast ms', 'maps ms', 'speedup', '|dvalue|', '|dgrad|', '|dgrad| off min/max'],
                         rows)
