"""The plan of a benchmark table (benchmarks.table.plan) and the synthetic sets of its seeds: a
seed varies the synthetic images as well as fine-tuning (one set per set and seed), unless the
recipe shares one set by every seed (``synthetic_set_per_seed = False``). The end-to-end run of
two seeds is in tests/test_cifar_benchmark.py (slow)."""
import os.path as osp

import pytest

from benchmarks.table.plan import make_plan, selected
from benchmarks.table.recipe import SET_SEED_STRIDE, Recipe
from benchmarks.table.stages import UnitRunner
from benchmarks.table.state import WorkDir, fingerprint

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RECIPE = osp.join(ROOT, 'configs', 'cifar10', 'benchmark.py')
ROWS = dict(noise_ptq=dict(data='noise', finetune=False), mimiq=dict(data='mimiq'), gdfq=dict(data='generator'),
            real_ft=dict(data='real'), top=dict(data='base_top'))
SETS = dict(noise=dict(method='noise'), mimiq=dict(method='mimiq'), base=dict(method='base'),
            base_top=dict(source='base', order='top', fraction=0.5))


def plan_of(seeds, rows=tuple(ROWS), **kwargs):
    units = make_plan(['vit'], ROWS, SETS, list(rows), ['w3a3'], seeds, **kwargs)
    return {u.key if u.kind != 'eval' else 'eval ' + u.key: u for u in units}


def set_keys(plan):
    return sorted(u.key for u in plan.values() if u.kind == 'synth')


def test_each_seed_reads_its_own_synthetic_sets():
    plan = plan_of([0, 1])
    assert set_keys(plan) == sorted(f'vit/synth/{name}{suffix}' for name in SETS for suffix in ('', '/s1'))
    assert [d.key for d in plan['vit/mimiq/w3a3/s1'].deps] == ['vit/teacher', 'vit/synth/mimiq/s1']
    assert [d.key for d in plan['vit/mimiq/w3a3/s0'].deps] == ['vit/teacher', 'vit/synth/mimiq']
    assert [d.key for d in plan['vit/noise_ptq/w3a3/s1'].deps] == ['vit/teacher', 'vit/synth/noise/s1']  # PTQ too
    for row in ('gdfq', 'real_ft'):  # no synthetic set: unaffected
        assert [d.key for d in plan[f'vit/{row}/w3a3/s1'].deps] == ['vit/teacher']
    # a set selected from another follows its source's seed
    assert [d.key for d in plan['vit/synth/base_top/s1'].deps] == ['vit/teacher', 'vit/synth/base/s1']
    assert plan['vit/synth/mimiq/s1'].seed == 1 and plan['vit/synth/mimiq'].seed == 0


def test_a_seeds_sets_come_just_before_its_units():
    """Seed-major: a run cut short leaves seed 0's whole table behind, not every seed's sets."""
    order = list(plan_of([0, 1], rows=['mimiq']))
    assert order == ['vit/teacher', 'eval vit/teacher', 'vit/synth/mimiq', 'vit/mimiq/w3a3/s0',
                     'eval vit/mimiq/w3a3/s0', 'vit/synth/mimiq/s1', 'vit/mimiq/w3a3/s1', 'eval vit/mimiq/w3a3/s1']


def test_one_shared_set_when_the_recipe_asks_for_it():
    plan = plan_of([0, 1], set_per_seed=False)
    assert set_keys(plan) == sorted(f'vit/synth/{name}' for name in SETS)
    assert [d.key for d in plan['vit/mimiq/w3a3/s1'].deps] == ['vit/teacher', 'vit/synth/mimiq']


def test_a_set_that_would_share_another_seeds_folder_is_refused():
    sets = dict(SETS, mimiq_s1=dict(method='mimiq'))
    with pytest.raises(ValueError, match="'mimiq_s1' would share a folder"):
        make_plan(['vit'], ROWS, sets, ['mimiq'], ['w3a3'], [0, 1])
    make_plan(['vit'], ROWS, sets, ['mimiq'], ['w3a3'], [0])


def test_keys_folders_and_only_globs_of_a_seeds_set(tmp_path):
    plan, work = plan_of([0, 2]), WorkDir(str(tmp_path))
    zero, two = plan['vit/synth/mimiq'], plan['vit/synth/mimiq/s2']
    assert work.unit_dir(zero) == osp.join(work.root, 'vit', 'synthetic', 'mimiq')  # as before sets had seeds
    assert work.unit_dir(two) == osp.join(work.root, 'vit', 'synthetic', 'mimiq_s2')
    assert selected(two, ['synth'], ['vit/synth/mimiq']) and selected(zero, ['synth'], ['vit/synth/mimiq'])
    assert selected(two, ['synth'], ['vit/synth/*/s2']) and not selected(zero, ['synth'], ['vit/synth/*/s2'])
    assert not selected(two, ['synth'], ['vit/*/w3a3/*'])


def test_a_seeds_set_options_differ_only_in_the_synthesis_seed(tmp_path):
    recipe = Recipe(RECIPE, 'smoke')
    assert recipe.set_per_seed and recipe.set_seed(2) == 2
    zero, one = recipe.set_options('mimiq'), recipe.set_options('mimiq', 1)
    assert zero == recipe.set_options('mimiq', 0) and zero['seed'] == recipe.raw['synthesis_common']['seed']
    assert one == dict(zero, seed=zero['seed'] + SET_SEED_STRIDE)
    shared = tmp_path / 'shared.py'
    shared.write_text(f"_base_ = ['{RECIPE}']\nsynthetic_set_per_seed = False\n")
    assert Recipe(str(shared), 'smoke').set_seed(2) == 0


def test_a_quant_unit_records_and_reads_its_seeds_set(tmp_path):
    """Seed 0's settings are those of a set made before sets had seeds: its work stays done."""
    recipe = Recipe(RECIPE, 'smoke')
    runner = UnitRunner(recipe, WorkDir(str(tmp_path)), recipe.teachers(['vit']), None, 32)
    plan = {u.key: u for u in make_plan(['vit'], recipe.rows, recipe.sets, ['mimiq'], ['w3a3'], [0, 1])
            if u.kind != 'eval'}
    settings = {key: runner.settings(unit, lambda path: 'sha') for key, unit in plan.items()}
    assert settings['vit/synth/mimiq'] == dict(teacher_sha256='sha', synthesis=recipe.set_options('mimiq'),
                                               image_size=32)
    assert settings['vit/synth/mimiq/s1']['synthesis'] == recipe.set_options('mimiq', 1)
    for seed, set_key in ((0, 'vit/synth/mimiq'), (1, 'vit/synth/mimiq/s1')):
        assert settings[f'vit/mimiq/w3a3/s{seed}']['synthetic_set'] == settings[set_key]
    assert fingerprint(settings['vit/mimiq/w3a3/s0']) != fingerprint(settings['vit/mimiq/w3a3/s1'])


def test_the_headline_scale_has_three_seeds():
    assert Recipe(RECIPE, 'cpu-2core').scale['seeds'] == [0, 1, 2]
    assert Recipe(RECIPE, 'gpu-30min').scale['seeds'] == [0, 1]


def test_the_scales_synthesis_precision_reaches_every_set():
    """`--scale-options synthesis.amp_dtype=bf16` makes bf16 sets; the scale's None means float32
    (without the key the synthesizer's own 'auto' would decide)."""
    default = Recipe('configs/cifar10/benchmark.py', 'cpu-2core', {})
    forced = Recipe('configs/cifar10/benchmark.py', 'cpu-2core', {'synthesis.amp_dtype': 'bf16'})
    for name in ('mimiq', 'base'):
        assert default.set_options(name)['amp_dtype'] is None
        assert forced.set_options(name)['amp_dtype'] == 'bf16'
        assert forced.set_options(name, seed=1)['amp_dtype'] == 'bf16'
