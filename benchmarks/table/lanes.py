"""Running a benchmark's units in parallel lanes: ``--jobs N``.

The driver process trains the teachers with every core, then starts N lane processes of the
same command line (``--lane k/N``), each with its share of the CPU cores (threads and
affinity) or one GPU, which take the remaining units in plan order. A unit is taken by
creating its claim file (``O_EXCL``: exactly one lane gets it); a unit whose dependencies are
being made by another lane waits for them. On two cores, two one-thread lanes finish the
CIFAR-10 table's fine-tuning and evaluation units faster than one two-thread process: the small
matrices of these models scale poorly over threads (benchmarks/results/README.md).

Lanes are independent unit runners, not distributed training: a single model that outgrows
one GPU trains with mmengine's launcher (``tools/dist_train.sh``).
"""
import contextlib
import fcntl
import glob
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

from ..paths import REPO_ROOT

# flags the lanes must not inherit: the driver restores, packs, copies and reports once
_DRIVER_ONLY = ('--jobs', '--stages', '--stage', '--time-budget', '--reserve', '--restore', '--pack',
                '--pack-synthetic', '--out', '--dry-run', '--lane')


@contextlib.contextmanager
def file_lock(path):
    """An exclusive ``flock`` on ``path`` (created if missing) for read-modify-write of a file
    that several lanes update."""
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    with open(path, 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parse_lane(text):
    """'k/N' -> (k, N) with 0 <= k < N."""
    match = re.fullmatch(r'(\d+)/(\d+)', text or '')
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--lane takes 'k/N' with 0 <= k < N, got {text!r}")
    return int(match[1]), int(match[2])


class UnitClaims:
    """Which lane runs which unit: one claim file per unit under ``<work dir>/claims``.

    Only the driver that started the lanes clears the folder (before and after them), so two
    invocations must not share a work dir at the same time.
    """

    def __init__(self, root, owner):
        self.folder = osp.join(root, 'claims')
        self.owner = str(owner)
        os.makedirs(self.folder, exist_ok=True)

    def path(self, unit):
        return osp.join(self.folder, unit.name.replace(' ', '__').replace('/', '__') + '.claim')

    def _read(self, unit):
        try:
            with open(self.path(unit)) as f:
                return f.read().strip()
        except OSError:
            return None

    def running_elsewhere(self, unit) -> bool:
        """Another lane holds ``unit`` and has not ended it."""
        text = self._read(unit)
        return text is not None and text != self.owner and not text.startswith('ended ')

    def ended(self, unit) -> bool:
        """A lane of this invocation ran ``unit`` without making it (failed, skipped, stopped at
        the time budget): no lane takes it again."""
        text = self._read(unit)
        return text is not None and text.startswith('ended ')

    def claim(self, unit) -> bool:
        """True if this lane holds ``unit`` now (it just took it, or already held it)."""
        try:
            fd = os.open(self.path(unit), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self._read(unit) == self.owner
        with os.fdopen(fd, 'w') as f:
            f.write(self.owner)
        return True

    def finish(self, unit, outcome):
        """Give ``unit`` up: made ('ran'), or ended with ``outcome`` for the rest of the run."""
        if self._read(unit) != self.owner:
            return
        if outcome == 'ran':
            os.remove(self.path(unit))
        else:
            with open(self.path(unit), 'w') as f:
                f.write(f'ended {outcome} by {self.owner}')

    def clear(self):
        for path in glob.glob(osp.join(self.folder, '*.claim')):
            os.remove(path)


def lane_argv(argv, lane, jobs, stages, seconds_left=None):
    """The driver's command-line arguments for lane ``lane`` of ``jobs``: without the flags only
    the driver acts on, with the lane's stages and what is left of the time budget."""
    out, skipping = [], False
    for arg in argv:
        flag = arg.split('=', 1)[0]
        if arg.startswith('--'):
            skipping = flag in _DRIVER_ONLY
            if skipping:
                continue
        elif skipping:
            continue
        out.append(arg)
    out += ['--stages', *stages, '--lane', f'{lane}/{jobs}']
    if seconds_left is not None:
        out += ['--time-budget', f'{max(1.0, seconds_left):.0f}', '--reserve', '0']
    return out


def lane_resources(jobs):
    """Per lane: (environment additions, CPU cores to pin to or None)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else list(range(os.cpu_count() or 1))
    per_lane = max(1, len(cores) // jobs)
    gpus = _gpu_count()
    out = []
    for k in range(jobs):
        env = {'OMP_NUM_THREADS': str(per_lane), 'MKL_NUM_THREADS': str(per_lane)}
        if gpus:
            env['CUDA_VISIBLE_DEVICES'] = str(k % gpus)
        share = cores[k * per_lane:(k + 1) * per_lane] if len(cores) >= jobs else None
        out.append((env, share))
    return out


def _gpu_count():
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_lanes(tool, argv, work_root, jobs, stages, seconds_left=None, log=print, poll=2.0):
    """Start ``jobs`` lanes of ``tool`` (a module of the repository, e.g. ``benchmarks.cifar10_table``,
    run from the repository root) and wait for them, printing their driver-log lines; ``log``
    says how each lane was started.

    Returns:
        list[int]: the lanes' exit codes.
    """
    log_dir = osp.join(work_root, 'logs')
    os.makedirs(log_dir, exist_ok=True)
    driver_log = osp.join(log_dir, 'driver.log')
    offset = osp.getsize(driver_log) if osp.isfile(driver_log) else 0
    procs = []
    for k, (env, cores) in enumerate(lane_resources(jobs)):
        cmd = [sys.executable, '-m', tool] + lane_argv(argv, k, jobs, stages, seconds_left)
        out = open(osp.join(log_dir, f'lane{k}.log'), 'a')
        pin = (lambda c=cores: os.sched_setaffinity(0, c)) if cores and hasattr(os, 'sched_setaffinity') else None
        log(f'lane {k}/{jobs}: {env["OMP_NUM_THREADS"]} thread(s)'
             + (f' on core(s) {",".join(map(str, cores))}' if cores else '')
             + (f', GPU {env["CUDA_VISIBLE_DEVICES"]}' if 'CUDA_VISIBLE_DEVICES' in env else '')
             + f'; its output in {out.name}')
        procs.append((subprocess.Popen(cmd, cwd=REPO_ROOT, env=dict(os.environ, **env), stdout=out,
                                       stderr=subprocess.STDOUT, preexec_fn=pin), out))
    try:
        while any(p.poll() is None for p, _ in procs):
            offset = _echo_new_lines(driver_log, offset)
            time.sleep(poll)
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the lanes too (one process group); a SIGINT sent to the
        # driver alone is passed on. Lanes stop their units resumably on it.
        deadline = time.time() + 2.0
        while time.time() < deadline and any(p.poll() is None for p, _ in procs):
            time.sleep(0.1)
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p, _ in procs:
            p.wait()
        raise
    finally:
        _echo_new_lines(driver_log, offset)
        for _, out in procs:
            out.close()
    return [p.returncode for p, _ in procs]


def _echo_new_lines(path, offset):
    if not osp.isfile(path):
        return offset
    with open(path) as f:
        f.seek(offset)
        text = f.read()
        offset = f.tell()
    for line in text.splitlines():
        if '[bench lane' in line:
            print(line, flush=True)
    return offset
