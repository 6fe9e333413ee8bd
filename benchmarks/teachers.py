"""The fixed benchmark teachers: each table teacher is trained once, with a recorded command, and
every table run afterwards uses that same checkpoint, as the paper's tables use fixed timm weights.

``benchmarks/teachers.json`` (committed) registers each teacher: its file name, sha256, the
training settings it was made with (a table driver uses it for a teacher unit whose settings are
the same), its test metric, the command that trained it and the machine. A teacher trained outside
the driver (an mmdet/mmseg model trained with ``tools/train.py`` on its config, the scale's
``teacher_checkpoints``) is registered by its config the same way. The checkpoints
themselves live in a teachers folder (``--teachers-dir``, default ``$MIMIQ_TEACHERS_DIR`` or
``~/.cache/mimiq_mm/teachers``): the CIFAR-10 terms of use keep models derived from it out of this
repository. Where the file is absent the driver trains the teacher as before and reports how far
it lands from the registered one (a teacher trained outside: the scale's checkpoint path is read
and compared); ``--retrain-teachers`` does so even when the file is there.

  python -m benchmarks.teachers check                        # which registered files are here
  python -m benchmarks.teachers register --benchmark-config configs/cifar10/benchmark.py \\
      --scale cpu-2core --teacher vit --checkpoint work_dirs/.../teacher.pth \\
      --metric accuracy/top1=61.35 --trained-by "python -m benchmarks.cifar10_table ..."
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys

from .paths import REPO_ROOT
from .provenance import provenance
from .table.state import fingerprint, jsonable

REGISTRY = osp.join(REPO_ROOT, 'benchmarks', 'teachers.json')


def default_teachers_dir():
    return os.environ.get('MIMIQ_TEACHERS_DIR') or osp.join(osp.expanduser('~'), '.cache', 'mimiq_mm', 'teachers')


def load_registry(path=None) -> dict:
    """{name: entry} of the registered teachers ({} without a registry)."""
    path = path or REGISTRY
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)['teachers']


def training_settings(recipe, teacher, config) -> dict:
    """What a trained teacher depends on: as the driver records it for a teacher unit."""
    schedule = recipe.teacher_settings(teacher)
    schedule.pop('max_seconds', None)  # a guard, not part of the teacher (a cut one is marked)
    return jsonable(dict(config=config, teacher=schedule, data=recipe.data.get('train_split')))


def outside_settings(recipe, config) -> dict:
    """What a teacher trained outside the driver depends on: its config (the schedule is in it)."""
    return jsonable(dict(config=config, trained_with='tools/train.py', data=recipe.data.get('train_split')))


def registered_for(settings, registry) -> tuple:
    """(name, entry) of the registered teacher trained with ``settings``, else (None, None)."""
    for name, entry in registry.items():
        if entry['settings_hash'] == fingerprint(settings):
            return name, entry
    return None, None


def use_registered(recipe, teachers, teachers_dir, sha256, log=print, registry=None, retrain=False) -> dict:
    """Point every teacher the driver would train, or read from the scale's ``teacher_checkpoints``,
    at its registered checkpoint, when that file is in ``teachers_dir`` with its sha256.
    ``teachers``: the driver's {name: spec}, changed in place. Returns {teacher: (registry name,
    entry)} of the teachers that match an entry but are trained here, or read from another file
    (registered file absent, or ``retrain``): the report compares them with the registered metric."""
    registry = load_registry() if registry is None else registry
    compare = {}
    for t, spec in teachers.items():
        outside = spec.get('checkpoint')  # the scale's teacher_checkpoints: trained with tools/train.py
        settings = outside_settings(recipe, spec['config']) if outside else training_settings(recipe, t, spec['config'])
        name, entry = registered_for(settings, registry)
        if entry is None:
            continue
        path = osp.join(teachers_dir, entry['file'])
        metric = entry['metric']
        registered = f"the registered teacher {name!r} ({metric['name']} {metric['value']:.{_digits(metric['value'])}f})"
        if retrain or not osp.isfile(path):
            why = '--retrain-teachers' if retrain else f'{path} not found'
            if not outside:
                log(f'teacher {t}: {registered} is not used ({why}); training it here and comparing')
            elif not osp.isfile(outside):
                raise FileNotFoundError(
                    f"teacher {t}: neither {registered} ({path}) nor the scale's checkpoint {outside} is there; "
                    f"put the registered file (sha256 {entry['sha256'][:12]}…) in {teachers_dir}, or train it with "
                    f"`{entry['trained_by']}` and pass its checkpoint")
            elif sha256(outside) == entry['sha256']:
                log(f'teacher {t}: {registered}, read from {outside}')
                continue
            else:
                log(f'teacher {t}: {registered} is not used ({why}); reading {outside} and comparing')
            compare[t] = (name, entry)
            continue
        digest = sha256(path)
        if digest != entry['sha256']:
            raise ValueError(f"{path}: sha256 {digest[:12]}… is not the registered {entry['sha256'][:12]}… of teacher "
                             f"{name!r}; put the registered file there, or pass --retrain-teachers to train a new one")
        spec['checkpoint'] = path
        log(f'teacher {t}: {registered}, {path}')
    return compare


def _digits(value) -> int:
    """Decimals to print a registered metric with: a % metric, or a COCO mAP in 0-1."""
    return 2 if abs(value) >= 1 else 3


def distance_lines(compare, results) -> list:
    """How far teachers trained here land from their registered ones (``results``: the report's JSON)."""
    lines = []
    for t, (name, entry) in compare.items():
        metric = entry['metric']
        value = ((results.get('teachers') or {}).get(t) or {}).get('metrics', {}).get(metric['name'])
        if value is None:
            lines.append(f'teacher {t}: not evaluated yet, nothing to compare with {name!r}')
        else:
            digits = _digits(metric['value'])
            lines.append(f"teacher {t}: {metric['name']} {value:.{digits}f} here against {metric['value']:.{digits}f} "
                         f"for the registered {name!r} ({value - metric['value']:+.{digits}f})")
    return lines


# ----------------------------------------------------------------------------- command line
def register(args):
    from .table.recipe import Recipe
    from .table.stages import cached_sha256
    recipe = Recipe(args.benchmark_config, args.scale, {})
    config = recipe.scale['teacher_configs'][args.teacher]
    trained_outside = args.teacher in recipe.scale.get('teacher_checkpoints', {})
    settings = outside_settings(recipe, config) if trained_outside else training_settings(recipe, args.teacher, config)
    metric_name, value = args.metric.split('=')
    file_name = f'{args.name or recipe.name + "_" + args.teacher}.pth'
    os.makedirs(args.teachers_dir, exist_ok=True)
    target = osp.join(args.teachers_dir, file_name)
    if osp.abspath(args.checkpoint) != osp.abspath(target):
        shutil.copy(args.checkpoint, target)
    registry = load_registry(args.registry)
    record = provenance(['python', '-m', 'benchmarks.teachers'] + sys.argv[1:])
    registry[args.name or f'{recipe.name}_{args.teacher}'] = dict(
        file=file_name, sha256=cached_sha256(target), bytes=osp.getsize(target), settings=settings,
        settings_hash=fingerprint(settings), metric=dict(name=metric_name, value=float(value)),
        trained_by=args.trained_by, cpu=record['cpu'], registered_at_commit=record['commit'])
    with open(args.registry or REGISTRY, 'w') as f:
        json.dump(dict(teachers=registry), f, indent=1, sort_keys=True)
        f.write('\n')
    print(f'registered {target} in {args.registry or REGISTRY}')


def check(args):
    from .table.stages import cached_sha256
    missing = 0
    for name, entry in load_registry(args.registry).items():
        path = osp.join(args.teachers_dir, entry['file'])
        status = ('ok' if cached_sha256(path) == entry['sha256'] else 'DIFFERENT FILE') if osp.isfile(path) else 'missing'
        missing += status != 'ok'
        metric = entry['metric']
        print(f"{name:30s} {status:14s} {metric['name']} {metric['value']:.{_digits(metric['value'])}f}  {path}")
    return 1 if missing else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--registry', default=None, help='default: benchmarks/teachers.json')
    parser.add_argument('--teachers-dir', default=default_teachers_dir())
    sub = parser.add_subparsers(dest='what', required=True)
    sub.add_parser('check', help='which registered teachers are in --teachers-dir')
    r = sub.add_parser('register', help='register a trained teacher (copied into --teachers-dir)')
    r.add_argument('--benchmark-config', default='configs/cifar10/benchmark.py')
    r.add_argument('--scale', required=True)
    r.add_argument('--teacher', required=True, help="the recipe's teacher name, e.g. vit")
    r.add_argument('--name', help='registry name and file stem (default: <benchmark>_<teacher>)')
    r.add_argument('--checkpoint', required=True)
    r.add_argument('--metric', required=True, help='its test metric, NAME=VALUE, e.g. accuracy/top1=61.35')
    r.add_argument('--trained-by', required=True, help='the command that trained it')
    args = parser.parse_args(argv)
    return register(args) if args.what == 'register' else check(args)


if __name__ == '__main__':
    sys.exit(main())
