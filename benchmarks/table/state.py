"""What a benchmark keeps on disk: one folder per unit, a record of what each unit produced and
with which settings, and a compact pack of the work directory to move it between machines.

Layout of the work directory::

    bench.json                         invocations (command lines, devices) and wall times
    <teacher>/teacher/                 teacher.pth, stage.json, eval.json
    <teacher>/synthetic/<set>/         a synthetic set (images/, manifest.json) and stage.json: seed 0's
    <teacher>/synthetic/<set>_s<seed>/ the set of another seed (the recipe's synthetic_set_per_seed)
    <teacher>/runs/<row>_<bits>_s<seed>/   config.py, student_wXaY.pth, stage.json, eval.json
    results.md, results.json           the report
"""
import glob
import hashlib
import io
import json
import math
import os
import os.path as osp
import shutil
import tarfile
import time

RECORD = 'stage.json'
EVAL_RECORD = 'eval.json'
PACK_NAME = 'bench-state.tar.gz'
PACK_PART_BYTES = 15 * 1024 * 1024


def now_iso():
    return time.strftime('%Y-%m-%dT%H:%M:%S%z')


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, data):
    """Atomically (a reader never sees half a file)."""
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def jsonable(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def fingerprint(value) -> str:
    """A short hash of a JSON-able value: the identity of a unit's settings."""
    return hashlib.sha1(json.dumps(jsonable(value), sort_keys=True).encode()).hexdigest()[:16]


class WorkDir:
    """Paths and records of one benchmark's work directory."""

    def __init__(self, root: str):
        self.root = osp.abspath(root)

    def teacher_dir(self, teacher):
        return osp.join(self.root, teacher, 'teacher')

    def synth_dir(self, teacher, set_name, seed=0):
        """Seed 0's set in ``<set>``, another seed's in ``<set>_s<seed>``."""
        return osp.join(self.root, teacher, 'synthetic', f'{set_name}_s{seed}' if seed else set_name)

    def run_dir(self, teacher, row, bits, seed):
        return osp.join(self.root, teacher, 'runs', f'{row}_{bits}_s{seed}')

    def unit_dir(self, unit):
        if unit.kind == 'synth':
            return self.synth_dir(unit.teacher, unit.set_name, unit.seed)
        if unit.row is None:
            return self.teacher_dir(unit.teacher)
        return self.run_dir(unit.teacher, unit.row, unit.bits, unit.seed)

    def record_path(self, unit):
        return osp.join(self.unit_dir(unit), EVAL_RECORD if unit.kind == 'eval' else RECORD)

    def record(self, unit):
        return read_json(self.record_path(unit))

    def clear(self, unit):
        """Remove what a unit produced (its eval record, or its folder), so it runs afresh."""
        path = self.record_path(unit)
        if unit.kind == 'eval' or unit.kind == 'teacher':
            for p in [path] + (glob.glob(osp.join(self.unit_dir(unit), '*.pth')) if unit.kind == 'teacher' else []):
                if osp.isfile(p):
                    os.remove(p)
        elif osp.isdir(self.unit_dir(unit)):
            shutil.rmtree(self.unit_dir(unit))

    def all_records(self, pattern):
        """Records matching ``pattern`` (relative to the root), in path order."""
        return [r for r in (read_json(p) for p in sorted(glob.glob(osp.join(self.root, pattern)))) if r]


def latest_checkpoint(folder, prefix):
    """The ``<prefix>_<N>.pth`` of ``folder`` with the largest N, or None."""
    numbered = []
    for path in glob.glob(osp.join(folder, f'{prefix}_*.pth')):
        stem = osp.basename(path)[len(prefix) + 1:-4]
        if stem.isdigit():
            numbered.append((int(stem), path))
    return max(numbered)[1] if numbered else None


# ------------------------------------------------------------------------------- pack / restore
def pack(work: WorkDir, out_dir, keep_sets=None):
    """A compact tar.gz of the work dir in <= 15 MiB parts, to carry the state to a fresh machine:
    records, logs, configs and teacher.pth; synthetic images only of the sets in ``keep_sets``
    (paths relative to the root; None keeps all); never resume or student checkpoints (except
    the epoch checkpoint of an unfinished teacher). Returns (files, bytes, parts)."""
    os.makedirs(out_dir, exist_ok=True)
    buf = io.BytesIO()
    added = 0
    with tarfile.open(fileobj=buf, mode='w:gz') as tar:
        for root, dirs, files in os.walk(work.root):
            dirs.sort()
            rel = osp.relpath(root, work.root)
            parts = [] if rel == '.' else rel.split(os.sep)
            if len(parts) >= 3 and parts[1] == 'synthetic' and keep_sets is not None \
                    and osp.join(*parts[:3]) not in keep_sets:
                dirs[:] = []  # keep the record (for the report), leave the images behind
                files = [f for f in files if f == RECORD]
            for f in files:
                if f.startswith(PACK_NAME):
                    continue
                if f.endswith('.pth') and f != 'teacher.pth' and not (
                        parts[-1:] == ['teacher'] and f.startswith('epoch_')
                        and not osp.isfile(osp.join(root, 'teacher.pth'))):
                    continue
                tar.add(osp.join(root, f), arcname=osp.join(rel, f))
                added += 1
    blob = buf.getvalue()
    for old in glob.glob(osp.join(out_dir, PACK_NAME + '.part*')):
        os.remove(old)
    n_parts = max(1, math.ceil(len(blob) / PACK_PART_BYTES))
    for i in range(n_parts):
        with open(osp.join(out_dir, f'{PACK_NAME}.part{i:02d}'), 'wb') as f:
            f.write(blob[i * PACK_PART_BYTES:(i + 1) * PACK_PART_BYTES])
    for name in ('results.md', 'results.json'):
        if osp.isfile(osp.join(work.root, name)):
            shutil.copy(osp.join(work.root, name), osp.join(out_dir, name))
    return added, len(blob), n_parts


def restore(paths, root) -> int:
    """Unpack ``bench-state.tar.gz.part*`` (files, or folders holding them) into ``root``."""
    parts = []
    for p in paths:
        parts += sorted(glob.glob(osp.join(p, PACK_NAME + '.part*'))) if osp.isdir(p) else [p] if osp.isfile(p) else []
    if not parts:
        return 0
    blob = b''.join(open(p, 'rb').read() for p in sorted(parts))
    os.makedirs(root, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode='r:gz') as tar:
        members = [m for m in tar.getmembers() if not (m.name.startswith('/') or '..' in m.name.split('/'))]
        tar.extractall(root, members=members, filter='data')
    return len(members)
