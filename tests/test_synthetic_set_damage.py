"""A damaged synthetic set (mimiq_mm/synthesis/store.py, mimiq_mm/datasets/synthetic.py): a
truncated or missing image or a corrupt manifest is named with the fix when the set is read as
it is, and making or resuming the set makes the batches holding damaged images again."""
import json
import logging
import os
import os.path as osp

import pytest

from mimiq_mm.datasets import SyntheticImageDataset
from mimiq_mm.synthesis import SyntheticSet, load_manifest, prepare_synthetic_set, synthesize_set
from mimiq_mm.synthesis.store import file_sha256

from test_synthesis import settings, synthesizer

SETTINGS = settings(method='base')  # 10 images in batches of 4: images 0-3, 4-7, 8-9


@pytest.fixture
def finished_set(tmp_path):
    root = str(tmp_path / 'set')
    assert synthesize_set(synthesizer('base', steps=1), SyntheticSet(root, SETTINGS), num_classes=4)
    return root


@pytest.fixture
def log_lines():
    """Messages of mmengine's current logger during the test."""
    from mmengine.logging import MMLogger
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield lambda: [r.getMessage() for r in records]
    logger.removeHandler(handler)


def truncate(path, keep=0.5):
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])


def image(root, index):
    return osp.join(root, 'images', f'{index:06d}.png')


def fix_pattern(root):
    return f'python tools/synthesize.py CONFIG --out-dir {root}'.replace('.', r'\.')


def test_a_truncated_image_is_named_with_the_fix(finished_set):
    truncate(image(finished_set, 5))
    with pytest.raises(ValueError, match=r'has 1 damaged image\(s\) \(images/000005\.png: truncated: \d+ bytes, '
                                         r'\d+ written\); fine-tuning does not start on it\. Re-make them .*'
                                         + fix_pattern(finished_set)):
        SyntheticImageDataset(finished_set)


def test_a_missing_image_is_named_with_the_fix(finished_set):
    os.remove(image(finished_set, 2))
    truncate(image(finished_set, 9), keep=0.9)
    with pytest.raises(ValueError, match=r'has 2 damaged image\(s\) \(images/000002\.png: missing; '
                                         r'images/000009\.png: truncated.*' + fix_pattern(finished_set)):
        SyntheticImageDataset(finished_set, num_images=10).load()  # as the loop loads it


def test_a_set_without_checksums_is_checked_for_presence_and_decoding(finished_set):
    """Sets written before sizes and sha256 were recorded: an image must exist and decode."""
    path = osp.join(finished_set, 'manifest.json')
    manifest = json.load(open(path))
    manifest['images'] = [dict(file=im['file'], label=im['label']) for im in manifest['images']]
    json.dump(manifest, open(path, 'w'))
    assert len(SyntheticImageDataset(finished_set)) == 10
    truncate(image(finished_set, 1))
    with pytest.raises(ValueError, match=r'\(images/000001\.png: cannot be decoded \(.*truncated.*\)\)'):
        SyntheticImageDataset(finished_set)


@pytest.mark.parametrize('shards', [True, False])
def test_a_corrupt_manifest_names_the_file_what_is_wrong_and_the_fix(finished_set, shards):
    path = osp.join(finished_set, 'manifest.json')
    truncate(path, keep=0.4)
    if not shards:
        os.remove(osp.join(finished_set, 'manifest.rank0.json'))
    fix = r'rebuild it from the manifest\.rank\*\.json next to it: ' + fix_pattern(finished_set) + \
        r', with the config and teacher that made the set' if shards else \
        r'nothing in .* can rebuild it: delete the folder and make the set again \(tools/synthesize\.py\)'
    with pytest.raises(ValueError, match=path.replace('.', r'\.') + r' is damaged: not valid JSON \(.*line \d+ '
                                         r'column \d+.*\); ' + fix):
        load_manifest(finished_set)
    json.dump(['not', 'a', 'manifest'], open(path, 'w'))
    with pytest.raises(ValueError, match=r'is damaged: a JSON list, not a manifest'):
        SyntheticImageDataset(finished_set)


def test_resuming_rebuilds_a_corrupt_manifest_from_the_shards(finished_set, log_lines):
    path = osp.join(finished_set, 'manifest.json')
    intact = json.load(open(path))
    truncate(path, keep=0.4)
    synth = synthesizer('base', steps=1)
    made = []
    synth.synthesize = lambda targets, seed, **kwargs: made.append(seed)
    assert prepare_synthetic_set(synth, SyntheticSet(finished_set, SETTINGS))
    assert made == [] and json.load(open(path)) == intact and osp.isfile(path + '.damaged')
    assert any(line.startswith(f'{path} is damaged: not valid JSON') and 'written again from manifest.rank*.json'
               in line for line in log_lines())


def test_resuming_remakes_only_the_batches_with_damaged_images(finished_set, log_lines):
    """The loop (prepare_synthetic_set) on a set of its own teacher: batch 1 has a truncated
    image, batch 2 a missing one; they are made again and logged, batch 0 stays as it is."""
    first = image(finished_set, 0)
    untouched = (os.path.getmtime(first), file_sha256(first))
    truncate(image(finished_set, 6))
    os.remove(image(finished_set, 8))
    synth = synthesizer('base', steps=1)
    made = []
    original = synth.synthesize
    synth.synthesize = lambda targets, seed, **kwargs: made.append(seed) or original(targets, seed=seed, **kwargs)
    assert prepare_synthetic_set(synth, SyntheticSet(finished_set, SETTINGS))
    assert made == [SETTINGS['base_seed'] + 1, SETTINGS['base_seed'] + 2]
    damaged = [line for line in log_lines() if 'hold damaged images' in line]
    assert len(damaged) == 1 and 'batch(es) 1, 2 hold damaged images (images/000006.png: truncated' in damaged[0]
    assert 'images/000008.png: missing' in damaged[0] and damaged[0].endswith('they are made again')
    assert (os.path.getmtime(first), file_sha256(first)) == untouched
    manifest = load_manifest(finished_set)
    assert [im['sha256'] for im in manifest['images']] == [file_sha256(image(finished_set, i)) for i in range(10)]
    assert len(SyntheticImageDataset(finished_set)) == 10
    made.clear()
    assert prepare_synthetic_set(synth, SyntheticSet(finished_set, SETTINGS)) and made == []  # finished now


def test_a_set_of_another_teacher_is_not_remade(finished_set):
    """Damaged images are made again only for the teacher that made the set (its settings match)."""
    truncate(image(finished_set, 6))
    with pytest.raises(ValueError, match='other settings'):
        SyntheticSet(finished_set, dict(SETTINGS, teacher_sha256='another teacher')).finished_batches()


@pytest.mark.slow
def test_train_refuses_a_damaged_set_and_synthesize_repairs_it(tmp_path):
    """tools/train.py with train_cfg.synthetic_set: one error naming the image and the fix, no
    fine-tuning; the fix (tools/synthesize.py --out-dir there) makes the batch again, and the
    set trains."""
    from test_classification_e2e import CONFIG, ROOT, data_options, make_image_folder, make_teacher_checkpoint, run_tool
    data = make_image_folder(str(tmp_path / 'data'))
    options = [f'model.teacher_checkpoint={make_teacher_checkpoint(str(tmp_path / "teacher.pth"), steps=5)}',
               *data_options(data)]
    out = tmp_path / 'set'

    def synthesize():
        return run_tool([osp.join(ROOT, 'tools', 'synthesize.py'), CONFIG, '--out-dir', str(out), '--num-images', '4',
                         '--work-dir', str(tmp_path / 'synth'), '--cfg-options', *options])

    def train_on_the_set():
        return run_tool([osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', str(tmp_path / 'reuse'),
                         '--cfg-options', *options, f'train_cfg.synthetic_set={out}', 'train_cfg.max_iters=1'])

    assert synthesize().returncode == 0
    truncate(out / 'images' / '000001.png')
    proc = train_on_the_set()
    assert proc.returncode != 0
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f'error: the synthetic set in {out} has 1 damaged image(s) (images/000001.png: '
                            'truncated') and f'python tools/synthesize.py CONFIG --out-dir {out}' in error
    assert 'Traceback' not in proc.stderr and not list((tmp_path / 'reuse').glob('iter_*.pth'))
    proc = synthesize()
    assert proc.returncode == 0 and 'batch(es) 0 hold damaged images (images/000001.png' in proc.stdout + proc.stderr
    proc = train_on_the_set()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
