"""The C++ kernel of L_IHC's global path on CPU (mimiq_mm/losses/ihc_cpu.py): the same value and
gradient as the PyTorch path on every layout, chosen by kernel='auto', and a clear error or a
fallback when it cannot be built; one build per machine, a stale lock that does not hang."""
import fcntl
import logging
import os
import os.path as osp
import platform
import shutil
import subprocess
import sys
import time

import pytest
import torch

from mimiq_mm.losses import InterHeadCoherencyLoss
from mimiq_mm.losses import ihc_cpu

from attention_records import random_scores, scores_record

CASES = {
    'deit_class_token': dict(batch=4, heads=6, grid=(8, 8), prefix=1, window=False),
    'distilled_two_prefix_non_square': dict(batch=3, heads=3, grid=(3, 5), prefix=2, window=False),
    'swin_window_no_prefix': dict(batch=6, heads=4, grid=(7, 7), prefix=0, window=True),
    'one_head': dict(batch=2, heads=1, grid=(4, 4), prefix=1, window=False),
}


def value_and_grads(loss, scores_list, case):
    scores_list = [s.clone().requires_grad_(True) for s in scores_list]
    records = [scores_record(s, case['grid'], case['prefix'], window=case['window']) for s in scores_list]
    value = loss(records)
    return value.detach(), torch.autograd.grad(value, scores_list)


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('similarity', ['abs', 'squared'])
def test_kernel_equals_the_pytorch_path(case, similarity):
    c = CASES[case]
    scores = [random_scores(c['batch'], c['heads'], c['grid'], c['prefix'], seed=s) * 3 for s in range(2)]
    value, grads = value_and_grads(InterHeadCoherencyLoss(similarity=similarity, kernel='cpp', loss_weight=2.5),
                                   scores, c)
    ref_value, ref_grads = value_and_grads(InterHeadCoherencyLoss(similarity=similarity, kernel='torch',
                                                                  loss_weight=2.5), scores, c)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    if c['heads'] == 1:  # a single head is coherent with itself: zero loss, rounding-level gradients
        assert abs(value.item()) < 1e-5 and all(g.abs().max() < 1e-6 for g in grads)
        return
    for g, r in zip(grads, ref_grads):
        assert r.abs().max() > 0
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5 * r.abs().max().item())
        assert (g - r).norm() <= 1e-4 * r.norm()


def test_kernel_values_without_gradient_and_prefix_gradient_is_zero():
    c = CASES['deit_class_token']
    scores = random_scores(c['batch'], c['heads'], c['grid'], c['prefix'], seed=3).requires_grad_(True)
    record = scores_record(scores, c['grid'], c['prefix'])
    with torch.no_grad():
        no_grad = InterHeadCoherencyLoss(kernel='cpp')([record])
    value = InterHeadCoherencyLoss(kernel='cpp')([record])
    assert value.item() == pytest.approx(no_grad.item(), abs=1e-7)
    grad, = torch.autograd.grad(value, scores)
    p = c['prefix']
    assert grad[:, :, :p].abs().max() == 0 and grad[:, :, :, :p].abs().max() == 0
    assert grad[:, :, p:, p:].abs().max() > 0


def test_a_second_backward_through_the_kernel_is_refused():
    """The kernel's gradient is scaled in place in the backward, so a retained graph cannot reuse it."""
    c = CASES['deit_class_token']
    scores = random_scores(c['batch'], c['heads'], c['grid'], c['prefix']).requires_grad_(True)
    value = InterHeadCoherencyLoss(kernel='cpp')([scores_record(scores, c['grid'], c['prefix'])])
    first, = torch.autograd.grad(value, scores, retain_graph=True)
    assert first.abs().max() > 0
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        torch.autograd.grad(value, scores)


def test_the_four_lane_build_equals_the_pytorch_path(monkeypatch):
    """CPUs without AVX2 and ARM CPUs get the build with 4-float vectors; built here on purpose."""
    flags = ['-O3'] + (['-mno-avx'] if platform.machine().lower() in ('x86_64', 'amd64') else [])
    monkeypatch.setattr(ihc_cpu, 'build_variant', lambda: ('mimiq_ihc_cpu_test_4_lanes', flags))
    monkeypatch.setattr(ihc_cpu, '_state', {})
    for case in ('deit_class_token', 'swin_window_no_prefix'):
        c = CASES[case]
        scores = [random_scores(c['batch'], c['heads'], c['grid'], c['prefix'], seed=s) * 3 for s in range(2)]
        value, grads = value_and_grads(InterHeadCoherencyLoss(kernel='cpp'), scores, c)
        ref_value, ref_grads = value_and_grads(InterHeadCoherencyLoss(kernel='torch'), scores, c)
        torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
        for g, r in zip(grads, ref_grads):
            assert (g - r).norm() <= 1e-4 * r.norm()
    assert ihc_cpu.kernel_state() == 'built (mimiq_ihc_cpu_test_4_lanes, 4 lanes)'


def test_the_build_fits_the_cpu():
    name, flags = ihc_cpu.build_variant()
    if torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512') and platform.machine().lower() in ('x86_64',
                                                                                                           'amd64'):
        assert '-mavx2' in flags and '-mfma' in flags and name.endswith('avx2')
    else:
        assert not any(f.startswith('-mavx') for f in flags)


def test_auto_uses_the_kernel_on_float32_cpu_only(monkeypatch):
    calls = []
    apply = ihc_cpu.IHCLayerCPU.apply
    monkeypatch.setattr(ihc_cpu.IHCLayerCPU, 'apply', lambda *a: calls.append(1) or apply(*a))
    c = CASES['deit_class_token']
    scores = random_scores(c['batch'], c['heads'], c['grid'], c['prefix'])
    loss = InterHeadCoherencyLoss()
    loss([scores_record(scores, c['grid'], c['prefix'])])
    assert len(calls) == 1
    loss([scores_record(scores.double(), c['grid'], c['prefix'])])      # PyTorch path: float64
    loss([scores_record(scores.bfloat16(), c['grid'], c['prefix'])])    # PyTorch path: half precision
    InterHeadCoherencyLoss(kernel='torch')([scores_record(scores, c['grid'], c['prefix'])])
    assert len(calls) == 1


def test_a_failed_build_falls_back_or_names_the_fix(monkeypatch):
    monkeypatch.setattr(ihc_cpu, '_state', {'error': 'RuntimeError: g++ not found'})
    c = CASES['deit_class_token']
    record = scores_record(random_scores(c['batch'], c['heads'], c['grid'], c['prefix']), c['grid'], c['prefix'])
    expected = InterHeadCoherencyLoss(kernel='torch')([record])
    assert InterHeadCoherencyLoss(kernel='auto')([record]).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(RuntimeError, match="g\\+\\+ not found.*install a C\\+\\+ compiler"):
        InterHeadCoherencyLoss(kernel='cpp')([record])
    with pytest.raises(ValueError, match="kernel must be"):
        InterHeadCoherencyLoss(kernel='cuda')


# ----------------------------------------------------------------------------- building it: compiler, locks
FAKE_GCC = r'''#!/bin/sh
# a g++ of version $FAKE_GCC_VERSION whose compilations fail after $FAKE_GCC_SECONDS s, logged to $FAKE_GCC_LOG
case "$*" in
  *--version*) printf 'g++ (GCC) %s\nCopyright (C) 2022 Free Software Foundation, Inc.\n' "$FAKE_GCC_VERSION" ;;
  *-dumpversion*) echo "$FAKE_GCC_VERSION" ;;
  *) echo "$*" >> "$FAKE_GCC_LOG"; sleep "${FAKE_GCC_SECONDS:-0}"
     echo "ihc_cpu.cpp:47:12: error: '__builtin_shufflevector' was not declared in this scope" >&2; exit 1 ;;
esac
'''
COUNTING_GCC = '#!/bin/sh\necho "$*" >> "$FAKE_GCC_LOG"\nexec {compiler} "$@"\n'  # a real one, counted

# Runs load_kernel in a fresh process, at the same moment as the others when GO_FILE is set.
# SIMULATE_FILE_BATON: torch's extension loader locks as torch versions before its OS lock did
# (FileBaton: it waits while the lock file exists).
LOAD_KERNEL = '''
import os, time
import torch.utils.cpp_extension as ext
from torch.utils.file_baton import FileBaton
from mimiq_mm.losses import ihc_cpu

class BatonLock:
    def __init__(self, path):
        self.baton = FileBaton(path)
    def __enter__(self):
        while not self.baton.try_acquire():
            self.baton.wait()
    def __exit__(self, *exc):
        self.baton.release()

if os.environ.get('SIMULATE_FILE_BATON') and hasattr(ext, 'FileLock'):
    ext.FileLock = BatonLock
go = os.environ.get('GO_FILE')
if go:
    open(f'{go}.ready{os.getpid()}', 'w').close()
    while not os.path.exists(go):
        time.sleep(0.01)
ihc_cpu.load_kernel()
print('kernel state:', ihc_cpu.kernel_state())
'''


def compiler_env(tmp_path, script=FAKE_GCC, version='12.2.0', seconds=0):
    """Environment of a build with the compiler ``script`` (named g++, as torch expects on Linux)
    in a fresh extension cache; its compilations are logged to tmp_path/compilations."""
    path = tmp_path / 'bin' / 'g++'
    path.parent.mkdir(exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    return dict(CXX=str(path), FAKE_GCC_VERSION=version, FAKE_GCC_SECONDS=str(seconds),
                FAKE_GCC_LOG=str(tmp_path / 'compilations'), TORCH_EXTENSIONS_DIR=str(tmp_path / 'extensions'))


def compilations(tmp_path):
    log = tmp_path / 'compilations'
    return [line for line in log.read_text().splitlines() if ' -c ' in f' {line} '] if log.exists() else []


def torch_build_directory(name):
    from torch.utils.cpp_extension import _get_build_directory
    return _get_build_directory(name, verbose=False)


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A process that has not tried the kernel yet, a fresh extension cache and the log lines of
    mmengine's current logger (collected)."""
    from mmengine.logging import MMLogger
    monkeypatch.setattr(ihc_cpu, '_state', {})
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'extensions'))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield lambda: [r.getMessage() for r in records]
    logger.removeHandler(handler)


def run_load_kernel(env, go_file=None, simulate_file_baton=False):
    env = dict(os.environ, **env, **(dict(GO_FILE=str(go_file)) if go_file else {}),
               **(dict(SIMULATE_FILE_BATON='1') if simulate_file_baton else {}))
    return subprocess.Popen([sys.executable, '-c', LOAD_KERNEL], env=env, cwd=osp.dirname(osp.dirname(__file__)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def outputs_at_once(env, tmp_path, processes=2, timeout=300):
    """The outputs of ``processes`` processes calling load_kernel at the same moment."""
    go = tmp_path / 'go'
    started = [run_load_kernel(env, go_file=go) for _ in range(processes)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob('go.ready*'))) < processes:
        assert time.monotonic() < deadline and all(p.poll() is None for p in started), 'a process did not start'
        time.sleep(0.05)
    go.touch()
    try:
        return [p.communicate(timeout=timeout)[0] for p in started]
    finally:
        for p in started:
            p.kill()


@pytest.mark.parametrize('found,problem', [
    (('g++-11', 'gcc', (11, 4, 0)), "'g++-11' is GCC 11.4.0; the kernel needs GCC >= 12"),
    (('c++', 'missing', None), "no C++ compiler: 'c++'"),
    (('c++', 'gcc', (12, 2, 0)), None),
    (('clang++', 'clang', (14, 0, 6)), None),
])
def test_the_compiler_is_checked_before_building(monkeypatch, found, problem):
    monkeypatch.setattr(ihc_cpu, 'find_compiler', lambda: ihc_cpu.Compiler(*found))
    assert ihc_cpu.compiler_problem() is None if problem is None else problem in ihc_cpu.compiler_problem()


def test_a_compiler_too_old_is_named_in_one_log_line_and_the_pytorch_path_runs(monkeypatch, tmp_path, fresh_build):
    """GCC 11 cannot compile the kernel's vector code: the version is checked before any build,
    and one warning says which compiler was found and what is needed."""
    for key, value in compiler_env(tmp_path, version='11.4.0').items():
        monkeypatch.setenv(key, value)
    c = CASES['deit_class_token']
    record = scores_record(random_scores(c['batch'], c['heads'], c['grid'], c['prefix']), c['grid'], c['prefix'])
    expected = InterHeadCoherencyLoss(kernel='torch')([record])
    assert InterHeadCoherencyLoss(kernel='auto')([record]).item() == pytest.approx(expected.item(), abs=1e-6)
    assert compilations(tmp_path) == [] and ihc_cpu.kernel_state() == 'unavailable'
    why = [line for line in fresh_build() if 'cannot be used' in line]
    assert len(why) == 1 and '\n' not in why[0]
    assert 'is GCC 11.4.0; the kernel needs GCC >= 12' in why[0] and 'using the PyTorch path' in why[0]
    assert ihc_cpu.find_compiler() == ihc_cpu.Compiler(os.environ['CXX'], 'gcc', (11, 4, 0))


def test_a_build_that_lasts_too_long_is_not_waited_for(monkeypatch, tmp_path, fresh_build):
    """Another process holding the build lock (building, or hung) is waited for at most
    BUILD_WAIT_SECONDS; then the PyTorch path runs, and no second build starts."""
    for key, value in compiler_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ihc_cpu, 'BUILD_WAIT_SECONDS', 1.0)
    lock = torch_build_directory(ihc_cpu.build_variant()[0]) + '.lock'
    with open(lock, 'w') as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write('{"pid": 4242}')
        holder.flush()
        assert ihc_cpu.load_kernel() is None
    assert compilations(tmp_path) == [] and ihc_cpu.kernel_state() == 'unavailable'
    log = fresh_build()
    assert any(line.startswith('waiting for process 4242') for line in log)
    assert [line for line in log if 'cannot be used' in line] == [
        'the C++ kernel of L_IHC cannot be used: process 4242 has been building it for more than 1 s (it holds '
        f"{lock}); not waiting longer; using the PyTorch path (ihc=dict(kernel='torch') skips the attempt)"]


@pytest.mark.slow
@pytest.mark.parametrize('torch_lock', ['file_baton', 'installed'])
def test_a_stale_torch_lock_is_reported_and_does_not_hang(tmp_path, torch_lock):
    """A process killed during its first build leaves torch's ``lock`` in the build directory;
    torch versions that lock by the file's existence then wait for it forever. The next process
    says so in one line, removes it and builds (here: a compiler that fails at once -> the
    PyTorch path)."""
    env = compiler_env(tmp_path)
    stale = tmp_path / 'extensions' / ihc_cpu.build_variant()[0] / 'lock'
    stale.parent.mkdir(parents=True)
    stale.touch()
    process = run_load_kernel(env, simulate_file_baton=torch_lock == 'file_baton')
    try:
        output = process.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f'load_kernel waited for the stale lock {stale}: {process.communicate()[0][-2000:]}')
    assert process.returncode == 0, output[-2000:]
    assert output.count(f'removed the stale lock file {stale}:') == 1, output[-2000:]
    assert len(compilations(tmp_path)) == 1 and 'kernel state: unavailable' in output
    assert not stale.exists()


@pytest.mark.slow
def test_processes_that_start_together_try_one_build(tmp_path):
    """Two ranks at once: one builds, the other waits for it and takes its outcome (here a
    failed build: one attempt, not one per process; both run the PyTorch path)."""
    outputs = outputs_at_once(compiler_env(tmp_path, seconds=3), tmp_path)
    assert len(compilations(tmp_path)) == 1, outputs
    assert all('kernel state: unavailable' in out for out in outputs), outputs
    waited = [out for out in outputs if 'waiting for process' in out]
    assert len(waited) == 1 and 'which this one waited for' in waited[0]
    assert all("error: '__builtin_shufflevector' was not declared" in out for out in outputs)


@pytest.mark.slow
def test_processes_that_start_together_share_one_real_build(tmp_path):
    """The real build (about 30 s): compiled once, loaded by both processes."""
    compiler = shutil.which(os.environ.get('CXX', 'c++'))
    if compiler is None or ihc_cpu.compiler_problem():
        pytest.skip(f'no compiler that builds the kernel here: {ihc_cpu.compiler_problem()}')
    outputs = outputs_at_once(compiler_env(tmp_path, script=COUNTING_GCC.format(compiler=compiler)), tmp_path)
    assert len(compilations(tmp_path)) == 1, outputs
    assert all(f'kernel state: built ({ihc_cpu.build_variant()[0]}' in out for out in outputs), outputs


def test_loading_the_kernel_prints_no_cuda_warning_on_a_cpu_machine():
    """A CUDA build of torch warns at the import of its extension loader that no CUDA runtime is
    found; the kernel is CPU code, so the console (e.g. of make demo) stays clean."""
    code = ('import logging; logging.basicConfig(level=logging.WARNING)\n'
            'from mimiq_mm.losses.ihc_cpu import build_directory, build_variant\n'
            'build_directory(build_variant()[0])\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'No CUDA runtime' not in proc.stderr + proc.stdout
