"""The command line of the benchmark tables (``python -m benchmarks.cifar10_table`` and siblings)."""
import argparse
import os
import os.path as osp
import shutil
import sys
import time

from mmengine.config import DictAction

from ..paths import REPO_ROOT, repo_path
from ..teachers import default_teachers_dir, distance_lines, use_registered
from .driver import Benchmark, main_guard
from .lanes import UnitClaims, parse_lane, run_lanes
from .plan import STAGES, selected
from .recipe import Recipe
from .report import fmt_seconds
from .stages import cached_sha256
from .state import pack, read_json, restore, write_json

# command-line flag -> (scale section, key)
SCALE_FLAGS = [('teacher_epochs', int, 'teacher', 'epochs', 'teacher epochs'),
               ('teacher_seconds', float, 'teacher', 'max_seconds', 'cap on teacher training time: a guard that stops '
                'and marks the teacher, not a schedule (0: none)'),
               ('teacher_batch', int, 'teacher', 'batch_size', 'teacher batch size'),
               ('teacher_lr', float, 'teacher', 'lr', 'teacher AdamW lr'),
               ('synth_images', int, 'synthesis', 'num_images', 'images per synthetic set (base, mimiq)'),
               ('synth_steps', int, 'synthesis', 'steps', 'optimisation steps per synthetic batch'),
               ('synth_batch', int, 'synthesis', 'batch_size', 'synthesis batch size'),
               ('ft_iters', int, 'finetune', 'iters', 'fine-tuning iterations'),
               ('ft_batch', int, 'finetune', 'batch_size', 'fine-tuning batch size'),
               ('ft_lr', float, 'finetune', 'lr', 'fine-tuning SGD lr'),
               ('had_gamma', float, 'finetune', 'had_gamma', 'weight of L_HAD'),
               ('kd_temperature', float, 'finetune', 'kd_temperature', 'KL temperature'),
               ('act_method', str, 'finetune', 'act_method', 'activation quantizer of the fine-tuned rows')]


def parse_args(argv, default_recipe, description):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('data and work dir')
    g.add_argument('--data-root', help='the dataset (its layout: see the recipe\'s data section)')
    g.add_argument('--work-dir', help='where every unit saves its output (default: '
                   'work_dirs/benchmark/<data folder name>_<scale>)')
    g = p.add_argument_group('what to run')
    g.add_argument('--scale', default='gpu-30min', help='scale preset of the recipe (sizes of every stage)')
    g.add_argument('--benchmark-config', default=default_recipe, help='the recipe (default: %(default)s)')
    g.add_argument('--stages', '--stage', nargs='+', choices=STAGES, help='stages to run (default: all)')
    g.add_argument('--only', nargs='+', metavar='GLOB', default=[],
                   help="units to run, globs on their keys: '<teacher>/teacher', '<teacher>/synth/<set>' (the set "
                   "of seed 0, and with it the set's other seeds), '<teacher>/synth/<set>/s<seed>' (another seed's), "
                   "'<teacher>/<row>/<bits>/s<seed>' (e.g. 'vit/*/w3a3/*', 'vit/synth/*/s1'); dependencies are not "
                   "pulled in")
    g.add_argument('--teachers', nargs='+', help='teachers of the scale (default: the scale\'s)')
    g.add_argument('--rows', '--methods', nargs='+', dest='rows',
                   help="rows of the table (default: the scale's 'rows', else all)")
    g.add_argument('--bits', nargs='+', help='e.g. w3a3 w2a4, or headline / all (default: the scale\'s)')
    g.add_argument('--seeds', nargs='+', type=int, help='seeds: each fine-tunes with its own seed on synthetic sets '
                   'made with its own seed (one shared set where the recipe says synthetic_set_per_seed = False; '
                   'default: the scale\'s)')
    g.add_argument('--dry-run', action='store_true', help='print the plan with the status of every unit and exit')
    g = p.add_argument_group('another teacher')
    g.add_argument('--teacher-config', help='a teacher config (file or pkg::path) instead of the scale\'s teachers')
    g.add_argument('--teacher-checkpoint', help='its checkpoint; without it the teacher is trained here')
    g.add_argument('--teacher-name', default='custom')
    g = p.add_argument_group('the fixed teachers (benchmarks/teachers.json)')
    g.add_argument('--teachers-dir', default=None, help='where the registered teacher checkpoints are (default: '
                   '$MIMIQ_TEACHERS_DIR or ~/.cache/mimiq_mm/teachers); a registered teacher found there is used '
                   'instead of training one')
    g.add_argument('--retrain-teachers', action='store_true',
                   help='train the teachers here even where a registered one is there, and report how far each '
                   'lands from it')
    g.add_argument('--image-size', type=int, nargs='+', help='synthesis image size (default: the recipe\'s)')
    g = p.add_argument_group('time')
    g.add_argument('--time-budget', type=float, metavar='SECONDS', help='start no unit that would not finish before '
                   'this many seconds from now; long units stop cleanly at the deadline and resume next time')
    g.add_argument('--reserve', type=float, default=20, help='seconds kept for the report and --pack')
    g.add_argument('--jobs', type=int, metavar='N',
                   help="after the teachers, run the other units in N parallel lanes, each with its share of the CPU "
                   "cores (or one GPU each); default: the scale's 'jobs', else 1 (cpu-2core: 2, one thread per core)")
    g.add_argument('--lane', help=argparse.SUPPRESS)  # 'k/N': set by the driver for the processes it starts
    g = p.add_argument_group('scale overrides (recorded in the output)')
    for flag, typ, _, _, text in SCALE_FLAGS:
        g.add_argument('--' + flag.replace('_', '-'), type=typ, help=text)
    g.add_argument('--scale-options', nargs='+', action=DictAction, default={},
                   help='any other scale setting, e.g. finetune.schedule=paper synthesis.steps=500')
    g.add_argument('--workers', type=int, help='dataloader workers (default: the scale\'s)')
    g = p.add_argument_group('moving the state between machines')
    g.add_argument('--restore', nargs='+', metavar='PATH', help='bench-state.tar.gz.part* files or folders holding '
                   'them, unpacked into the work dir first')
    g.add_argument('--pack', metavar='DIR', help='at the end, pack the state (<= 15 MiB parts) and results into DIR')
    g.add_argument('--pack-synthetic', choices=['needed', 'all', 'none'], default='needed',
                   help='synthetic images in the pack: of the sets unfinished units need (default), all, none')
    g.add_argument('--out', metavar='DIR', help='also copy results.md and results.json into DIR')
    g.add_argument('--fail-fast', action='store_true', help='stop at the first failing unit')
    return p.parse_args(argv)


def scale_overrides(args):
    overrides = {f'{section}.{key}': getattr(args, flag) for flag, _, section, key, _ in SCALE_FLAGS
                 if getattr(args, flag) is not None}
    if args.teacher_seconds is not None and args.teacher_seconds <= 0:
        overrides['teacher.max_seconds'] = None  # no guard
    overrides.update(args.scale_options)
    return overrides


def default_work_dir(args, recipe):
    if args.work_dir:
        return osp.abspath(args.work_dir)
    tag = osp.basename(osp.abspath(args.data_root).rstrip('/')) if args.data_root else recipe.name
    return osp.join(REPO_ROOT, 'work_dirs', 'benchmark', f'{tag}_{args.scale}')


def build(args, argv, tool):
    recipe = Recipe(args.benchmark_config, args.scale, scale_overrides(args))
    if args.jobs is None:
        args.jobs = int(recipe.scale.get('jobs', 1))
    if args.jobs < 1:
        raise ValueError(f'--jobs must be at least 1, got {args.jobs}')
    if args.teacher_config:
        checkpoint = args.teacher_checkpoint and osp.abspath(args.teacher_checkpoint)
        teachers = {args.teacher_name: dict(label=f'{args.teacher_name} ({osp.basename(args.teacher_config)})',
                                            config=args.teacher_config, checkpoint=checkpoint)}
    elif args.teacher_checkpoint:
        raise ValueError('--teacher-checkpoint needs --teacher-config (the architecture it belongs to)')
    else:
        teachers = recipe.teachers(args.teachers)
        args.compare_teachers = use_registered(recipe, teachers, args.teachers_dir or default_teachers_dir(),
                                               cached_sha256, log=lambda line: print('[bench] ' + line, flush=True),
                                               retrain=args.retrain_teachers)
    work_dir = default_work_dir(args, recipe)
    if args.restore:
        restored = restore(args.restore, work_dir)
        print(f'[bench] restored {restored} files into {work_dir}', flush=True)
    size = tuple(args.image_size * 2)[:2] if args.image_size else None
    rows = recipe.select('rows', args.rows, recipe.rows) or list(recipe.scale.get('rows') or recipe.rows)
    return Benchmark(recipe, work_dir, teachers, rows=rows,
                     bits=recipe.bits(args.bits), seeds=args.seeds or list(recipe.scale['seeds']),
                     stages=args.stages or STAGES, only=args.only, data_root=args.data_root, image_size=size,
                     time_budget=args.time_budget, reserve=args.reserve,
                     workers=args.workers if args.workers is not None else int(recipe.scale.get('workers', 0)),
                     command=['python', '-m', tool] + list(argv), lane=parse_lane(args.lane) if args.lane else None)


def run(bench, args, argv=(), tool=None):
    if args.dry_run:
        for unit in bench.plan:
            if selected(unit, bench.stages, bench.only):
                print(f'{bench.status(unit):8s} {unit.name}  (~{fmt_seconds(bench.estimate(unit))})')
        bench.close(0)
        return 0
    rc = 0
    try:
        if args.jobs > 1 and not args.lane:
            rc = run_in_lanes(bench, args, argv, tool)
        else:
            bench.execute()
    finally:
        if not bench.lane:  # lanes leave the report to their driver
            bench.report(quiet='report' not in bench.stages)
            report_teacher_distance(bench, getattr(args, 'compare_teachers', None))
        c = bench.counts
        bench.log(f'ran {len(c["ran"])}, skipped {len(c["skipped"])} (done), deferred {len(c["deferred"])} (time '
                  f'budget), stopped {len(c["partial"])} (resumable), blocked {len(c["blocked"])}, '
                  f'failed {len(c["failed"])}')
        if c['failed']:
            rc = max(rc, 1)
            bench.log('failed: ' + ', '.join(c['failed']) + ' (tracebacks in error_*.txt of their folders)')
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            for name in ('results.md', 'results.json'):
                shutil.copy(osp.join(bench.work.root, name), osp.join(args.out, name))
        if args.pack:
            keep = None if args.pack_synthetic == 'all' else set() if args.pack_synthetic == 'none' else {
                osp.relpath(bench.work.unit_dir(d), bench.work.root) for u in bench.plan
                if u.kind == 'quant' and bench.status(u) != 'done' for d in u.deps if d.kind == 'synth'}
            files, size, parts = pack(bench.work, args.pack, keep)
            bench.log(f'packed {files} files ({size / 2 ** 20:.1f} MiB, {parts} part(s)) into {args.pack}')
        bench.close(rc)
    return rc


def report_teacher_distance(bench, compare):
    """Log, and record in results.json, how far teachers trained here land from their registered ones."""
    path = osp.join(bench.work.root, 'results.json')
    if not compare or not osp.isfile(path):
        return
    results = read_json(path)
    results['teacher_registry_distance'] = distance_lines(compare, results)
    for line in results['teacher_registry_distance']:
        bench.log(line)
    write_json(path, results)


def run_in_lanes(bench, args, argv, tool):
    """``--jobs N``: the teachers (and their evaluations) here with every core, then the other
    units in N lane processes (:mod:`.lanes`). Returns 1 if a lane failed, else 0."""
    claims = UnitClaims(bench.work.root, 'driver')
    claims.clear()  # left by an interrupted run
    bench.execute(where=lambda u: u.kind == 'teacher' or (u.kind == 'eval' and u.row is None))
    stages = [s for s in bench.stages if s not in ('teacher', 'report')]
    if not stages:
        return 0
    seconds_left = bench.deadline - time.time() if bench.deadline else None
    if seconds_left is not None and seconds_left <= 0:
        return 0
    try:
        codes = run_lanes(tool, argv, bench.work.root, args.jobs, stages, seconds_left,
                          log=bench.log)
    finally:
        claims.clear()
    bench.log(f'lanes ended with exit codes {codes} (their units: logs/lane*.log)')
    return 1 if any(codes) else 0


def main(argv=None, default_recipe='configs/cifar10/benchmark.py', tool='benchmarks.cifar10_table',
         description=__doc__):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, repo_path(default_recipe), description)
    return main_guard(lambda: run(build(args, argv, tool), args, argv, tool))
