"""An accelerator of L_IHC's global-SSIM path (:func:`.ihc.head_coherency`, the definition): one C++
kernel on CPU (``csrc/ihc_cpu.cpp``).

On a small model the eager PyTorch path spends most of its time in many passes over the
(B', Q, H, K) maps and small ops on the (B', Q, H, H) statistics; the kernel takes one
(sequence, query) block at a time in cache and writes the value and the gradient in one pass
(benchmarks/results/README.md, "IHC kernel"). Same arithmetic, fp32, tested against the PyTorch
path. It is compiled on first use by torch's extension loader (about 30 s, cached in
``~/.cache/torch_extensions`` or ``$TORCH_EXTENSIONS_DIR``) with GCC >= 12 or clang; the compiler
is checked first. One process per machine builds it (DDP ranks, parallel runs): the others wait
for it, at most :data:`BUILD_WAIT_SECONDS`, and load its result. Where it cannot be built the
PyTorch path runs, with one log line saying why.
"""
import contextlib
import hashlib
import json
import logging
import os
import os.path as osp
import platform
import re
import shlex
import subprocess
import time
from typing import NamedTuple, Optional

import torch
from mmengine.logging import print_log

try:
    import fcntl
except ImportError:  # Windows: no GCC vector extensions there either (the compiler check says so)
    fcntl = None

_SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'ihc_cpu.cpp')
#: the source's vector code (__builtin_shufflevector on GCC vector types) needs GCC 12 (or clang)
MINIMUM_GCC = 12
#: how long a process waits for another one building the kernel before it runs the PyTorch path
#: (a build takes about 30 s; the lock of a builder that died is released by the OS at once)
BUILD_WAIT_SECONDS = 600.0
_state = {}  # 'module' once built, 'error' once a build failed, 'variant' once tried


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built here; the message says why in one line."""


def build_variant():
    """(extension name, compiler flags): 8-float AVX2 + FMA vectors on x86 CPUs that have them
    (every x86 CPU since about 2015), 4-float SSE / NEON vectors elsewhere (the source picks the
    width from the target; a width wider than the target's is emulated and 10x slower)."""
    if platform.machine().lower() in ('x86_64', 'amd64') and \
            torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512'):
        return 'mimiq_ihc_cpu_avx2', ['-O3', '-mavx2', '-mfma']
    return 'mimiq_ihc_cpu', ['-O3']


# ----------------------------------------------------------------------------- the compiler
class Compiler(NamedTuple):
    command: str                # what torch's extension loader runs: $CXX, else c++
    family: str                 # 'gcc', 'clang', 'other', or 'missing' (it cannot be run)
    version: Optional[tuple]    # (major, minor, ...) where it could be read


def _output(command: str, *args: str) -> str:
    return subprocess.run(shlex.split(command) + list(args), capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, LC_ALL='C')).stdout  # LC_ALL: untranslated banners


def find_compiler() -> Compiler:
    """The C++ compiler torch's extension loader would build the kernel with, and its version."""
    command = os.environ.get('CXX', 'c++')  # torch.utils.cpp_extension.get_cxx_compiler on Linux / macOS
    try:
        banner = _output(command, '--version')
        if 'clang' in banner.lower():
            family, version = 'clang', re.search(r'version\s+(\d+(?:\.\d+)*)', banner)
        elif 'Free Software Foundation' in banner or re.search(r'\b(gcc|g\+\+)(?!\w)', banner, re.IGNORECASE):
            # '12.2.0' ('12' from some builds); the banner's "NAME (PACKAGE) VERSION" otherwise
            family = 'gcc'
            version = re.match(r'\s*(\d+(?:\.\d+)*)', _output(command, '-dumpfullversion', '-dumpversion')) or \
                re.search(r'\)\s+(\d+(?:\.\d+)*)', banner)
        else:
            family, version = 'other', None
    except (OSError, ValueError, subprocess.SubprocessError):
        return Compiler(command, 'missing', None)
    return Compiler(command, family, tuple(int(v) for v in version.group(1).split('.')) if version else None)


def compiler_problem() -> Optional[str]:
    """Why this machine's compiler cannot build the kernel (one line), or None where it may."""
    compiler = find_compiler()
    if compiler.family == 'missing':
        return (f'no C++ compiler: {compiler.command!r} ($CXX, else c++) cannot be run; install g++ >= '
                f'{MINIMUM_GCC} (or clang)')
    if compiler.family == 'gcc' and compiler.version and compiler.version[0] < MINIMUM_GCC:
        return (f"the C++ compiler {compiler.command!r} is GCC {'.'.join(map(str, compiler.version))}; the kernel "
                f'needs GCC >= {MINIMUM_GCC} (or clang) for its vector code: install g++-{MINIMUM_GCC} or newer '
                'and set CXX to it')
    return None  # other compilers: the build says whether they can


# ----------------------------------------------------------------------------- one build per machine
def cpp_extension():
    """``torch.utils.cpp_extension``, imported without the warning a CUDA build of torch prints on
    a machine without a GPU (it looks for CUDA at import; the kernel is CPU code)."""
    logger = logging.getLogger('torch.utils.cpp_extension')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as module
    finally:
        logger.setLevel(level)
    return module


def build_directory(name: str) -> str:
    """Where torch's extension loader builds ``name`` (created if missing)."""
    return cpp_extension()._get_build_directory(name, verbose=False)


def _read_record(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or '{}')
    except ValueError:  # being rewritten by its holder
        return {}


def _write_record(handle, **record) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()


@contextlib.contextmanager
def build_lock(build_dir: str):
    """Hold the machine's lock on building in ``build_dir``: an flock on ``<build_dir>.lock`` (the
    OS releases it when its holder dies, so a killed build never blocks the next), waited for at
    most :data:`BUILD_WAIT_SECONDS`. Yields (the lock file, whether another process held it first);
    the file holds the holder's pid and its build's outcome as JSON."""
    path = build_dir + '.lock'
    with open(path, 'a+') as handle:  # 'a+': created if missing, readable, never truncated on open
        deadline, holder = time.monotonic() + BUILD_WAIT_SECONDS, None
        while fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            if holder is None:
                holder = _read_record(handle).get('pid', '?')
                print_log(f'waiting for process {holder}, which builds the C++ kernel of L_IHC (lock {path}; at '
                          f'most {BUILD_WAIT_SECONDS:.0f} s)', logger='current')
            if time.monotonic() > deadline:
                raise KernelUnavailable(f'process {holder} has been building it for more than '
                                        f'{BUILD_WAIT_SECONDS:.0f} s (it holds {path}); not waiting longer')
            time.sleep(0.2)
        yield handle, holder is not None  # closing the file releases the lock


def remove_stale_torch_lock(build_dir: str) -> None:
    """torch's own ``lock`` file found while we hold the build lock was left by a process that is
    gone (a live builder would hold our lock): torch versions that lock by the file's existence
    (FileBaton) would wait for it forever. Reported and removed."""
    path = osp.join(build_dir, 'lock')
    if not osp.exists(path):
        return
    if fcntl is not None:
        with open(path, 'a') as probe:
            try:  # torch versions that lock with flock: a live builder outside mimiq_mm holds it
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # torch waits for that build, which ends
    try:
        os.remove(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise KernelUnavailable(f'a stale lock file of torch\'s extension builder, {path}, cannot be removed '
                                f'({err.strerror}); delete it') from err
    print_log(f'removed the stale lock file {path}: no process is building the kernel (a build that was killed '
              "leaves it, and torch's extension loader can wait for it forever)", logger='current',
              level=logging.WARNING)


def _build(name: str, flags: list):
    """The extension, built (or loaded from the cache) by one process at a time on this machine;
    a process that waited for another's failed build of the same source takes its error."""
    load = cpp_extension().load
    build_dir = build_directory(name)
    with open(_SOURCE, 'rb') as f:
        key = f'{name} {" ".join(flags)} {hashlib.sha256(f.read()).hexdigest()[:16]}'
    with build_lock(build_dir) as (lock, waited):
        previous = _read_record(lock) if waited else {}
        if previous.get('key') == key and previous.get('outcome') == 'failed':
            raise KernelUnavailable(f"{previous['error']} (the build of process {previous.get('pid')}, "
                                    'which this one waited for)')
        remove_stale_torch_lock(build_dir)
        _write_record(lock, pid=os.getpid(), key=key, outcome='building')
        print_log(f'loading the C++ kernel of L_IHC (compiled once, about 30 s, then cached in {build_dir})',
                  logger='current')
        try:
            module = load(name=name, sources=[_SOURCE], extra_cflags=flags, build_directory=build_dir)
        except Exception as err:
            _write_record(lock, pid=os.getpid(), key=key, outcome='failed', error=_one_line(err))
            raise
        finally:  # torch versions with an flock leave their file: one found later is a killed build's
            with contextlib.suppress(OSError):
                os.remove(osp.join(build_dir, 'lock'))
        _write_record(lock, pid=os.getpid(), key=key, outcome='built')
        return module


def _one_line(err: BaseException) -> str:
    """A build error in one line: its first line and the compiler's first diagnostic."""
    if isinstance(err, KernelUnavailable):
        return str(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ['']
    head = lines[0].split(': [1/', 1)[0][:200]  # torch's "Error building extension 'x': [1/2] <command>"
    diagnostic = next((line for line in lines[1:] if re.search(r'\berror\b:', line)), None)
    return f'{type(err).__name__}: {head}' + (f' ({diagnostic[:300]})' if diagnostic else '')


def load_kernel(required=False):
    """The compiled extension, or None where it cannot be built (``required``: raise instead)."""
    if 'module' not in _state and 'error' not in _state:
        name, flags = _state['variant'] = build_variant()
        try:
            problem = compiler_problem()  # an older GCC would fail deep in a long build log
            if problem:
                raise KernelUnavailable(problem)
            _state['module'] = _build(name, flags)
        except Exception as err:  # noqa: BLE001  (no compiler, no headers: the PyTorch path works everywhere)
            _state['error'] = _one_line(err)
            if not required:
                print_log(f'the C++ kernel of L_IHC cannot be used: {_state["error"]}; using the PyTorch path '
                          "(ihc=dict(kernel='torch') skips the attempt)", logger='current', level=logging.WARNING)
    if 'module' in _state:
        return _state['module']
    if required:
        raise RuntimeError(f"ihc kernel='cpp' needs the C++ kernel, which could not be built: {_state['error']}; "
                           f"install a C++ compiler (g++ >= {MINIMUM_GCC}) or use kernel='auto' / 'torch'")
    return None


def kernel_state() -> str:
    """'built (<extension>, <W> lanes)' (loaded in this process), 'unavailable' (its build failed) or 'not used'."""
    if 'module' in _state:
        return f"built ({_state['variant'][0]}, {_state['module'].lanes()} lanes)"
    return 'unavailable' if 'error' in _state else 'not used'


def kernel_applies(scores) -> bool:
    """The kernel takes float32 CPU scores (the PyTorch path does the rest: GPU, bf16/fp16)."""
    return scores.device.type == 'cpu' and scores.dtype == torch.float32


class IHCLayerCPU(torch.autograd.Function):
    """Mean over (sequence, spatial query) of 1 - D_q for one attention call's scores.

    Args (forward):
        scores (Tensor): (B', H, N, N) float32 CPU, pre-softmax.
        prefix (int): class/distillation tokens before the spatial ones (dropped as query and key).
        c1, c2, eps (float): SSIM constants and the min-max guard.
        squared (bool): f = SSIM² (else |SSIM|).

    The gradient is computed with the value (one pass) when ``scores`` requires it.
    """

    @staticmethod
    def forward(ctx, scores, prefix, c1, c2, eps, squared):
        losses, grad = load_kernel(required=True).ihc_layer(
            scores.detach().contiguous(), int(prefix), float(c1), float(c2), float(eps), bool(squared),
            bool(ctx.needs_input_grad[0]))
        ctx.count = losses.numel()
        ctx.save_for_backward(grad if ctx.needs_input_grad[0] else None)
        return losses.mean()

    @staticmethod
    def backward(ctx, grad_output):
        grad, = ctx.saved_tensors
        # Scaled in place: one pass less over the (B', H, N, N) gradient. A second backward through
        # the same graph (retain_graph) is refused by autograd's version check of saved tensors.
        return grad.mul_(grad_output / ctx.count), None, None, None, None, None
