"""The benchmark table driver (benchmarks.table, python -m benchmarks.cifar10_table) end to
end on a tiny generated ImageFolder (no CIFAR data): teacher training on the train split,
synthetic sets, Gaussian-noise PTQ and MimiQ at W3/A3, test top-1 equal to what the saved student
computes, the report, skipping finished units, evaluation from a saved student, the time budget,
the teacher time guard, and moving the state with --pack / --restore."""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('mmpretrain')
pytestmark = pytest.mark.slow

from benchmarks.table import Recipe, main  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DRIVER = ['-m', 'benchmarks.cifar10_table']
RECIPE = osp.join(ROOT, 'configs', 'cifar10', 'benchmark.py')
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 220, 50)]  # one per class
TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 3
ROWS = ['noise_ptq', 'mimiq']
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


def drive(args, capsys):
    """The driver in this process; returns (exit code, everything it printed)."""
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def load(work):
    with open(osp.join(work, 'results.json')) as f:
        data = json.load(f)
    with open(osp.join(work, 'results.md')) as f:
        return data, f.read()


SMOKE = ['--scale', 'smoke', '--teachers', 'vit', '--rows', *ROWS, '--bits', 'w3a3', '--seeds', '0']


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench')
    data = make_image_folder(root / 'data')
    work = str(root / 'work')
    args = ['--data-root', data, '--work-dir', work, *SMOKE]
    rc = main(args)
    assert rc == 0
    return dict(root=root, data=data, work=work, args=args)


def test_first_run_writes_every_requested_row(bench):
    data, md = load(bench['work'])
    assert data['scale'] == 'smoke' and '`smoke`' in md
    assert data['complete'] and data['missing'] == []
    assert '| row | W3/A3 |' in md
    for label in ['FP teacher'] + [ROW_LABELS[r] for r in ROWS]:
        assert re.search(rf'^\| {re.escape(label)} \| \d+\.\d+', md, re.M), f'row {label!r} missing in:\n{md}'
    assert sorted(r['row'] for r in data['results']) == sorted(ROWS)
    for rec in data['results']:
        assert rec['bits'] == 'w3a3' and rec['seed'] == 0 and rec['test_images'] == 4 * TEST_PER_CLASS
        assert 'benchmarks.cifar10_table' in rec['command']
    assert set(data['synthetic_sets']) == {'vit/synth/noise', 'vit/synth/mimiq'}
    assert data['invocations'][0]['command'].startswith('python -m benchmarks.cifar10_table')
    record = data['provenance']  # the code, the CPU kind and the libraries the figures came from
    assert record['command'].startswith('python -m benchmarks.cifar10_table') and record['commit']
    assert {'model', 'avx2', 'avx512', 'vnni', 'amx'} <= set(record['cpu']) and record['versions']['torch']
    # a table can mix invocations: each one, and each unit it ran, names the commit that ran it
    assert data['invocations'][0]['commit'] == record['commit'] and f"commit {record['commit']}" in md
    assert {rec['commit'] for rec in data['results']} == {record['commit']}
    assert any(k.startswith('quant/vit/mimiq') for k in data['timings'])
    checks = {c['check']: c for c in data['checks'] if c['bits'] == 'w3a3'}
    mimiq, noise = (data['summary']['vit'][r]['w3a3']['accuracy/top1']['mean'] for r in ('mimiq', 'noise_ptq'))
    margin = checks['IHC + KL + HAD (MimiQ) at least 15 above Gaussian-noise PTQ']
    assert margin['status'] == ('pass' if mimiq - noise >= 15 else 'FAIL')


def test_recorded_top1_is_what_the_saved_student_computes(bench):
    """The eval record's figure, recomputed outside the driver from the exported student."""
    from mimiq_mm.apis import init_model
    folder = osp.join(bench['work'], 'vit', 'runs', 'mimiq_w3a3_s0')
    with open(osp.join(folder, 'eval.json')) as f:
        recorded = json.load(f)['metrics']['accuracy/top1']
    student = init_model(osp.join(folder, 'config.py'), osp.join(folder, 'student_w3a3.pth'), part='student')
    pre = student.data_preprocessor
    correct = total = 0
    for c in range(len(COLOURS)):
        for path in sorted(glob.glob(osp.join(bench['data'], 'test', f'class{c}', '*.jpg'))):
            pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float()
            x = (pixels - pre.mean) / pre.std
            with torch.no_grad():
                correct += int(student(x, mode='tensor').argmax(-1).item() == c)
            total += 1
    assert recorded == pytest.approx(100.0 * correct / total, abs=1e-3)


def test_data_free_rows_train_on_their_synthetic_set(bench):
    work = bench['work']
    for row in ROWS:
        text = open(osp.join(work, 'vit', 'runs', f'{row}_w3a3_s0', 'config.py')).read()
        assert "data_source='synthetic'" in text and 'synthetic/' in text
    with open(osp.join(work, 'vit', 'synthetic', 'mimiq', 'manifest.json')) as f:
        manifest = json.load(f)
    assert manifest['num_images'] == 8 and 'ihc' in manifest['batches']['0']['losses']


def test_second_invocation_skips_finished_units(bench, capsys):
    work = bench['work']
    watched = [osp.join(work, 'vit', 'teacher', 'teacher.pth'), osp.join(work, 'vit', 'synthetic', 'mimiq',
                                                                           'manifest.json')]
    watched += glob.glob(osp.join(work, 'vit', 'runs', '*', '*.json'))
    before = {p: os.stat(p).st_mtime_ns for p in watched}
    rc, log = drive(bench['args'], capsys)
    assert rc == 0, log[-4000:]
    for name in ['teacher vit/teacher', 'eval vit/teacher', 'synth vit/synth/mimiq', 'quant vit/mimiq/w3a3/s0',
                 'eval vit/noise_ptq/w3a3/s0']:
        assert f'skipped {name}: done' in log
    assert 'ran 0,' in log and 'running ' not in log
    assert {p: os.stat(p).st_mtime_ns for p in watched} == before
    assert len(load(work)[0]['invocations']) >= 2


def test_eval_stage_reloads_the_saved_student(bench, capsys):
    path = osp.join(bench['work'], 'vit', 'runs', 'mimiq_w3a3_s0', 'eval.json')
    with open(path) as f:
        first = json.load(f)['metrics']['accuracy/top1']
    os.remove(path)
    rc, log = drive(bench['args'] + ['--stages', 'eval', 'report'], capsys)
    assert rc == 0, log[-4000:]
    assert 'running eval vit/mimiq/w3a3/s0' in log and 'running quant' not in log
    with open(path) as f:
        assert json.load(f)['metrics']['accuracy/top1'] == pytest.approx(first, abs=1e-4)


def test_time_budget_defers_units(bench, capsys):
    args = [a for a in bench['args']]
    args[args.index('w3a3')] = 'w2a4'
    rc, log = drive(args + ['--time-budget', '0.001', '--reserve', '0'], capsys)
    assert rc == 0, log[-4000:]
    assert 'skipped quant vit/noise_ptq/w2a4/s0: deferred' in log
    data, md = load(bench['work'])
    assert not data['complete'] and 'vit/mimiq/w2a4/s0' in data['missing'] and 'incomplete' in md


def test_pack_and_restore_move_the_state(bench, tmp_path, capsys):
    out = tmp_path / 'out'
    rc, log = drive(bench['args'] + ['--stages', 'report', '--pack', out], capsys)
    assert rc == 0, log[-4000:]
    assert glob.glob(str(out / 'bench-state.tar.gz.part*'))
    assert osp.isfile(out / 'results.md') and osp.isfile(out / 'results.json')
    restored = str(tmp_path / 'restored')
    rc, log = drive(['--work-dir', restored, *SMOKE, '--restore', out], capsys)
    assert rc == 0, log[-4000:]
    # every unit is done; the synthetic sets stayed behind (nothing needs them) and are not remade
    assert 'ran 0,' in log and 'running ' not in log
    assert 'skipped synth vit/synth/mimiq: every unit that uses this set is done' in log
    assert load(restored)[0]['summary'] == load(bench['work'])[0]['summary']
    checkpoints = [osp.relpath(p, restored) for p in glob.glob(osp.join(restored, '**', '*.pth'), recursive=True)]
    assert checkpoints == [osp.join('vit', 'teacher', 'teacher.pth')]  # no student or resume checkpoints


def test_bad_input_fails_with_one_line(bench, capsys):
    rc, log = drive(['--scale', 'nope', '--work-dir', bench['work']], capsys)
    assert rc == 2 and "unknown scale 'nope'" in log
    rc, log = drive(['--scale', 'gpu-30min', '--work-dir', bench['work'], '--dry-run'], capsys)
    assert rc == 2 and "holds a benchmark at scale 'smoke'" in log
    rc, log = drive(['--scale', 'smoke', '--work-dir', bench['work'], '--rows', 'dream', '--dry-run'], capsys)
    assert rc == 2 and "unknown rows ['dream']" in log


def test_teacher_time_guard_cuts_loudly(bench, tmp_path, capsys):
    """The schedule is the scale's; the cap only stops a teacher that runs over, and says so."""
    work = str(tmp_path / 'capped')
    rc, log = drive(['--data-root', bench['data'], '--work-dir', work, '--scale', 'smoke', '--rows', 'noise_ptq',
                     '--stages', 'teacher', '--teacher-epochs', 200, '--teacher-seconds', 0.001], capsys)
    assert rc == 0, log[-4000:]
    assert 'TEACHER TRAINING CUT' in log
    with open(osp.join(work, 'vit', 'teacher', 'stage.json')) as f:
        rec = json.load(f)
    assert rec['cut'] and rec['epochs'] == 200 and rec['epochs_trained'] == 1
    assert osp.isfile(osp.join(work, 'vit', 'teacher', 'teacher.pth'))
    assert not glob.glob(osp.join(work, 'vit', 'teacher', 'epoch_*.pth'))  # resume checkpoints removed


def test_the_tool_runs_as_a_module(bench):
    proc = subprocess.run([sys.executable, *DRIVER, '--work-dir', bench['work'], *SMOKE, '--dry-run'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r'^done\s+quant vit/mimiq/w3a3/s0', proc.stdout, re.M)


@pytest.mark.parametrize('scale', list(Recipe(RECIPE, 'smoke').raw['scales']))
def test_every_scale_preset_names_buildable_teachers(scale):
    """Each preset's teachers resolve to configs that load, with an input size the patch divides."""
    from mmengine.config import Config
    recipe = Recipe(RECIPE, scale)
    teachers = recipe.teachers(['vit', 'swin'])
    for name, spec in teachers.items():
        expected = recipe.scale.get('teacher_labels', {}).get(name) or recipe.raw['teachers'][name]['label']
        assert spec['label'] == expected
        model = Config.fromfile(osp.join(ROOT, spec['config'])).model
        assert model.img_size % model.patch_size == 0
        assert min([model.num_heads] if isinstance(model.num_heads, int) else model.num_heads) >= 2
        if name == 'vit' and scale != 'smoke':
            assert model.num_heads == 6  # the head count the benchmark's head-wise losses are studied at


def test_selected_sets_and_the_kept_best_student(bench, tmp_path, capsys):
    """A recipe can add sets chosen from another set by the teacher's head similarity (the paper's
    Fig. 3 experiment) and rows that keep the best student on held-out synthetic images."""
    recipe = tmp_path / 'study.py'
    recipe.write_text(f"""_base_ = ['{RECIPE}']
synthetic_sets = dict(top=dict(source='base', order='top', fraction=0.5),
                      bottom=dict(source='base', order='bottom', fraction=0.5))
rows = dict(base_top=dict(label='base, most coherent half', data='top', had=False),
            base_bottom=dict(label='base, least coherent half', data='bottom', had=False),
            base_best=dict(label='base, best on held-out', data='base', had=False, keep_best=True))
scales = dict(smoke=dict(finetune=dict(holdout_images=2, best_interval=2)))
""")
    work = str(tmp_path / 'study')
    rc, log = drive(['--data-root', bench['data'], '--work-dir', work, '--benchmark-config', recipe, *SMOKE[:4],
                     '--rows', 'base_top', 'base_bottom', 'base_best', '--bits', 'w3a3', '--seeds', '0'], capsys)
    assert rc == 0, log[-4000:]
    sets = load(work)[0]['synthetic_sets']
    top, bottom, base = (sets[f'vit/synth/{name}'] for name in ('top', 'bottom', 'base'))
    assert top['num_images'] == bottom['num_images'] == base['num_images'] // 2
    assert top['head_similarity']['min'] >= bottom['head_similarity']['max']
    assert top['head_similarity']['mean'] > base['head_similarity']['mean'] > bottom['head_similarity']['mean']
    assert 'BestStudentHook: kept the student of iteration' in log
    config = open(osp.join(work, 'vit', 'runs', 'base_best_w3a3_s0', 'config.py')).read()
    assert 'holdout_images=2' in config and 'BestStudentHook' in config


@pytest.fixture(scope='module')
def two_seeds(bench, tmp_path_factory):
    """Seeds 0 and 1 in two lanes (--jobs 2), in a work dir of their own."""
    work = str(tmp_path_factory.mktemp('lanes') / 'work')
    rc = main(['--data-root', bench['data'], '--work-dir', work, *SMOKE[:-1], '0', '1', '--jobs', '2'])
    assert rc == 0
    return work


def test_two_lanes_run_every_unit_once(two_seeds):
    """--jobs 2: the teacher in the driver, then two lane processes share the other units; each
    unit runs exactly once, a student is evaluated by the lane that trained it, the report is
    complete, bench.json holds the one invocation and every unit's time, no claim is left."""
    work = two_seeds
    data, _ = load(work)
    assert data['complete'] and len(data['results']) == 2 * len(ROWS)
    driver_log = open(osp.join(work, 'logs', 'driver.log')).read()
    assert re.search(r'\[bench\] running teacher vit/teacher', driver_log)
    ran = re.findall(r'\[bench lane (\d)/2\] running (\w+ \S+)', driver_log)
    names = [name for _, name in ran]
    expected = {f'{kind} vit/{row}/w3a3/s{seed}' for kind in ('quant', 'eval') for row in ROWS for seed in (0, 1)}
    expected |= {f'synth vit/synth/{name}{suffix}' for name in ('noise', 'mimiq') for suffix in ('', '/s1')}
    assert sorted(names) == sorted(expected)  # all of them, none twice
    lane_of = {name: lane for lane, name in ran}
    for rec in data['results']:
        key = f'vit/{rec["row"]}/w3a3/s{rec["seed"]}'
        assert lane_of[f'eval {key}'] == lane_of[f'quant {key}']
        assert f'--lane {lane_of[f"eval {key}"]}/2' in rec['command']
    with open(osp.join(work, 'bench.json')) as f:
        meta = json.load(f)
    assert [c['command'].endswith('--jobs 2') for c in meta['invocations']] == [True]
    assert sum(len(v) for v in meta['timings'].values()) == len(expected) + 2  # + teacher and its eval
    assert not os.listdir(osp.join(work, 'claims'))


def test_each_seed_makes_and_reads_its_own_synthetic_set(two_seeds):
    """A seed varies the synthetic images as well as fine-tuning: seed 1's sets (<set>_s1) hold
    other images, made from another synthesis seed, and seed 1's units read them."""
    from mmengine.config import Config

    from mimiq_mm.datasets import SyntheticImageDataset
    work = two_seeds
    for name in ('noise', 'mimiq'):
        zero, one = (osp.join(work, 'vit', 'synthetic', folder) for folder in (name, f'{name}_s1'))
        seeds = [json.load(open(osp.join(root, 'manifest.json')))['settings']['base_seed'] for root in (zero, one)]
        assert seeds[0] != seeds[1]
        images = [SyntheticImageDataset(root) for root in (zero, one)]
        for dataset in images:
            dataset.load()
        assert images[0].pixels.shape == images[1].pixels.shape
        assert not torch.equal(images[0].pixels, images[1].pixels)
    for row, name in (('noise_ptq', 'noise'), ('mimiq', 'mimiq')):
        for seed, folder in ((0, name), (1, f'{name}_s1')):
            config = Config.fromfile(osp.join(work, 'vit', 'runs', f'{row}_w3a3_s{seed}', 'config.py'))
            assert config.train_cfg.synthetic_set == osp.join(work, 'vit', 'synthetic', folder)
    data, md = load(work)
    sets = data['synthetic_sets']
    assert set(sets) == {'vit/synth/noise', 'vit/synth/mimiq', 'vit/synth/noise/s1', 'vit/synth/mimiq/s1'}
    assert {(s['set_name'], s['seed']) for s in sets.values()} == {(n, k) for n in ('noise', 'mimiq') for k in (0, 1)}
    assert sets['vit/synth/mimiq/s1']['synthesis_seed'] != sets['vit/synth/mimiq']['synthesis_seed']
    assert data['synthetic_set_per_seed'] and 'one per teacher, set and seed' in md
    assert re.search(r'^\| vit/synth/mimiq \| 1 \| 8 \|', md, re.M), md


def test_a_seed_0_set_of_an_existing_work_dir_stays_done(bench, capsys):
    """Seed 0's sets keep their keys, folders and settings: a work dir of one seed gains seed 1's
    sets and units, and keeps everything it has."""
    rc, log = drive(bench['args'][:-1] + ['0', '1', '--dry-run'], capsys)
    assert rc == 0, log[-4000:]
    for line in ('done     synth vit/synth/mimiq', 'done     quant vit/mimiq/w3a3/s0',
                 'todo     synth vit/synth/mimiq/s1', 'blocked  quant vit/mimiq/w3a3/s1',
                 'blocked  quant vit/noise_ptq/w3a3/s1'):
        assert line in log, log


def test_interrupting_the_driver_stops_its_lanes(bench, tmp_path):
    """SIGINT to the driver alone (kill -INT) reaches its lanes: every process ends, no claim is
    left, and the synthetic set being made keeps its finished batches for the next run."""
    import signal
    import time
    work = str(tmp_path / 'interrupted')
    cmd = [sys.executable, *DRIVER, '--data-root', bench['data'], '--work-dir', work, '--scale', 'smoke', '--teachers',
           'vit', '--rows', 'base', '--bits', 'w3a3', '--seeds', '0', '--synth-images', '16', '--synth-batch', '4',
           '--synth-steps', '400', '--jobs', '2']
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = osp.join(work, 'logs', 'driver.log')
    batches = osp.join(work, 'vit', 'synthetic', 'base', 'manifest.rank0.json')
    for _ in range(600):  # until a lane has finished a synthetic batch
        if osp.isfile(batches) and 'running synth vit/synth/base' in open(log).read():
            break
        assert driver.poll() is None, 'the run ended before it could be interrupted'
        time.sleep(0.5)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) != 0
    lane_logs = glob.glob(osp.join(work, 'logs', 'lane*.log'))
    assert len(lane_logs) == 2
    assert not os.listdir(osp.join(work, 'claims'))
    assert not osp.isfile(osp.join(work, 'vit', 'synthetic', 'base', 'manifest.json'))  # unfinished
    with open(batches) as f:
        assert json.load(f)['batches']  # what was made is kept
    ps = subprocess.run(['pgrep', '-f', f'--work-dir {work}'], capture_output=True, text=True)
    assert ps.stdout.strip() == '', 'a lane outlived its driver'


def test_a_registered_teacher_is_used_instead_of_training_one(bench, tmp_path, capsys, monkeypatch):
    """benchmarks/teachers.json: a teacher trained once, registered with its sha256, is what a later
    run of the same recipe uses (no training); a different file under its name is refused."""
    from benchmarks import teachers
    registry, store = str(tmp_path / 'teachers.json'), str(tmp_path / 'store')
    monkeypatch.setattr(teachers, 'REGISTRY', registry)
    trained = osp.join(bench['work'], 'vit', 'teacher', 'teacher.pth')
    teachers.main(['--teachers-dir', store, 'register', '--benchmark-config', 'configs/cifar10/benchmark.py',
                   '--scale', 'smoke', '--teacher', 'vit', '--checkpoint', trained, '--metric', 'accuracy/top1=12.5',
                   '--trained-by', 'the smoke run'])
    assert teachers.main(['--teachers-dir', store, 'check']) == 0
    work = str(tmp_path / 'second')
    rc, log = drive(['--data-root', bench['data'], '--work-dir', work, '--teachers-dir', store, '--scale', 'smoke',
                     '--teachers', 'vit', '--stages', 'teacher', 'eval', '--only', 'vit/teacher'], capsys)
    assert rc == 0 and "the registered teacher 'cifar10_vit'" in log
    data, _ = load(work)
    assert data['teachers']['vit']['train']['external']  # not trained in this run
    assert not osp.isfile(osp.join(work, 'vit', 'teacher', 'teacher.pth'))

    with open(osp.join(store, 'cifar10_vit.pth'), 'ab') as f:
        f.write(b'other')  # no longer the registered teacher
    assert teachers.main(['--teachers-dir', store, 'check']) == 1
    rc, log = drive(['--data-root', bench['data'], '--work-dir', work, '--teachers-dir', store, '--scale', 'smoke',
                     '--teachers', 'vit', '--dry-run'], capsys)
    assert rc == 2 and 'is not the registered' in log and '--retrain-teachers' in log


def test_a_teacher_trained_again_is_compared_with_the_registered_one(tmp_path):
    from benchmarks import teachers
    recipe = Recipe('configs/cifar10/benchmark.py', 'smoke', {})
    spec = recipe.teachers(['vit'])
    settings = teachers.training_settings(recipe, 'vit', spec['vit']['config'])
    entry = dict(file='vit.pth', sha256='0' * 64, settings=settings, settings_hash=teachers.fingerprint(settings),
                 metric=dict(name='accuracy/top1', value=60.0))
    lines = []
    compare = teachers.use_registered(recipe, spec, str(tmp_path), lambda p: 'x', log=lines.append,
                                      registry=dict(fixed_vit=entry))
    assert spec['vit']['checkpoint'] is None and set(compare) == {'vit'}  # not there: trained here
    assert 'not found' in lines[0]
    assert teachers.distance_lines(compare, dict(teachers=dict(vit=dict(metrics={'accuracy/top1': 61.25})))) == [
        "teacher vit: accuracy/top1 61.25 here against 60.00 for the registered 'fixed_vit' (+1.25)"]
    other = dict(entry, settings_hash='another schedule')
    assert teachers.use_registered(recipe, recipe.teachers(['vit']), str(tmp_path), lambda p: 'x', log=lines.append,
                                   registry=dict(fixed_vit=other)) == {}
