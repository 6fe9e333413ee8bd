"""The benchmark driver: runs the units of a plan that are not done yet, within a time budget,
records each, and writes the report."""
import os
import os.path as osp
import shlex
import statistics
import sys
import time
import traceback

from mmengine.utils.dl_utils import collect_env

from ..provenance import git_commit, provenance
from .lanes import UnitClaims, file_lock
from .plan import Unit, make_plan, selected
from .report import checks_on_rows, fmt_seconds, markdown, run_checks, summarise, synthetic_set_records
from .state import EVAL_RECORD, RECORD, WorkDir, fingerprint, jsonable, now_iso, read_json, write_json
from .stages import UnitRunner, cached_sha256


def device_words():
    import torch
    if torch.cuda.is_available():
        return f'{torch.cuda.get_device_name(0)}, torch {torch.__version__}'
    return f'CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}'


class Benchmark:
    """One invocation of a benchmark.

    Args:
        recipe (Recipe): recipe and scale.
        work_dir (str): the work directory.
        teachers (dict): {name: dict(label, config, checkpoint)}.
        rows, bits, seeds: the selection. A seed is the fine-tuning seed of its units and the seed
            of the synthetic sets they read (seed 0's ``<teacher>/synth/<set>``, seed s's
            ``<teacher>/synth/<set>/s<s>``), unless the recipe shares one set by every seed
            (``synthetic_set_per_seed = False``).
        stages (list[str]), only (list[str]): which units run (see :func:`selected`).
        data_root (str | None), image_size: see :class:`UnitRunner`.
        time_budget (float | None): seconds from now after which no unit starts and running ones
            stop cleanly (resumable); ``reserve`` seconds are kept for the report.
        workers (int): dataloader workers.
        command (list[str]): the command line (recorded).
        fail_fast (bool): stop at the first failing unit.
        lane (tuple | None): (k, N): this process is lane k of N (:mod:`.lanes`): it runs only
            the units it claims, waits for units other lanes are making, and adds no invocation
            of its own to ``bench.json`` (its driver does).
    """

    def __init__(self, recipe, work_dir, teachers, rows, bits, seeds, stages, only=(), data_root=None,
                 image_size=None, time_budget=None, reserve=20.0, workers=0, command=(), fail_fast=False,
                 lane=None):
        self.recipe, self.teachers = recipe, teachers
        self.lane = lane
        self.rows, self.bits, self.seeds = rows, bits, seeds
        self.stages, self.only, self.fail_fast = list(stages), list(only), fail_fast
        self.work = WorkDir(work_dir)
        self.data_root = osp.abspath(data_root) if data_root else None
        self.start = time.time()
        self.deadline = self.start + time_budget - reserve if time_budget else None
        self.log_path = osp.join(self.work.root, 'logs', 'driver.log')
        os.makedirs(osp.dirname(self.log_path), exist_ok=True)
        self.claims = UnitClaims(self.work.root, f'lane {lane[0]}/{lane[1]} pid {os.getpid()}') if lane else None
        self.units = UnitRunner(recipe, self.work, teachers, self.data_root, image_size or recipe.raw['image_size'],
                                self.deadline, workers, self.log)
        self.plan = make_plan(teachers, recipe.rows, recipe.sets, rows, bits, seeds, recipe.seeds_of,
                              recipe.set_per_seed)
        self.evals = {u.key: u for u in self.plan if u.kind == 'eval'}
        self.counts = dict(ran=[], skipped=[], deferred=[], blocked=[], failed=[], partial=[])
        self.meta = self._open(command)

    # ------------------------------------------------------------------ bookkeeping
    def log(self, msg):
        line = f'[bench lane {self.lane[0]}/{self.lane[1]}] {msg}' if self.lane else f'[bench] {msg}'
        print(line, flush=True)
        with open(self.log_path, 'a') as f:
            f.write(f'{time.strftime("%H:%M:%S")} {line}\n')

    def _open(self, command):
        path = osp.join(self.work.root, 'bench.json')
        meta = read_json(path) or dict(benchmark=self.recipe.name, scale=self.recipe.scale_name, created=now_iso(),
                                       invocations=[], timings={})
        if meta.get('scale') != self.recipe.scale_name:
            raise ValueError(f'{self.work.root} holds a benchmark at scale {meta.get("scale")!r}, not '
                             f'{self.recipe.scale_name!r}; give another --work-dir (two scales do not mix)')
        self.invocation = dict(id=f'{time.time():.3f}-{os.getpid()}',
                               command=' '.join(shlex.quote(c) for c in command), started=now_iso(),
                               commit=git_commit()[0],  # the units it runs carry it; a table can mix commits
                               scale=self.recipe.scale_name, overrides=self.recipe.overrides, stages=self.stages,
                               only=self.only, device=device_words(),
                               environment={k: str(v) for k, v in collect_env().items()
                                            if k in ('sys.platform', 'Python', 'PyTorch', 'MMEngine', 'GPU 0')})
        if self.data_root:
            meta['data_root'] = self.data_root
        self.meta = meta
        self.save_meta()
        self.log(f'benchmark {self.recipe.name!r}, scale {self.recipe.scale_name!r} '
                 f'({self.recipe.scale.get("description", "")}); work dir {self.work.root}; '
                 f'{self.invocation["device"]}')
        return self.meta

    def save_meta(self, timing=None):
        """Write ``bench.json``: this invocation's entry (lanes have none) and, if given, one
        more wall time ``(key, seconds)``, merged under a lock into what other lanes wrote."""
        path = osp.join(self.work.root, 'bench.json')
        with file_lock(path + '.lock'):
            meta = read_json(path) or self.meta
            meta.setdefault('timings', {})
            if timing:
                meta['timings'].setdefault(timing[0], []).append(timing[1])
            if not self.lane:
                calls = meta.setdefault('invocations', [])
                same = [i for i, c in enumerate(calls) if c.get('id') == self.invocation['id']]
                if same:
                    calls[same[0]] = self.invocation
                else:
                    calls.append(self.invocation)
            if self.data_root:
                meta['data_root'] = self.data_root
            write_json(path, meta)
        self.meta = meta

    def settings(self, unit):
        return self.units.settings(unit, cached_sha256)

    def status(self, unit, deps=True):
        """'done' (its output exists, made with the current settings), 'blocked' (a dependency is
        not done), 'stale' (done with other settings) or 'todo'."""
        rec = self.work.record(unit)
        images_left_behind = unit.kind == 'synth' and not osp.isfile(osp.join(self.work.unit_dir(unit), 'manifest.json'))
        if rec is None or images_left_behind:
            own = 'todo'
        else:
            own = 'done' if rec.get('settings_hash') == fingerprint(self.settings(unit)) else 'stale'
        if own == 'done' or not deps:
            return own
        return 'blocked' if any(self.status(d) != 'done' for d in unit.deps) else own

    def estimate(self, unit):
        """Seconds a unit is expected to take: the median of earlier runs, else the scale's guess."""
        timings = self.meta.get('timings', {})
        for key in (f'{unit.kind}/{unit.teacher}/{unit.row or unit.set_name or ""}', f'{unit.kind}/{unit.teacher}',
                    unit.kind):
            if timings.get(key):
                return statistics.median(timings[key])
        return float(self.recipe.scale.get('estimates', {}).get(unit.kind, 60))

    def fits(self, unit):
        if self.deadline is None or unit.kind == 'synth':  # a set is made batch by batch: a part is progress
            return True
        return self.deadline - time.time() >= self.estimate(unit)

    # ------------------------------------------------------------------ running
    def skip_reason(self, unit):
        status = self.status(unit)
        if status == 'done':
            return 'done'
        if unit.kind == 'synth' and not self.needed(unit):
            return 'every unit that uses this set is done'
        if status == 'blocked':
            return 'blocked: needs ' + ', '.join(d.name for d in unit.deps if self.status(d) != 'done')
        if not self.fits(unit):
            return (f'deferred: about {fmt_seconds(self.estimate(unit))} needed, '
                    f'{fmt_seconds(max(0.0, self.deadline - time.time()))} left')
        return None

    def needed(self, unit):
        """Whether a unit that depends on ``unit`` (a synthetic set) still has to run."""
        return any(unit in u.deps and self.status(u, deps=False) != 'done' for u in self.plan
                   if u.kind in ('quant', 'synth'))

    def execute(self, where=None):
        """Run the selected units (those ``where(unit)`` also accepts, if given) that are not done,
        in plan order. A lane makes passes over the plan until nothing is left that it could run
        or wait for (units other lanes are making, and what depends on them)."""
        handled = set()
        while self._pass(where, handled):
            time.sleep(self.poll_seconds)
        self.units.forget()

    poll_seconds = 2.0

    def _pass(self, where, handled) -> bool:
        """One pass over the plan; True if some unit waits for another lane."""
        waiting = False
        for unit in self.plan:
            if unit.name in handled or not selected(unit, self.stages, self.only) or (where and not where(unit)):
                continue
            if self.claims is not None:
                state = self._lane_state(unit)
                if state == 'wait':
                    waiting = True
                    continue
                if state == 'done':
                    handled.add(unit.name)
                    continue
            handled.add(unit.name)
            outcome = self._run_unit(unit)
            if self.claims is not None:
                self.claims.finish(unit, outcome)
        return waiting

    def _lane_state(self, unit):
        """'done' (nothing for this lane to do: made, or ended by a lane this invocation), 'wait'
        (another lane makes it, or a dependency is still to come) or 'run' (claimed by this lane now;
        with a teacher or quant unit, its eval is claimed too, so it runs on the live runner)."""
        claims = self.claims
        if self.status(unit, deps=False) == 'done' or claims.ended(unit):
            return 'done'
        if claims.running_elsewhere(unit) or any(self._coming(d) for d in unit.deps):
            return 'wait'
        if not claims.claim(unit):
            return 'wait'
        partner = self.evals.get(unit.key) if unit.kind in ('teacher', 'quant') else None
        if (partner is not None and selected(partner, self.stages, self.only)
                and self.status(partner, deps=False) != 'done'):
            claims.claim(partner)
        return 'run'

    def _coming(self, dep) -> bool:
        """Whether a lane of this run may still make ``dep``: not made, not ended, selected (a
        dependency waiting for its own dependencies counts, so its dependents wait too)."""
        return (self.status(dep, deps=False) != 'done' and not self.claims.ended(dep)
                and selected(dep, self.stages, self.only))

    def _run_unit(self, unit) -> str:
        """Run one unit unless it is done, blocked or does not fit the time budget; returns what
        happened: 'ran', 'failed', 'partial' (stopped at the budget, resumable) or the skip kind."""
        self.units.forget(keep_key=unit.key)
        reason = self.skip_reason(unit)
        if reason:
            self.log(f'skipped {unit.name}: {reason}')
            kind = 'blocked' if reason.startswith('blocked') else 'deferred' if reason.startswith('deferred') \
                else 'skipped'
            self.counts[kind].append(unit.name)
            return kind
        if self.status(unit, deps=False) == 'stale':
            self.log(f'{unit.name}: settings changed since it was done; redoing it')
            self.work.clear(unit)
        self.mark_settings(unit)
        self.log(f'running {unit.name}')
        start = time.time()
        try:
            result = self.units.run(unit)
        except Exception as err:  # noqa: BLE001  (one failing unit must not stop the table)
            self.units.live_runners.pop(unit.key, None)
            with open(osp.join(self.work.unit_dir(unit), f'error_{unit.kind}.txt'), 'w') as f:
                f.write(traceback.format_exc())
            self.log(f'FAILED {unit.name}: {type(err).__name__}: {err}')
            self.counts['failed'].append(unit.name)
            if self.fail_fast:
                raise
            return 'failed'
        seconds = time.time() - start
        if result is None:
            self.counts['partial'].append(unit.name)
            self.log(f'stopped {unit.name} at the time budget after {fmt_seconds(seconds)} (resumable)')
            return 'partial'
        self.counts['ran'].append(unit.name)
        self.save_meta(timing=(f'{unit.kind}/{unit.teacher}/{unit.row or unit.set_name or ""}', round(seconds, 2)))
        write_json(self.work.record_path(unit), dict(
            result, kind=unit.kind, key=unit.key, teacher=unit.teacher, row=unit.row, bits=unit.bits,
            seed=unit.seed, settings=jsonable(self.settings(unit)), settings_hash=fingerprint(self.settings(unit)),
            seconds=round(seconds, 2), finished=now_iso(), device=self.invocation['device'],
            command=self.invocation['command'], commit=self.invocation.get('commit')))
        self.log(f'finished {unit.name} in {fmt_seconds(seconds)}')
        if unit.kind == 'eval' and not self.lane:  # lanes leave the report to their driver
            self.report(quiet=True)
        return 'ran'

    def mark_settings(self, unit):
        """Mark the unit's folder with the settings it runs with; partial output (synthetic
        batches, resume checkpoints) of a run with other settings is removed, not resumed."""
        os.makedirs(self.work.unit_dir(unit), exist_ok=True)
        if unit.kind in ('eval', 'teacher'):
            return
        path = osp.join(self.work.unit_dir(unit), 'unit_settings.json')
        current = fingerprint(self.settings(unit))
        previous = (read_json(path) or {}).get('settings_hash')
        if previous and previous != current:
            self.log(f'{unit.name}: partial output from a run with other settings; starting over')
            self.work.clear(unit)
            os.makedirs(self.work.unit_dir(unit), exist_ok=True)
        write_json(path, dict(settings_hash=current, settings=jsonable(self.settings(unit))))

    # ------------------------------------------------------------------ report
    def report(self, quiet=False):
        self.invocation['seconds'] = round(time.time() - self.start, 1)
        self.save_meta()
        teachers = {r['teacher']: r for r in self.work.all_records(f'*/teacher/{EVAL_RECORD}')}
        results = self.work.all_records(f'*/runs/*/{EVAL_RECORD}')
        sets = synthetic_set_records(self.work.all_records(f'*/synthetic/*/{RECORD}'))
        summary = summarise(results, self.recipe.metrics)
        labels = {name: row['label'] for name, row in self.recipe.rows.items()}
        labels['fp'] = 'FP teacher'
        planned = [u for u in self.plan if u.kind == 'eval' and u.row]
        missing = [u.key for u in planned if not osp.isfile(self.work.record_path(u))]
        bits_seen = {r['bits'] for r in results}
        order = self.recipe.raw.get('all_bits', [])
        bits = [b for b in order if b in self.bits or b in bits_seen]
        bits += sorted((set(self.bits) | bits_seen) - set(order))
        rows = [r for r in self.recipe.rows if r in self.rows or any(r in s for s in summary.values())]
        data = dict(
            benchmark=self.recipe.name, scale=self.recipe.scale_name,
            scale_description=self.recipe.scale.get('description'), scale_settings=jsonable(self.recipe.scale),
            scale_overrides=self.recipe.overrides, recipe=self.recipe.path, data_root=self.meta.get('data_root'),
            complete=not missing, missing=missing, generated=now_iso(), work_dir=self.work.root,
            teachers={t: dict(metrics=r.get('metrics'), train=(self.work.record(Unit('teacher', t)) or {}))
                      for t, r in teachers.items()},
            teacher_names=list(dict.fromkeys(list(self.teachers) + list(teachers) + list(summary))),
            rows=rows, bits=bits, metrics=self.recipe.metrics, summary=summary, results=results,
            synthetic_sets=sets, synthetic_set_per_seed=self.recipe.set_per_seed,
            checks=run_checks(checks_on_rows(self.recipe.checks, rows), summary, teachers, self.recipe.metrics,
                              labels),
            invocations=self.meta.get('invocations', []), timings=self.meta.get('timings', {}),
            provenance=provenance(shlex.split(self.invocation['command'])))
        write_json(osp.join(self.work.root, 'results.json'), data)
        text = markdown(data, labels, self.recipe.teacher_labels())
        with open(osp.join(self.work.root, 'results.md'), 'w') as f:
            f.write(text)
        if not quiet:
            print(text, flush=True)
            self.log(f'wrote {osp.join(self.work.root, "results.md")} and results.json')
        return data

    def close(self, rc):
        self.invocation.update(seconds=round(time.time() - self.start, 1), finished=now_iso(), exit_code=rc,
                               **{k: len(v) for k, v in self.counts.items()})
        self.save_meta()


def main_guard(fn):
    """Run ``fn()``; bad input (ValueError, FileNotFoundError) ends with one line and status 2."""
    try:
        return fn()
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get('MIMIQ_DEBUG'):
            raise
        print(f'error: {err}', file=sys.stderr)
        return 2
