"""Timing callables and reading peak memory, on CPU and CUDA: the one timing helper of the
project's speed measurements (the synthesis / fine-tuning steps, the L_IHC kernel, the ONNX
export)."""
import gc
import statistics
import time

import torch

TIMERS = ('wall', 'process')


def synchronize(device):
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def reset_peak_memory(device):
    """Forget the previous peak (CUDA); a no-op on CPU."""
    device = torch.device(device)
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def allocated_memory(device):
    """Bytes held by tensors now (CUDA), None on CPU."""
    device = torch.device(device)
    return int(torch.cuda.memory_allocated(device)) if device.type == 'cuda' else None


def peak_memory(device):
    """Peak bytes held by tensors since the last :func:`reset_peak_memory` (CUDA), None on CPU."""
    device = torch.device(device)
    return int(torch.cuda.max_memory_allocated(device)) if device.type == 'cuda' else None


def _timed_call(call, device):
    """(wall ms, process CPU ms or None) of one call; CUDA: events on the current stream, the device
    synchronised before the start event and after the end event."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        call()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)), None
    c0, t0 = time.process_time(), time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def time_calls(calls, device='cpu', warmup=3, iters=10, timer='wall', memory=False):
    """Time each callable of ``calls`` ``iters`` times after ``warmup`` untimed rounds, the
    callables in alternation (one call of each per round), so that a shared machine's changing
    load affects them alike.

    Every timed call is bracketed by synchronisation: CUDA events on CUDA, a ``perf_counter``
    pair on CPU, where the process's CPU time of each call is read as well (``cpu_times_ms``);
    ``timer='process'`` makes it the one the summary uses, steadier than wall time on a shared
    machine when torch runs one thread. (``torch.utils.benchmark.Timer`` is not used: every
    measurement of it runs extra warm-up calls, which would triple the cost of a training step.)

    Args:
        calls (dict[str, callable]): what to time.
        device: where the calls run.
        warmup (int): untimed rounds first.
        iters (int): timed rounds.
        timer (str): 'wall' or 'process' (CPU only; CUDA always uses events).
        memory (bool): also read ``peak_memory_bytes`` (peak tensor memory during the timed calls)
            and ``memory_before_bytes`` (tensor memory held before the first call), CUDA only
            (None on CPU); meaningful for one callable.

    Returns:
        dict[str, dict]: per name, ``timer`` ('wall', 'process' or 'cuda-events'), ``times_ms``
        (of that timer), ``ms_mean``, ``ms_median``, ``ms_min``, and on CPU ``wall_times_ms`` and
        ``cpu_times_ms``.
    """
    if timer not in TIMERS:
        raise ValueError(f'timer must be one of {TIMERS}, got {timer!r}')
    if iters < 1:
        raise ValueError(f'iters must be at least 1, got {iters}')
    device = torch.device(device)
    if memory:
        reset_peak_memory(device)
        before = allocated_memory(device)
    for _ in range(max(int(warmup), 0)):
        for call in calls.values():
            call()
    synchronize(device)
    if memory:
        reset_peak_memory(device)
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for _ in range(int(iters)):
        for name, call in calls.items():
            wall_ms, cpu_ms = _timed_call(call, device)
            wall[name].append(wall_ms)
            cpu[name].append(cpu_ms)
    synchronize(device)
    results = {}
    for name in calls:
        if device.type == 'cuda':
            result, times = dict(timer='cuda-events'), wall[name]
        else:
            result = dict(timer=timer, wall_times_ms=wall[name], cpu_times_ms=cpu[name])
            times = cpu[name] if timer == 'process' else wall[name]
        result.update(times_ms=times, ms_mean=statistics.fmean(times), ms_median=statistics.median(times),
                      ms_min=min(times))
        if memory:
            result.update(peak_memory_bytes=peak_memory(device), memory_before_bytes=before)
        results[name] = result
    return results
