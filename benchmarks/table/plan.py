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


def set_seed(seed: int, per_seed: bool = True) -> int:
    """The seed of the synthetic sets a unit of seed ``seed`` reads: its own (a seed varies the
    images as well as fine-tuning), or 0 where one set is shared by every seed
    (``synthetic_set_per_seed = False`` in the recipe)."""
    return int(seed) if per_seed else 0


@dataclass(eq=False)
class Unit:
    """One resumable unit of work.

    ``kind`` is 'teacher' (train it), 'synth' (make a synthetic set), 'quant' (quantize the
    teacher one way at one bit-width and seed) or 'eval' (measure a teacher or a quant unit's
    student on the test split; it shares its ``key`` with what it measures). A synth unit's
    ``seed`` is its set's seed: seed 0's key is ``<teacher>/synth/<set>``, another seed's
    ``<teacher>/synth/<set>/s<seed>``.
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
            return f'{self.teacher}/synth/{self.set_name}' + (f'/s{self.seed}' if self.seed else '')
        if self.row is None:
            return f'{self.teacher}/teacher'
        return f'{self.teacher}/{self.row}/{self.bits}/s{self.seed}'

    @property
    def name(self) -> str:
        return f'{self.kind} {self.key}'


def make_plan(teachers, rows: dict, sets: dict, selected_rows: List[str], bits: List[str],
              seeds: List[int], seeds_of=None, set_per_seed: bool = True) -> List[Unit]:
    """Every unit, dependencies first. Quantization units are seed-major (every row and bit-width
    of the first seed before the second), so a run cut short leaves whole tables behind;
    ``seeds_of(bits, seeds)`` may give a bit-width its own seeds. The units of a seed read the
    synthetic sets of that seed (:func:`set_seed`), made just before them; a set selected from
    another (``source``) comes after its source of the same seed."""
    units = []
    for t in teachers:
        teacher = Unit('teacher', t)
        units += [teacher, Unit('eval', t, deps=[teacher])]
        made = {}

        def set_unit(name, seed):
            if (name, seed) not in made:
                check_set_folder(sets, name, seed)
                source = sets[name].get('source')
                deps = [teacher] + ([set_unit(source, seed)] if source else [])
                made[name, seed] = Unit('synth', t, set_name=name, seed=seed, deps=deps)
                units.append(made[name, seed])
            return made[name, seed]

        for seed in seeds_union(bits, seeds, seeds_of):
            chosen = [b for b in bits if seed in (seeds_of(b, seeds) if seeds_of else seeds)]
            data_seed = set_seed(seed, set_per_seed)
            for row in selected_rows:
                if reads_set(rows[row]):
                    set_unit(rows[row]['data'], data_seed)
            for b in chosen:
                for row in selected_rows:
                    data = [set_unit(rows[row]['data'], data_seed)] if reads_set(rows[row]) else []
                    quant = Unit('quant', t, row=row, bits=b, seed=seed, deps=[teacher] + data)
                    units += [quant, Unit('eval', t, row=row, bits=b, seed=seed, deps=[quant])]
    return units


def check_set_folder(sets: dict, name: str, seed: int):
    """Another seed's set lives in ``<set>_s<seed>``: refuse a recipe whose set of that name
    would share the folder."""
    folder = f'{name}_s{seed}'
    if seed and folder in sets:
        raise ValueError(f"the synthetic set {name!r} of seed {seed} and the recipe's set {folder!r} would share a "
                         'folder; rename the latter')


def seeds_union(bits, seeds, seeds_of):
    """Every seed of any bit-width, in order (a column may have more seeds than the others)."""
    return list(dict.fromkeys(s for b in bits for s in (seeds_of(b, seeds) if seeds_of else seeds)))


def selected(unit: Unit, stages: List[str], only: List[str]) -> bool:
    """Whether ``unit`` is in the chosen stages and matches one of the ``only`` globs (if any)."""
    if unit.kind not in stages:
        return False
    return not only or any(fnmatch.fnmatch(unit.key, p) or fnmatch.fnmatch(unit.key, p.rstrip('/') + '/*')
                           for p in only)
