"""Synchronised step timers and peak-memory readings that work on CPU and CUDA."""
import gc
import platform
import statistics
import sys
import time

import torch


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


def time_step(step, device, warmup=3, iters=10, timer='wall'):
    """Time ``step()`` (one full training / synthesis step) after ``warmup`` untimed calls.

    Every timed call is bracketed by synchronisation: CUDA events on the current stream on CUDA
    (the device is synchronised before the start event and after the end event), a
    ``perf_counter`` pair on CPU. (``torch.utils.benchmark.Timer`` is not used: every measurement
    of it runs extra warm-up calls, which would triple the cost of a training step.) On CPU the process's CPU time of each call is recorded as well
    (``cpu_times_ms``); ``timer='process'`` makes it the one the summary uses, which is steadier
    than wall time on a shared machine when torch runs one thread.

    Returns:
        dict: ``times_ms`` (each timed call, of the chosen timer), ``ms_mean``, ``ms_median``,
        ``ms_min``, ``timer``, ``peak_memory_bytes`` (peak tensor memory during the timed calls,
        CUDA only, else None) and ``memory_before_bytes`` (tensor memory held before the first
        call, CUDA only).
    """
    if timer not in ('wall', 'process'):
        raise ValueError(f"timer must be 'wall' or 'process', got {timer!r}")
    device = torch.device(device)
    if iters < 1:
        raise ValueError(f'iters must be at least 1, got {iters}')
    reset_peak_memory(device)
    before = allocated_memory(device)
    for _ in range(max(int(warmup), 0)):
        step()
    synchronize(device)
    reset_peak_memory(device)
    times, cpu_times = [], []
    for _ in range(int(iters)):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
            cpu_times.append((time.process_time() - c0) * 1e3)
    synchronize(device)
    result = dict(timer='wall', wall_times_ms=list(times))
    if device.type != 'cuda':
        result['cpu_times_ms'] = cpu_times
        if timer == 'process':
            times, result['timer'] = cpu_times, 'process'
    result.update(times_ms=times, ms_mean=statistics.fmean(times), ms_median=statistics.median(times),
                  ms_min=min(times), peak_memory_bytes=peak_memory(device), memory_before_bytes=before)
    return result


def time_interleaved(steps, device, warmup=3, iters=10, timer='wall'):
    """Time several callables in alternation (one call of each per round), so that a shared
    machine's changing load affects them alike; for A/B comparisons.

    Args:
        steps (dict[str, callable]): what to time.

    Returns:
        dict[str, dict]: per name, as :func:`time_step` (without memory readings).
    """
    device = torch.device(device)
    for _ in range(max(int(warmup), 0)):
        for step in steps.values():
            step()
    synchronize(device)
    times = {name: [] for name in steps}
    for _ in range(int(iters)):
        for name, step in steps.items():
            synchronize(device)
            if device.type == 'cuda':
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                times[name].append(float(start.elapsed_time(end)))
            else:
                clock = time.process_time if timer == 'process' else time.perf_counter
                t0 = clock()
                step()
                times[name].append((clock() - t0) * 1e3)
    used = 'cuda-events' if device.type == 'cuda' else timer
    return {name: dict(timer=used, times_ms=t, ms_mean=statistics.fmean(t), ms_median=statistics.median(t),
                       ms_min=min(t)) for name, t in times.items()}


def environment(device, argv=None):
    """What a result depends on: device name, library versions (mmengine's ``collect_env``),
    threads, command line."""
    from mmengine.utils.dl_utils import collect_env
    device = torch.device(device)
    env = dict(python=sys.version.split()[0], platform=platform.platform(), torch=torch.__version__,
               cuda=torch.version.cuda, device_type=device.type, cpu_threads=torch.get_num_threads(),
               processor=platform.processor() or platform.machine())
    versions = collect_env()
    env.update(mmengine=versions.get('MMEngine'), gcc=versions.get('GCC'))
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, device_memory_bytes=int(props.total_memory),
                   cudnn=torch.backends.cudnn.version(),
                   tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    else:
        env['device_name'] = _cpu_name() or env['processor']
        # what the CPU kernels use: torch's vector level, and whether int8 dot products can saturate
        env['cpu_capability'] = torch.backends.cpu.get_cpu_capability()
        env['cpu_int8_dot'] = _cpu_int8_dot()
    for name in ('timm', 'mmpretrain'):
        try:
            env[name] = __import__(name).__version__
        except ImportError:  # not installed: not part of this result
            env[name] = None
    if argv is not None:
        env['command'] = ' '.join(argv)
    return env


def cpu_features():
    """The CPU's model name, architecture and the instruction sets that int8 and bf16 kernels
    depend on: ``avx2``, ``avx512`` (F), ``vnni`` (int8 dot products summed in 32 bits: AVX512-
    or AVX-VNNI, or AMX), ``amx`` (AMX int8/bf16 tiles), ``bf16`` (AVX512-BF16 or AMX-BF16), from
    /proc/cpuinfo; each None where it cannot be read (no /proc/cpuinfo, or no ``flags`` line, as on ARM)."""
    flags = _cpuinfo('flags')
    names = set(flags.split()) if flags is not None else None

    def has(*wanted):
        return None if names is None else bool(names & set(wanted))
    return dict(model=_cpu_name(), arch=platform.machine(), avx2=has('avx2'), avx512=has('avx512f'),
                vnni=has('avx512_vnni', 'avx_vnni', 'amx_int8'), amx=has('amx_int8', 'amx_bf16', 'amx_tile'),
                bf16=has('avx512_bf16', 'amx_bf16'))


def _cpu_int8_dot():
    """'vnni' (int8 dot products in 32 bits), 'no vnni' (x86: 16-bit pair sums that can saturate) or None."""
    vnni = cpu_features()['vnni']
    return None if vnni is None else 'vnni' if vnni else 'no vnni'


def _cpu_name():
    return _cpuinfo('model name')


def _cpuinfo(field):
    """The value of the first ``field`` line of /proc/cpuinfo (None where there is none)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith(field):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None
