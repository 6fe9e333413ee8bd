"""tools/benchmark/cifar10_table.py end to end on a tiny generated ImageFolder (no CIFAR data):
teacher training on the train split, synthetic sets, Gaussian-noise PTQ and MimiQ at W3/A3, test
top-1, the markdown + JSON report, skipping finished stages on a second invocation, evaluation
from a saved student, the time budget, and moving the state with --pack / --restore."""
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

pytest.importorskip('mmpretrain')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DRIVER = osp.join(ROOT, 'tools', 'benchmark', 'cifar10_table.py')
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 220, 50)]  # one per class
TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 3
METHODS = ['noise_ptq', 'mimiq']
ROW_LABELS = {'noise_ptq': 'Gaussian-noise PTQ', 'mimiq': 'IHC + KL + HAD (MimiQ)'}


def make_image_folder(root, seed=0):
    """<root>/{train,test}/class<c>/<i>.jpg: 32x32 noisy images of a class-dependent colour."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', TRAIN_PER_CLASS), ('test', TEST_PER_CLASS)):
        for c, colour in enumerate(COLOURS):
            folder = osp.join(root, split, f'class{c}')
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                img = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (32, 32, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(osp.join(folder, f'{i}.jpg'))
    return str(root)


def run_driver(args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='2', PYTHONUNBUFFERED='1')
    proc = subprocess.run([sys.executable, DRIVER, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    proc.log = proc.stdout + proc.stderr
    return proc


def load(work):
    with open(osp.join(work, 'results.json')) as f:
        data = json.load(f)
    with open(osp.join(work, 'results.md')) as f:
        return data, f.read()


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench')
    data = make_image_folder(root / 'data')
    work = str(root / 'work')
    args = ['--data-root', data, '--work-dir', work, '--scale', 'smoke', '--teachers', 'vit', '--methods', *METHODS,
            '--bits', 'w3a3', '--seeds', '0']
    first = run_driver(args)
    assert first.returncode == 0, first.log[-4000:]
    return dict(root=root, data=data, work=work, args=args, first=first)


def test_first_run_writes_every_requested_row(bench):
    data, md = load(bench['work'])
    assert data['scale'] == 'smoke' and '`smoke`' in md
    assert data['measured'] and data['complete'] and data['missing'] == []
    # markdown: the FP row and one row per requested method, with a numeric W3/A3 top-1
    assert '| Method | W3/A3 |' in md
    for label in ['FP teacher'] + [ROW_LABELS[m] for m in METHODS]:
        match = re.search(rf'^\| {re.escape(label)} \| (\d+\.\d+)', md, re.M)
        assert match, f'row {label!r} missing or not numeric in:\n{md}'
        assert 0.0 <= float(match.group(1)) <= 100.0
    # JSON: every figure, seeds, wall times, device and command line
    fp = data['teachers']['vit']
    assert 0.0 <= fp['top1'] <= 100.0 and fp['epochs_trained'] == 2
    for method in METHODS:
        cell = data['summary']['vit'][method]['w3a3']
        assert cell['n'] == 1 and cell['seeds'] == [0] and 0.0 <= cell['mean'] <= 100.0
    assert sorted(r['method'] for r in data['results']) == sorted(METHODS)
    for rec in data['results']:
        assert rec['bits'] == 'w3a3' and rec['w_bits'] == 3 and rec['a_bits'] == 3 and rec['seed'] == 0
        assert rec['test_images'] == 4 * TEST_PER_CLASS
        assert rec['quant_seconds'] > 0 and rec['device']['device'] in ('cpu', 'cuda')
        assert 'cifar10_table.py' in rec['invocation']
    by_method = {r['method']: r for r in data['results']}
    assert by_method['noise_ptq']['finetune'] is False and by_method['noise_ptq']['iters'] == 0
    assert by_method['mimiq']['had'] is True and by_method['mimiq']['synthetic_set']['method'] == 'mimiq'
    assert set(data['synthetic_sets']) == {'vit/synth/noise', 'vit/synth/mimiq'}
    assert data['invocations'][0]['command'].startswith('python tools/benchmark/cifar10_table.py')
    assert any(k.startswith('quant/vit/mimiq') for k in data['timings'])
    assert {c['check'] for c in data['checks']} >= {'MimiQ within 5 points of real-data FT'}


def test_teacher_sees_the_train_split_only_and_quantization_no_train_image(bench):
    work = bench['work']
    with open(osp.join(work, 'vit', 'teacher', 'stage.json')) as f:
        teacher = json.load(f)
    assert teacher['train_images'] == 4 * TRAIN_PER_CLASS and teacher['num_classes'] == 4
    for method in METHODS:  # the data-free runs train on their synthetic set
        text = open(osp.join(work, 'vit', 'runs', f'{method}_w3a3_s0', 'config.py')).read()
        assert "data_source='synthetic'" in text
    with open(osp.join(work, 'vit', 'synthetic', 'mimiq', 'manifest.json')) as f:
        manifest = json.load(f)
    assert manifest['num_images'] == 8 and 'ihc' in manifest['batches']['0']['losses']


def test_second_invocation_skips_finished_stages(bench):
    work = bench['work']
    watched = [osp.join(work, 'vit', 'teacher', 'teacher.pth'),
               osp.join(work, 'vit', 'synthetic', 'mimiq', 'manifest.json')]
    watched += glob.glob(osp.join(work, 'vit', 'runs', '*', '*.json'))
    before = {p: os.stat(p).st_mtime_ns for p in watched}
    second = run_driver(bench['args'])
    assert second.returncode == 0, second.log[-4000:]
    for name in ['teacher vit/teacher', 'eval vit/teacher', 'synth vit/synth/mimiq', 'quant vit/mimiq/w3a3/s0',
                 'eval vit/noise_ptq/w3a3/s0']:
        assert f'skipped {name}: done' in second.log
    assert 'ran 0,' in second.log and 'running ' not in second.log
    assert {p: os.stat(p).st_mtime_ns for p in watched} == before
    data, _ = load(work)
    assert len(data['invocations']) == 2


def test_eval_stage_reloads_the_saved_student(bench):
    path = osp.join(bench['work'], 'vit', 'runs', 'mimiq_w3a3_s0', 'eval.json')
    with open(path) as f:
        first = json.load(f)['top1']
    os.remove(path)
    proc = run_driver(bench['args'] + ['--stages', 'eval', 'report'])
    assert proc.returncode == 0, proc.log[-4000:]
    assert 'running eval vit/mimiq/w3a3/s0' in proc.log and 'skipped quant' not in proc.log
    with open(path) as f:
        assert json.load(f)['top1'] == pytest.approx(first, abs=1e-4)


def test_time_budget_defers_units(bench):
    proc = run_driver(bench['args'][:-4] + ['--bits', 'w2a4', '--seeds', '0', '--time-budget', '1', '--reserve', '0'])
    assert proc.returncode == 0, proc.log[-4000:]
    assert 'deferred quant vit/noise_ptq/w2a4/s0' in proc.log
    data, md = load(bench['work'])
    assert not data['complete'] and 'vit/mimiq/w2a4/s0' in data['missing']
    assert 'incomplete' in md


def test_pack_and_restore_move_the_state(bench, tmp_path):
    out = tmp_path / 'out'
    proc = run_driver(bench['args'] + ['--stages', 'report', '--pack', out])
    assert proc.returncode == 0, proc.log[-4000:]
    parts = sorted(glob.glob(str(out / 'bench-state.tar.gz.part*')))
    assert parts and osp.isfile(out / 'results.md') and osp.isfile(out / 'results.json')
    restored = str(tmp_path / 'restored')
    proc = run_driver(['--work-dir', restored, '--scale', 'smoke', '--teachers', 'vit', '--methods', *METHODS,
                       '--bits', 'w3a3', '--seeds', '0', '--restore', out])
    assert proc.returncode == 0, proc.log[-4000:]
    # every unit is done; the synthetic sets stayed behind (nothing needs them) and are not remade
    assert 'ran 0,' in proc.log and 'running ' not in proc.log
    assert 'skipped synth vit/synth/mimiq: every unit that uses this set is done' in proc.log
    original, _ = load(bench['work'])
    copy, md = load(restored)
    assert copy['summary'] == original['summary']
    assert copy['teachers']['vit']['top1'] == original['teachers']['vit']['top1']
    assert ROW_LABELS['mimiq'] in md
    checkpoints = [osp.relpath(p, restored) for p in glob.glob(osp.join(restored, '**', '*.pth'), recursive=True)]
    assert checkpoints == [osp.join('vit', 'teacher', 'teacher.pth')]  # no student or resume checkpoints


def test_bad_input_fails_clearly(bench):
    proc = run_driver(['--scale', 'nope', '--work-dir', bench['work']])
    assert proc.returncode != 0 and 'unknown --scale' in proc.log
    proc = run_driver(['--scale', 'gpu-30min', '--work-dir', bench['work'], '--dry-run'])
    assert proc.returncode != 0 and "holds a benchmark at scale 'smoke'" in proc.log
    proc = run_driver(['--scale', 'smoke', '--work-dir', bench['work'], '--methods', 'dream', '--dry-run'])
    assert proc.returncode != 0 and 'unknown methods' in proc.log


def test_teacher_schedule_shrinks_to_its_time_cap(bench, tmp_path):
    work = str(tmp_path / 'capped')
    proc = run_driver(['--data-root', bench['data'], '--work-dir', work, '--scale', 'smoke', '--methods', 'noise_ptq',
                       '--stages', 'teacher', '--teacher-epochs', 200, '--teacher-seconds', 3])
    assert proc.returncode == 0, proc.log[-4000:]
    assert 'shortening the schedule' in proc.log
    with open(osp.join(work, 'vit', 'teacher', 'stage.json')) as f:
        rec = json.load(f)
    assert rec['shrunk_to_fit'] and rec['epochs_requested'] == 200 and 1 <= rec['epochs_trained'] < 200
    assert osp.isfile(osp.join(work, 'vit', 'teacher', 'teacher.pth'))
    assert not glob.glob(osp.join(work, 'vit', 'teacher', 'epoch_*.pth'))  # resume checkpoints removed


def _load_driver():
    spec = importlib.util.spec_from_file_location('cifar10_table_driver', DRIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCHMARK_CONFIG = osp.join(ROOT, 'configs', 'cifar10', 'benchmark.py')


@pytest.mark.parametrize('scale', list(Config.fromfile(BENCHMARK_CONFIG)['scales']))
def test_every_scale_preset_names_buildable_teachers_and_their_labels(tmp_path, scale):
    """Each preset's teachers resolve to configs that load, with an input size the patch divides,
    and the label the report prints is the preset's own when it shrinks a teacher."""
    recipe = Config.fromfile(BENCHMARK_CONFIG)
    preset = recipe['scales'][scale]
    driver = _load_driver()
    args = driver.parse_args(['--scale', scale, '--work-dir', str(tmp_path / 'work'), '--teachers', 'vit', 'swin'])
    bench = driver.Benchmark(args, [])
    assert sorted(bench.teachers) == ['swin', 'vit']
    for name, spec in bench.teachers.items():
        expected = preset.get('teacher_labels', {}).get(name) or recipe['teachers'][name]['label']
        assert spec['label'] == expected
        model = Config.fromfile(osp.join(ROOT, spec['config'])).model
        assert model.img_size % model.patch_size == 0
        heads = model.num_heads if isinstance(model.num_heads, int) else min(model.num_heads)
        assert heads >= 2
        if name == 'vit' and scale != 'smoke':
            assert model.num_heads == 6  # the head count the benchmark's head-wise losses are studied at
