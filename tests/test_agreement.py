"""Fidelity to the teacher (mimiq_mm/evaluation/agreement.py): a model's label maps written by
SegPredictionWriter and other predictions scored against them by SegAgreementMetric, built from
config through mmengine's Evaluator as mmseg's tools/test.py builds it."""
import os
import os.path as osp
import types

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator

import mimiq_mm  # noqa: F401  (registers the metrics)
from benchmarks.table.stages import UnitRunner

CLASSES = ('background', 'a', 'b')


def sample(name, labels):
    """One data sample as the test loop hands it to a metric: a dict with the predicted map."""
    return dict(img_path=f'/data/images/{name}', pred_sem_seg=dict(data=torch.as_tensor(labels)[None]))


def evaluate(metric_cfg, samples, batch=2):
    evaluator = Evaluator(metric_cfg)
    evaluator.dataset_meta = dict(classes=CLASSES)
    for i in range(0, len(samples), batch):
        evaluator.process(samples[i:i + batch])
    return evaluator.evaluate(len(samples))


@pytest.fixture
def teacher_maps():
    rng = np.random.default_rng(0)
    return {f'img{i}.jpg': rng.integers(0, len(CLASSES), (6, 5)) for i in range(3)}


@pytest.fixture
def reference(tmp_path, teacher_maps):
    out = str(tmp_path / 'teacher' / 'predictions.npz')
    result = evaluate(dict(type='mimiq_mm.SegPredictionWriter', out_file=out),
                      [sample(k, v) for k, v in teacher_maps.items()])
    assert result == {} and osp.isfile(out)
    return out


def test_writer_stores_every_map(reference, teacher_maps):
    with np.load(reference) as stored:
        assert sorted(stored.files) == sorted(teacher_maps)
        for name, labels in teacher_maps.items():
            assert stored[name].dtype == np.uint8
            np.testing.assert_array_equal(stored[name], labels)


def test_teacher_agrees_with_itself(reference, teacher_maps):
    result = evaluate(dict(type='mimiq_mm.SegAgreementMetric', reference=reference),
                      [sample(k, v) for k, v in teacher_maps.items()])
    assert result == {'teacher/aAcc': 100.0, 'teacher/mIoU': 100.0}


def test_agreement_matches_a_confusion_count(reference, teacher_maps):
    """A student that flips some pixels: pixel agreement and per-class IoU counted by hand."""
    rng = np.random.default_rng(1)
    student = {k: np.where(rng.random(v.shape) < 0.3, (v + 1) % len(CLASSES), v) for k, v in teacher_maps.items()}
    result = evaluate(dict(type='mimiq_mm.SegAgreementMetric', reference=reference, prefix='fidelity'),
                      [sample(k, v) for k, v in student.items()])
    t = np.concatenate([v.ravel() for v in teacher_maps.values()])
    s = np.concatenate([student[k].ravel() for k in teacher_maps])
    ious = [((s == c) & (t == c)).sum() / ((s == c) | (t == c)).sum() for c in range(len(CLASSES))]
    assert result['fidelity/aAcc'] == pytest.approx(100 * (s == t).mean(), abs=0.01)
    assert result['fidelity/mIoU'] == pytest.approx(100 * np.mean(ious), abs=0.01)
    assert result['fidelity/mIoU'] < 100.0


def test_agreement_names_the_fix_for_a_missing_or_foreign_reference(tmp_path, reference, teacher_maps):
    missing = dict(type='mimiq_mm.SegAgreementMetric', reference=str(tmp_path / 'none.npz'))
    with pytest.raises(FileNotFoundError, match='SegPredictionWriter'):
        evaluate(missing, [sample('img0.jpg', teacher_maps['img0.jpg'])])
    with pytest.raises(KeyError, match='another test split'):
        evaluate(dict(type='mimiq_mm.SegAgreementMetric', reference=reference),
                 [sample('other.jpg', teacher_maps['img0.jpg'])])
    with pytest.raises(ValueError, match=r'\(3, 5\) here'):
        evaluate(dict(type='mimiq_mm.SegAgreementMetric', reference=reference),
                 [sample('img0.jpg', teacher_maps['img0.jpg'][:3])])


@pytest.mark.parametrize('agreement,evaluator,expected', [
    (True, dict(type='IoUMetric', iou_metrics=['mIoU']), True),
    (True, [dict(type='mmseg.IoUMetric')], True),
    (True, dict(type='CocoMetric', metric=['bbox']), True),
    (True, dict(type='Accuracy'), False),
    (False, dict(type='IoUMetric'), False),
])
def test_driver_scores_agreement_only_for_dense_tasks_it_is_asked_for(agreement, evaluator, expected):
    runner = UnitRunner.__new__(UnitRunner)
    runner.recipe = types.SimpleNamespace(data=dict(teacher_agreement=agreement))
    assert runner.scores_agreement(dict(test_evaluator=evaluator)) is expected


def test_writer_refuses_a_model_without_label_maps(tmp_path):
    boxes = dict(img_path='/data/images/img0.jpg', pred_instances=dict(bboxes=torch.zeros(0, 4)))
    with pytest.raises(ValueError, match='semantic segmentors'):
        evaluate(dict(type='mimiq_mm.SegPredictionWriter', out_file=str(tmp_path / 'maps.npz')), [boxes])


def test_label_maps_tool_draws_and_counts_agreement(tmp_path, reference, teacher_maps, capsys):
    """tools/analysis/label_maps.py: the figure, and each model's pixel agreement with the reference
    over every image of the files (a model equal to the reference agrees on all pixels)."""
    import json

    from PIL import Image

    from mimiq_mm.analysis.cli import run_tool
    from tool_loader import load_tool
    images = tmp_path / 'images'
    images.mkdir()
    for name, labels in teacher_maps.items():
        Image.fromarray(np.full(labels.shape + (3,), 90, np.uint8)).save(images / name)
    flipped = {k: (v + 1) % len(CLASSES) if k == 'img0.jpg' else v for k, v in teacher_maps.items()}
    student = str(tmp_path / 'student.npz')
    evaluate(dict(type='mimiq_mm.SegPredictionWriter', out_file=student), [sample(k, v) for k, v in flipped.items()])
    tool = load_tool('analysis/label_maps')
    tool.main(['--images', str(images), '--reference', f'teacher={reference}', '--maps', f'same={reference}',
               f'student={student}', '--num-images', '2', '--out-dir', str(tmp_path / 'out')])
    report = json.load(open(tmp_path / 'out' / 'label_maps.json'))
    assert report['pixel_agreement_percent']['same'] == 100.0
    assert report['pixel_agreement_percent']['student'] == pytest.approx(100 * 2 / 3)  # one image of three flipped
    assert report['shown'] == ['img0.jpg', 'img1.jpg'] and osp.getsize(report['figure']) > 1000
    assert run_tool(tool.main, ['--images', str(images), '--reference', 'teacher', '--maps', f'x={student}']) == 2
    assert 'NAME=PATH.npz' in capsys.readouterr().err


def test_report_checks_fidelity_against_a_teacher_at_100_and_skips_metrics_the_task_lacks():
    from benchmarks.table.report import run_checks, summarise
    metrics = [dict(key='coco/bbox_mAP', scale=100.0), dict(key='mIoU'), dict(key='teacher/mIoU', fp=100.0)]
    results = [dict(teacher='seg', row=row, bits='w4a4', seed=0, metrics={'mIoU': miou, 'teacher/mIoU': fidelity})
               for row, miou, fidelity in (('noise', 54.0, 87.0), ('mimiq', 57.0, 88.0), ('real', 53.0, 99.5))]
    checks = [dict(type='gap', row='real', ref='fp', at_most=1, bits=['w4a4'], metric='teacher/mIoU'),
              dict(type='gap', row='mimiq', ref='fp', at_most=1, bits=['w4a4'], metric='coco/bbox_mAP'),
              dict(type='order', rows=['real', 'mimiq', 'noise'], bits=['w4a4'], metric='teacher/mIoU'),
              dict(type='order', rows=['real', 'mimiq', 'noise'], bits=['w4a4'], metric='mIoU')]
    out = run_checks(checks, summarise(results, metrics), {'seg': dict(metrics={'mIoU': 57.2})}, metrics, {})
    assert [(c['metric'], c['status']) for c in out] == [('teacher/mIoU', 'pass'), ('teacher/mIoU', 'pass'),
                                                          ('mIoU', 'FAIL')]
    assert out[0]['detail'] == '99.50 vs 100.00, gap 0.50'


def test_teacher_predictions_are_named_after_the_checkpoint(tmp_path):
    """A retrained teacher (another checkpoint in the same place) must not reuse the old maps."""
    runner = UnitRunner.__new__(UnitRunner)
    runner.recipe = types.SimpleNamespace(data=dict(test_split='validation'))
    runner.work = types.SimpleNamespace(teacher_dir=lambda t: str(tmp_path / t))
    checkpoint = tmp_path / 'teacher.pth'
    runner.teachers = dict(seg=dict(checkpoint=str(checkpoint)))
    paths = []
    for content in (b'first', b'second'):
        checkpoint.write_bytes(content)
        os.utime(checkpoint, (len(content), len(content)))  # another mtime: the hash cache sees a new file
        paths.append(runner.teacher_predictions_path('seg', dict(type='IoUMetric')))
    assert paths[0] != paths[1] and all(osp.basename(p).startswith('predictions_validation_') for p in paths)
    assert runner.teacher_predictions_path('seg', [dict(type='mmdet.CocoMetric')]).endswith('.json')


def test_report_leaves_out_checks_of_rows_it_does_not_show():
    from benchmarks.table.report import checks_on_rows
    checks = [dict(type='gap', row='mimiq', ref='fp', at_most=1),
              dict(type='gap', row='mimiq_auto', ref='real_ft', at_most=5),
              dict(type='margin', row='mimiq_auto', over='base', at_least=0),
              dict(type='order', rows=['real_ft', 'mimiq_auto', 'base', 'noise_ptq'])]
    kept = checks_on_rows(checks, ['noise_ptq', 'base', 'mimiq_auto', 'real_ft'])
    assert kept == checks[1:]
    assert checks_on_rows(checks, ['mimiq']) == checks[:1]


def test_dense_recipe_default_table_and_checks_name_known_rows_and_metrics():
    """configs/dense_bench/benchmark.py: the scale's default rows and teachers exist, and every check
    speaks of known rows and metrics (a typo would leave a check silently n/a)."""
    from benchmarks.table.recipe import Recipe
    recipe = Recipe(osp.join(osp.dirname(__file__), '..', 'configs', 'dense_bench', 'benchmark.py'), 'cpu-2core', {})
    scale = recipe.scale
    assert set(scale['rows']) <= set(recipe.rows) and set(scale['teachers']) <= set(scale['teacher_configs'])
    metric_keys = {m['key'] for m in recipe.metrics}
    for check in recipe.checks:
        rows = set(check.get('rows', [])) | {check[k] for k in ('row', 'ref', 'over') if k in check}
        assert rows <= set(recipe.rows) | {'fp'}, check
        assert check.get('metric') is None or check['metric'] in metric_keys, check
        assert set(check['bits']) <= set(recipe.raw['all_bits']), check
