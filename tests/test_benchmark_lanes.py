"""Parallel lanes of the benchmark driver (--jobs N): claims, the lanes' command lines and
resources, and the merged bench.json. The end-to-end run of two lanes is in
tests/test_cifar_benchmark.py (slow)."""
import json
import os.path as osp
import threading

import pytest

from benchmarks.table.lanes import UnitClaims, file_lock, lane_argv, lane_resources, parse_lane
from benchmarks.table.plan import Unit


def test_one_lane_gets_a_unit_and_the_other_waits_until_it_ends(tmp_path):
    unit = Unit('quant', 'vit', row='mimiq', bits='w3a3', seed=0)
    a, b = UnitClaims(str(tmp_path), 'lane 0/2'), UnitClaims(str(tmp_path), 'lane 1/2')
    assert a.claim(unit) and a.claim(unit)          # taken, and held again by its holder
    assert not b.claim(unit)
    assert b.running_elsewhere(unit) and not a.running_elsewhere(unit)
    a.finish(unit, 'failed')
    assert b.ended(unit) and a.ended(unit) and not b.running_elsewhere(unit)
    assert not b.claim(unit)                        # an ended unit is not taken again this run
    b.finish(unit, 'ran')                           # only the holder gives a unit up
    assert a.ended(unit)
    a.clear()
    assert b.claim(unit)
    b.finish(unit, 'ran')
    assert not osp.exists(b.path(unit)) and not a.ended(unit)


def test_exactly_one_of_many_racing_claims_wins(tmp_path):
    unit = Unit('synth', 'vit', set_name='mimiq')
    wins = []
    start = threading.Barrier(8)

    def take(k):
        claims = UnitClaims(str(tmp_path), f'lane {k}/8')
        start.wait()
        if claims.claim(unit):
            wins.append(k)

    threads = [threading.Thread(target=take, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_lane_command_line_drops_the_driver_only_flags():
    argv = ['--data-root', 'data/cifar10', '--scale', 'cpu-2core', '--jobs', '2', '--only', 'vit/*/w4a4/s0',
            'vit/base/*', '--time-budget', '600', '--pack', 'out', '--out=res', '--restore', 'a', 'b',
            '--stages', 'teacher', 'quant', '--methods', 'noise_ptq', 'mimiq']
    out = lane_argv(argv, 1, 2, ['quant', 'eval'], seconds_left=123.4)
    assert out == ['--data-root', 'data/cifar10', '--scale', 'cpu-2core', '--only', 'vit/*/w4a4/s0', 'vit/base/*',
                   '--methods', 'noise_ptq', 'mimiq', '--stages', 'quant', 'eval', '--lane', '1/2',
                   '--time-budget', '123', '--reserve', '0']
    assert '--time-budget' not in lane_argv(argv, 0, 2, ['eval'])


@pytest.mark.parametrize('text', ['2/2', '1', 'a/b', '', '-1/2'])
def test_bad_lane_is_refused(text):
    with pytest.raises(ValueError, match='k/N'):
        parse_lane(text)


def test_lanes_split_the_cores_and_threads():
    lanes = lane_resources(2)
    assert len(lanes) == 2
    cores = [set(c) for _, c in lanes if c]
    for env, _ in lanes:
        assert int(env['OMP_NUM_THREADS']) >= 1 and env['OMP_NUM_THREADS'] == env['MKL_NUM_THREADS']
    if len(cores) == 2:
        assert not cores[0] & cores[1]  # no core shared by two lanes


def test_locked_updates_of_one_file_lose_nothing(tmp_path):
    """What save_meta relies on: read-modify-write under file_lock from several writers."""
    path = str(tmp_path / 'bench.json')
    with open(path, 'w') as f:
        json.dump({'timings': []}, f)

    def add(k):
        for i in range(25):
            with file_lock(path + '.lock'):
                with open(path) as f:
                    data = json.load(f)
                data['timings'].append((k, i))
                with open(path, 'w') as f:
                    json.dump(data, f)

    threads = [threading.Thread(target=add, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(path) as f:
        assert len(json.load(f)['timings']) == 100


def stub_lane(tmp_path, owner, plan, done=(), stages=('synth', 'quant', 'eval')):
    """A Benchmark reduced to what a lane's scheduling reads: plan, stages, claims, unit status."""
    from benchmarks.table.driver import Benchmark
    bench = Benchmark.__new__(Benchmark)
    bench.plan, bench.stages, bench.only = plan, list(stages), []
    bench.evals = {u.key: u for u in plan if u.kind == 'eval'}
    bench.claims = UnitClaims(str(tmp_path), owner)
    bench.status = lambda unit, deps=True: 'done' if unit.name in done else 'todo'
    return bench


def test_a_lane_waits_for_a_dependency_still_to_come(tmp_path):
    """Lane 1 must not take the eval of a quant unit that waits for a set lane 0 is making: taken
    early, the eval would be skipped as blocked and never run (seen once in CI)."""
    synth = Unit('synth', 'vit', set_name='noise')
    quant = Unit('quant', 'vit', row='noise_ptq', bits='w3a3', seed=0, deps=[synth])
    evaluation = Unit('eval', 'vit', row='noise_ptq', bits='w3a3', seed=0, deps=[quant])
    plan = [synth, quant, evaluation]
    lane0, lane1 = stub_lane(tmp_path, 'lane 0/2', plan), stub_lane(tmp_path, 'lane 1/2', plan)
    assert lane0._lane_state(synth) == 'run'
    assert [lane1._lane_state(u) for u in plan] == ['wait', 'wait', 'wait']
    lane0.claims.finish(synth, 'ran')
    made = stub_lane(tmp_path, 'lane 1/2', plan, done={synth.name})
    assert made._lane_state(quant) == 'run'
    assert made.claims.running_elsewhere(evaluation) is False  # the eval comes with its quant unit
    assert stub_lane(tmp_path, 'lane 0/2', plan, done={synth.name})._lane_state(evaluation) == 'wait'
    made.claims.finish(quant, 'failed')  # an ended dependency does not hold its dependents
    assert made._lane_state(evaluation) == 'run'
    only_eval = stub_lane(tmp_path / 'other', 'lane 0/2', plan, stages=('eval',))
    assert only_eval._lane_state(evaluation) == 'run'  # a dependency no lane will make: run (and be blocked)
