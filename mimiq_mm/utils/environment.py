"""What a measured result depends on: the machine (CPU model and instruction sets, device), the
library versions, the threads and the command line."""
import platform
import sys

import torch


def environment(device, argv=None):
    """Device name, library versions (mmengine's ``collect_env``), threads, command line."""
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
