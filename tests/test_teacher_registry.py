"""The fixed benchmark teachers of the dense table: trained outside the driver (tools/train.py on
their configs), registered by config, read from the teachers folder when the registered file is
there, else from the scale's path and compared with the registered metric."""
import pytest

from benchmarks.table import Recipe  # first: the table package imports the registry module
from benchmarks import teachers  # noqa: I100

REGISTERED, OTHER = 'a' * 64, 'b' * 64


def _dense_entry(recipe, config):
    settings = teachers.outside_settings(recipe, config)
    return dict(file='dense_maskrcnn.pth', sha256=REGISTERED, settings=settings,
                settings_hash=teachers.fingerprint(settings), metric=dict(name='coco/bbox_mAP', value=0.305),
                trained_by='python tools/train.py configs/dense_bench/mask-rcnn_swin-e48-w4_fpn64_digits.py')


def test_a_teacher_trained_outside_the_driver_is_read_from_its_registered_file(tmp_path):
    recipe = Recipe('configs/dense_bench/benchmark.py', 'cpu-2core', {})
    spec = recipe.teachers(['maskrcnn'])
    registry = dict(dense_maskrcnn=_dense_entry(recipe, spec['maskrcnn']['config']))
    spec['maskrcnn']['checkpoint'] = str(tmp_path / 'absent' / 'iter_1800.pth')
    with pytest.raises(FileNotFoundError, match='tools/train.py configs/dense_bench/mask-rcnn'):
        teachers.use_registered(recipe, spec, str(tmp_path), lambda p: REGISTERED, log=print, registry=registry)

    (tmp_path / 'dense_maskrcnn.pth').write_bytes(b'registered')
    lines = []
    assert teachers.use_registered(recipe, spec, str(tmp_path), lambda p: REGISTERED, log=lines.append,
                                   registry=registry) == {}
    assert spec['maskrcnn']['checkpoint'] == str(tmp_path / 'dense_maskrcnn.pth')
    assert "the registered teacher 'dense_maskrcnn'" in lines[0]


def test_a_teacher_retrained_outside_the_driver_is_compared_with_the_registered_one(tmp_path):
    recipe = Recipe('configs/dense_bench/benchmark.py', 'cpu-2core', {})
    spec = recipe.teachers(['maskrcnn'])
    registry = dict(dense_maskrcnn=_dense_entry(recipe, spec['maskrcnn']['config']))
    own = tmp_path / 'iter_1800.pth'
    own.write_bytes(b'trained again')
    spec['maskrcnn']['checkpoint'] = str(own)
    lines = []
    compare = teachers.use_registered(recipe, spec, str(tmp_path), lambda p: OTHER, log=lines.append,
                                      registry=registry)
    assert set(compare) == {'maskrcnn'} and spec['maskrcnn']['checkpoint'] == str(own)
    assert 'not found' in lines[0] and 'comparing' in lines[0]
    results = dict(teachers=dict(maskrcnn=dict(metrics={'coco/bbox_mAP': 0.311})))
    assert teachers.distance_lines(compare, results) == [
        "teacher maskrcnn: coco/bbox_mAP 0.311 here against 0.305 for the registered 'dense_maskrcnn' (+0.006)"]

    # the same file as the registered one, at the scale's path: used as it is, nothing to compare
    assert teachers.use_registered(recipe, spec, str(tmp_path), lambda p: REGISTERED, log=lines.append,
                                   registry=registry) == {}
    # a teacher of another config is not matched by this entry
    other = recipe.teachers(['upernet_swin_fg'])
    other['upernet_swin_fg']['checkpoint'] = str(own)
    assert teachers.use_registered(recipe, other, str(tmp_path), lambda p: OTHER, log=lines.append,
                                   registry=registry) == {}
