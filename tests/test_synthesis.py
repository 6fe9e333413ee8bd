"""Synthesis: every method runs, pixels stay valid, sets resume after interruption, settings are
guarded, non-finite batches are redrawn."""
import json
import os

import pytest
import timm
import torch

import mimiq_mm  # noqa: F401
from mimiq_mm.tasks import ClassifierTask
from mimiq_mm.synthesis import ImageSynthesizer, SyntheticSet, load_manifest, synthesize_set
from mimiq_mm.datasets import SyntheticImageDataset

MEAN, STD = [127.5] * 3, [127.5] * 3


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=16, patch_size=4, embed_dim=24,
                             depth=2, num_heads=3, num_classes=4)


def synthesizer(method='mimiq', steps=3, **kwargs):
    kwargs.setdefault('amp_dtype', None)  # float32: 'auto' may pick bf16 on CPUs that have it
    return ImageSynthesizer(tiny_vit(), ClassifierTask(), (16, 16), MEAN, STD, method=method, steps=steps,
                            log_interval=0, **kwargs)


def test_auto_precision_is_float32_on_a_cpu_without_bf16_units(monkeypatch):
    import mimiq_mm.utils.environment as environment
    monkeypatch.setattr(environment, 'cpu_features', lambda: dict(bf16=False))
    synth = synthesizer(amp_dtype='auto')
    monkeypatch.setattr(synth, 'teacher_gflops', lambda: 100.0)
    synth.synthesize(torch.tensor([0, 1]), seed=0)
    assert synth.amp_dtype is None


@pytest.mark.parametrize('gflops, expected', [(8.5, torch.bfloat16), (0.06, None)])
def test_auto_precision_takes_bf16_for_large_teachers_on_cpus_with_bf16(monkeypatch, gflops, expected):
    """On a CPU with bf16 units, bf16 autocast for a teacher big enough to gain from it (a tiny
    one runs faster in float32); a rule on the teacher, so the same machine makes the same images."""
    import mimiq_mm.utils.environment as environment
    monkeypatch.setattr(environment, 'cpu_features', lambda: dict(bf16=True))
    synth = synthesizer('base', amp_dtype='auto')
    monkeypatch.setattr(synth, 'teacher_gflops', lambda: gflops)
    images, _ = synth.synthesize(torch.tensor([0, 1]), seed=0)
    assert synth.amp_dtype == expected and torch.isfinite(images).all()


def test_teacher_flops_are_counted():
    synth = synthesizer()
    # tiny ViT: 17 tokens x (2 blocks of qkv/proj/mlp on 24 channels) + head: well under a MFLOP
    assert 0 < synth.teacher_gflops() < 1e-3


def test_bf16_synthesis_makes_valid_images_on_cpu():
    synth = synthesizer('mimiq', amp_dtype='bf16')
    images, losses = synth.synthesize(torch.tensor([0, 1, 2, 3]), seed=0)
    low, high = synth.valid_range()
    assert torch.isfinite(images).all() and (images >= low - 1e-6).all() and (images <= high + 1e-6).all()
    assert set(losses) == {'ihc', 'cl', 'tv'} and all(torch.isfinite(torch.tensor(v)) for v in losses.values())


@pytest.mark.parametrize('method', ['mimiq', 'base', 'psaq', 'noise'])
def test_every_method_makes_valid_images(method):
    synth = synthesizer(method)
    images, losses = synth.synthesize(torch.tensor([0, 1, 2, 3]), seed=0)
    low, high = synth.valid_range()
    assert images.shape == (4, 3, 16, 16)
    assert torch.isfinite(images).all()
    assert (images >= low - 1e-6).all() and (images <= high + 1e-6).all()
    expected = {'mimiq': {'ihc', 'cl', 'tv'}, 'base': {'cl', 'tv'}, 'psaq': {'psaq', 'cl', 'tv'}, 'noise': set()}
    assert set(losses) == expected[method]


def test_optimisation_lowers_the_synthesis_loss():
    synth = synthesizer('mimiq', steps=1)
    targets = torch.tensor([0, 1, 2, 3])
    _, first = synth.synthesize(targets, seed=0)
    synth.steps = 40
    _, last = synth.synthesize(targets, seed=0)
    assert sum(last.values()) < sum(first.values())


def test_same_seed_same_images():
    a, _ = synthesizer('base').synthesize(torch.tensor([0, 1]), seed=7)
    b, _ = synthesizer('base').synthesize(torch.tensor([0, 1]), seed=7)
    c, _ = synthesizer('base').synthesize(torch.tensor([0, 1]), seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize('check_interval,failed_steps', [(1, 1), (50, 3)])
def test_non_finite_batch_is_redrawn(check_interval, failed_steps):
    """A batch whose loss turns NaN is found at the next finiteness check (every
    ``check_interval`` steps, and after the last) and made again from a derived seed."""
    synth = synthesizer('base', steps=3, check_interval=check_interval)
    calls = {'n': 0}
    original = synth.loss_terms

    def flaky(*args, **kwargs):
        terms = original(*args, **kwargs)
        calls['n'] += 1
        if calls['n'] == 1:  # the first step of the first attempt goes NaN
            terms['cl'] = terms['cl'] * float('nan')
        return terms

    synth.loss_terms = flaky
    images, _ = synth.synthesize(torch.tensor([0, 1]), seed=0)
    assert torch.isfinite(images).all()
    assert calls['n'] == failed_steps + 3  # the failed attempt up to its check, then a full redraw


def settings(**over):
    return dict(dict(method='mimiq', num_images=10, batch_size=4, base_seed=0, steps=3), **over)


class Interrupt(Exception):
    pass


def test_interrupted_synthesis_resumes_where_it_stopped(tmp_path):
    root = str(tmp_path / 'set')
    synth = synthesizer('mimiq')
    original = synth.synthesize
    done = []

    def stop_after_one(*args, **kwargs):
        if done:
            raise Interrupt()
        done.append(1)
        return original(*args, **kwargs)

    synth.synthesize = stop_after_one
    with pytest.raises(Interrupt):
        synthesize_set(synth, SyntheticSet(root, settings()), num_classes=4)
    first_file = os.path.join(root, 'images', '000000.png')
    mtime = os.path.getmtime(first_file)
    assert not os.path.isfile(os.path.join(root, 'manifest.json'))

    resumed = synthesizer('mimiq')
    made = []
    original_resumed = resumed.synthesize
    resumed.synthesize = lambda *a, **k: made.append(1) or original_resumed(*a, **k)
    assert synthesize_set(resumed, SyntheticSet(root, settings()), num_classes=4)
    manifest = load_manifest(root)
    assert len(made) == 2, 'only the two unfinished batches are made again'
    assert os.path.getmtime(first_file) == mtime
    assert manifest['num_images'] == 10
    files = [im['file'] for im in manifest['images']]
    assert len(set(files)) == 10
    data = SyntheticImageDataset(root)
    assert len(data) == 10 and data[9]['pixels'].shape == (3, 16, 16) and data[9]['pixels'].dtype == torch.uint8
    with open(os.path.join(root, 'manifest.json')) as f:
        saved = json.load(f)
    assert saved['settings']['method'] == 'mimiq' and 'losses' in saved['batches']['0']
    assert sorted(saved['batches']) == ['0', '1', '2']


def test_stop_callback_leaves_a_resumable_set(tmp_path):
    """A time budget (``should_stop``) ends the work between batches; the set is not merged and
    the next call makes only what is missing."""
    root = str(tmp_path / 'set')
    asked = []
    complete = synthesize_set(synthesizer('base'), SyntheticSet(root, settings(method='base')), num_classes=4,
                              should_stop=lambda: asked.append(1) or len(asked) > 1)
    assert not complete and not os.path.isfile(os.path.join(root, 'manifest.json'))
    assert len(SyntheticSet(root, settings(method='base')).finished_batches()) == 1
    assert synthesize_set(synthesizer('base'), SyntheticSet(root, settings(method='base')), num_classes=4)
    assert load_manifest(root)['num_images'] == 10


def test_labels_cover_the_classes_evenly(tmp_path):
    synthetic = SyntheticSet(str(tmp_path), settings(num_images=8))
    labels = torch.cat([synthetic.batch_targets(b, 4) for b in range(2)])
    assert torch.bincount(labels, minlength=4).tolist() == [2, 2, 2, 2]


def test_a_set_made_with_other_settings_is_refused(tmp_path):
    root = str(tmp_path / 'set')
    synthesize_set(synthesizer('base', steps=1), SyntheticSet(root, settings(method='base', num_images=4)), 4)
    with pytest.raises(ValueError, match='other settings'):
        SyntheticSet(root, settings(method='mimiq', num_images=4)).finished_batches()


def test_reading_an_unfinished_set_says_how_to_finish_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='tools/synthesize.py'):
        SyntheticImageDataset(str(tmp_path))


def test_augment_none_switches_augmentation_off():
    """augment=None: the teacher sees the images as they are (the same loss whatever the random
    generators); the default augments (jitter, flip, colour, noise)."""
    images = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([0, 1])
    plain = synthesizer('base', augment=None)
    assert plain.augment is None
    a = plain.loss_terms(images, targets, torch.Generator().manual_seed(0))
    b = plain.loss_terms(images, targets, torch.Generator().manual_seed(1))
    assert torch.equal(a['cl'], b['cl'])
    augmented = synthesizer('base')
    c = augmented.loss_terms(images, targets, torch.Generator().manual_seed(0))
    d = augmented.loss_terms(images, targets, torch.Generator().manual_seed(1))
    assert not torch.equal(c['cl'], d['cl'])
