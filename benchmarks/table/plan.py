"""The units of work of a benchmark table and their order."""
import fnmatch
from dataclasses import dataclass, field
from typing import List, Optional

STAGES = ('teacher', 'synth', 'quant', 'eval', 'report')
#: a row's ``data`` that is no synthetic set: the real train split, or batches a generator makes
#: during fine-tuning (``train_cfg.generator``, GDFQ, Qimera, AdaDFQ)
NO_SET = ('real', 'generator')


def reads_set(row: dict) -> bool:
    """Whether a row quantizes with a synthetic set (which a synth unit makes first)."""
    return row['data'] not in NO_SET


@dataclass(eq=False)
class Unit:
    """One resumable unit of work.

    ``kind`` is 'teacher' (train it), 'synth' (make a synthetic set), 'quant' (quantize the
    teacher one way at one bit-width and seed) or 'eval' (measure a teacher or a quant unit's
    student on the test split; it shares its ``key`` with what it measures).
    """
    kind: str
    teacher: str
    set_name: Optional[str] = None
    row: Optional[str] = None
    bits: Optional[str] = None
    seed: Optional[int] = None
    deps: List['Unit'] = field(default_factory=list)

    @property
    def key(self) -> str:
        if self.kind == 'synth':
            return f'{self.teacher}/synth/{self.set_name}'
        if self.row is None:
            return f'{self.teacher}/teacher'
        return f'{self.teacher}/{self.row}/{self.bits}/s{self.seed}'

    @property
    def name(self) -> str:
        return f'{self.kind} {self.key}'


def make_plan(teachers, rows: dict, sets: dict, selected_rows: List[str], bits: List[str],
              seeds: List[int], seeds_of=None) -> List[Unit]:
    """Every unit, dependencies first. A synthetic set selected from another (``source``) comes
    after it. Quantization units are seed-major (every row and bit-width of the first seed before
    the second), so a run cut short leaves whole tables behind; ``seeds_of(bits, seeds)`` may
    give a bit-width its own seeds."""
    units = []
    for t in teachers:
        teacher = Unit('teacher', t)
        units += [teacher, Unit('eval', t, deps=[teacher])]
        made = {}

        def set_unit(name):
            if name not in made:
                source = sets[name].get('source')
                deps = [teacher] + ([set_unit(source)] if source else [])
                made[name] = Unit('synth', t, set_name=name, deps=deps)
                units.append(made[name])
            return made[name]

        for row in selected_rows:
            if reads_set(rows[row]):
                set_unit(rows[row]['data'])
        for seed in seeds_union(bits, seeds, seeds_of):
            for b in bits:
                if seed not in (seeds_of(b, seeds) if seeds_of else seeds):
                    continue
                for row in selected_rows:
                    data = rows[row]['data']
                    quant = Unit('quant', t, row=row, bits=b, seed=seed,
                                 deps=[teacher] + ([made[data]] if reads_set(rows[row]) else []))
                    units += [quant, Unit('eval', t, row=row, bits=b, seed=seed, deps=[quant])]
    return units


def seeds_union(bits, seeds, seeds_of):
    """Every seed of any bit-width, in order (a column may have more seeds than the others)."""
    return list(dict.fromkeys(s for b in bits for s in (seeds_of(b, seeds) if seeds_of else seeds)))


def selected(unit: Unit, stages: List[str], only: List[str]) -> bool:
    """Whether ``unit`` is in the chosen stages and matches one of the ``only`` globs (if any)."""
    if unit.kind not in stages:
        return False
    return not only or any(fnmatch.fnmatch(unit.key, p) or fnmatch.fnmatch(unit.key, p.rstrip('/') + '/*')
                           for p in only)
