"""Fidelity of a detector to its teacher (mimiq_mm/evaluation/detections.py, fidelity.py): the
teacher's confident detections written as COCO ground truth by DetPredictionWriter, a student
scored against them by mmdet's own CocoMetric."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator

import mimiq_mm  # noqa: F401  (registers the metrics)
from mimiq_mm.evaluation import fidelity_metric, reference_format, reference_writer

CLASSES = ('a', 'b')
DETECTOR_EVALUATOR = dict(type='CocoMetric', metric=['bbox', 'segm'])


def box_mask(box, size=40):
    mask = np.zeros((size, size), bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def sample(img_id, boxes, scores, labels):
    """One data sample as mmdet's test loop hands it to a metric (40x40 image, box-shaped masks)."""
    return dict(img_id=img_id, img_path=f'/data/img{img_id}.jpg', ori_shape=(40, 40),
                pred_instances=dict(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                    scores=torch.tensor(scores, dtype=torch.float32),
                                    labels=torch.tensor(labels, dtype=torch.int64),
                                    masks=torch.from_numpy(np.stack([box_mask(b) for b in boxes]) if boxes
                                                           else np.zeros((0, 40, 40), bool))))


def evaluate(metric_cfg, samples):
    evaluator = Evaluator(metric_cfg)
    evaluator.dataset_meta = dict(classes=CLASSES)
    evaluator.process(samples)
    return evaluator.evaluate(len(samples))


TEACHER = [sample(1, [[2, 2, 20, 20], [22, 5, 38, 30], [0, 0, 5, 5]], [0.9, 0.6, 0.1], [0, 1, 0]),
           sample(2, [[10, 10, 30, 30]], [0.8], [1]),
           sample(3, [], [], [])]


@pytest.fixture
def reference(tmp_path):
    out = str(tmp_path / 'teacher.json')
    assert evaluate(reference_writer(DETECTOR_EVALUATOR, out), TEACHER) == {}
    return out


def test_writer_keeps_confident_detections_as_coco_ground_truth(reference):
    coco = json.load(open(reference))
    assert [image['id'] for image in coco['images']] == [1, 2, 3]  # an image without detections stays listed
    assert [c['name'] for c in coco['categories']] == list(CLASSES)
    kept = [(a['image_id'], a['category_id'], a['bbox'], a['area']) for a in coco['annotations']]
    assert kept == [(1, 1, [2, 2, 18, 18], 18 * 18), (1, 2, [22, 5, 16, 25], 16 * 25), (2, 2, [10, 10, 20, 20], 400)]


def test_teacher_scores_100_against_itself_and_a_shifted_student_less(reference):
    metric = fidelity_metric(DETECTOR_EVALUATOR, reference)
    same = evaluate(metric, TEACHER)
    assert same['teacher/bbox_mAP'] == 1.0 and same['teacher/segm_mAP'] == 1.0
    # the second image's box moved by 6 px (IoU 0.54): a match at IoU 0.5 only; another class on the first
    student = [sample(1, [[2, 2, 20, 20], [22, 5, 38, 30]], [0.9, 0.6], [0, 0]),
               sample(2, [[16, 10, 36, 30]], [0.8], [1]), sample(3, [], [], [])]
    moved = evaluate(metric, student)
    assert 0 < moved['teacher/bbox_mAP'] < 1 and moved['teacher/bbox_mAP_50'] < 1
    assert moved['teacher/segm_mAP'] == pytest.approx(moved['teacher/bbox_mAP'], abs=0.02)  # box-shaped masks


def test_fidelity_configs_follow_the_task_evaluator():
    assert reference_format(dict(type='mmseg.IoUMetric')) == 'label_maps'
    assert reference_format([dict(type='CocoMetric'), dict(type='DumpResults')]) == 'detections'
    assert reference_format(dict(type='Accuracy')) is None
    assert fidelity_metric(dict(type='CocoMetric', metric='bbox'), 'r.json')['metric'] == 'bbox'
    assert reference_writer(dict(type='IoUMetric'), 'm.npz')['type'] == 'mimiq_mm.SegPredictionWriter'
    with pytest.raises(ValueError, match='name a .json file'):
        reference_writer(DETECTOR_EVALUATOR, 'maps.npz')
    with pytest.raises(ValueError, match='IoUMetric or a detector scored by'):
        fidelity_metric(dict(type='Accuracy'), 'r.json')


def test_writer_refuses_a_segmentor_and_a_bad_threshold(tmp_path):
    with pytest.raises(ValueError, match='detectors'):
        evaluate(dict(type='mimiq_mm.DetPredictionWriter', out_file=str(tmp_path / 'd.json')),
                 [dict(img_id=0, ori_shape=(4, 4), pred_sem_seg=dict(data=torch.zeros(1, 4, 4)))])
    with pytest.raises(ValueError, match='score_thr'):
        evaluate(dict(type='mimiq_mm.DetPredictionWriter', out_file='d.json', score_thr=1.5), [])


def test_detections_tool_matches_boxes_to_the_reference_and_draws_them(tmp_path, reference, capsys):
    """tools/analysis/detections.py: a box matches a reference box of its class at IoU >= 0.5; recall and
    precision over every image; the figure."""
    from PIL import Image

    from mimiq_mm.analysis.cli import run_tool
    from mimiq_mm.analysis.detections import load_detections, match_detections
    from tool_loader import load_tool
    images = tmp_path / 'images'
    images.mkdir()
    for i in (1, 2, 3):
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(images / f'img{i}.jpg')
    student = str(tmp_path / 'student.json')
    # image 1: one box kept, one with another class; image 2: a box 10 px off (IoU 1/3) and an extra one
    evaluate(reference_writer(DETECTOR_EVALUATOR, student),
             [sample(1, [[2, 2, 20, 20], [22, 5, 38, 30]], [0.9, 0.8], [0, 0]),
              sample(2, [[20, 10, 40, 30], [0, 0, 8, 8]], [0.8, 0.7], [1, 1]), sample(3, [], [], [])])
    ours, theirs = load_detections(student), load_detections(reference)
    assert list(match_detections(ours['img1.jpg'], theirs['img1.jpg'])) == [0, -1]
    assert list(match_detections(ours['img2.jpg'], theirs['img2.jpg'])) == [-1, -1]
    tool = load_tool('analysis/detections')
    tool.main(['--images', str(images), '--reference', f'teacher={reference}', '--detections', f'same={reference}',
               f'student={student}', '--num-images', '2', '--out-dir', str(tmp_path / 'out')])
    report = json.load(open(tmp_path / 'out' / 'detections.json'))
    assert report['agreement']['same'] == dict(recall=100.0, precision=100.0, boxes=3, reference_boxes=3)
    assert report['agreement']['student']['recall'] == pytest.approx(100 / 3)
    assert report['agreement']['student']['precision'] == pytest.approx(100 / 4)
    assert report['shown'] == ['img1.jpg', 'img2.jpg'] and osp.getsize(report['figure']) > 1000
    assert run_tool(tool.main, ['--images', str(images), '--reference', 'teacher', '--detections', student]) == 2
    assert 'NAME=PATH.json' in capsys.readouterr().err


def test_test_tool_adds_the_writer_and_scorer_the_config_evaluates_with(tmp_path):
    """tools/test.py --save-detections / --save-label-maps / --agreement: the metrics follow the
    config's evaluator, and a file of the other task's kind is refused with the fix."""
    import types

    from mmengine.config import ConfigDict

    from tool_loader import load_tool
    tool = load_tool('test')
    runner = types.SimpleNamespace(cfg=ConfigDict(test_evaluator=DETECTOR_EVALUATOR),
                                   test_evaluator=types.SimpleNamespace(metrics=[], dataset_meta=dict(classes=CLASSES)))
    args = types.SimpleNamespace(save_label_maps=None, save_detections=str(tmp_path / 'd.json'), score_thr=0.5,
                                 agreement=None)
    tool._add_fidelity_metrics(runner, args)
    writer, = runner.test_evaluator.metrics
    assert type(writer).__name__ == 'DetPredictionWriter' and writer.score_thr == 0.5
    assert writer.dataset_meta['classes'] == CLASSES
    with pytest.raises(SystemExit, match='name a .json file'):
        tool._add_fidelity_metrics(runner, types.SimpleNamespace(save_label_maps=str(tmp_path / 'maps.npz'),
                                                                 save_detections=None, score_thr=0.3, agreement=None))


# ----------------------------------------------------------------------------- the reference's score threshold
@pytest.fixture
def log_lines():
    """The messages of tools/test.py's options (they start with the option) on mmengine's current
    logger during the test, as (level name, message)."""
    import logging

    from mmengine.logging import MMLogger
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield lambda: [(r.levelname, r.getMessage()) for r in records if r.getMessage().startswith('--')]
    logger.removeHandler(handler)


def fidelity_args(**kwargs):
    import types
    return types.SimpleNamespace(**dict(dict(save_label_maps=None, save_detections=None, score_thr=None,
                                             agreement=None, config='teacher.py', checkpoint='teacher.pth'), **kwargs))


def add_fidelity_metrics(args):
    import types

    from mmengine.config import ConfigDict

    from tool_loader import load_tool
    runner = types.SimpleNamespace(cfg=ConfigDict(test_evaluator=DETECTOR_EVALUATOR),
                                   test_evaluator=types.SimpleNamespace(metrics=[], dataset_meta=dict(classes=CLASSES)))
    load_tool('test')._add_fidelity_metrics(runner, args)
    return runner.test_evaluator.metrics


def test_writer_records_its_score_threshold_and_what_wrote_it(tmp_path, reference):
    from mimiq_mm.evaluation import detections_info
    info = json.load(open(reference))['info']
    assert info['score_thr'] == 0.3 and info['written_by'] == 'mimiq_mm.DetPredictionWriter'
    out = str(tmp_path / 'at_half.json')
    evaluate(reference_writer(DETECTOR_EVALUATOR, out, score_thr=0.5, model='teacher.py teacher.pth'), TEACHER)
    written = json.load(open(out))['info']['date_created']
    assert detections_info(out) == dict(score_thr=0.5, written_by='mimiq_mm.DetPredictionWriter',
                                        model='teacher.py teacher.pth', date_created=written)
    assert len(json.load(open(out))['annotations']) == 3  # 0.9, 0.6, 0.8 of the four scores


def test_agreement_reports_the_threshold_of_its_reference(reference, log_lines):
    metric, = add_fidelity_metrics(fidelity_args(agreement=reference))
    assert type(metric).__name__ == 'CocoMetric'
    assert log_lines() == [
        ('INFO', f'--agreement: {reference} holds the detections scoring >= 0.3 (mimiq_mm.DetPredictionWriter, '
                 f"{json.load(open(reference))['info']['date_created']})")]


def test_an_explicit_score_thr_other_than_the_references_is_refused(reference, log_lines):
    """--score-thr only filters what --save-detections writes: with --agreement alone a different
    value would not apply, and the metrics would be read as if it did."""
    with pytest.raises(SystemExit, match=r'--score-thr 0.5 does not apply to --agreement: .* scoring >= 0.3, the '
                                         r'threshold it was written at; drop --score-thr, or write the reference '
                                         r'again with --save-detections --score-thr 0.5'):
        add_fidelity_metrics(fidelity_args(agreement=reference, score_thr=0.5))
    assert len(add_fidelity_metrics(fidelity_args(agreement=reference, score_thr=0.3))) == 1


def test_save_detections_says_what_it_replaces_and_a_threshold_mismatch(tmp_path, reference, log_lines):
    """mmdet's tools overwrite their outputs; here the replaced file and a threshold that differs
    from the reference's (the two files are compared box for box) are each named in one warning."""
    student = str(tmp_path / 'student.json')
    evaluate(reference_writer(DETECTOR_EVALUATOR, student, score_thr=0.5), TEACHER)
    replaced = json.load(open(student))['info']['date_created']
    writer, _ = add_fidelity_metrics(fidelity_args(save_detections=student, agreement=reference, score_thr=0.5))
    assert writer.score_thr == 0.5 and writer.model == 'teacher.py teacher.pth'
    assert [message for level, message in log_lines() if level == 'WARNING'] == [
        f'--save-detections writes the detections scoring >= 0.5, the reference {reference} those scoring >= 0.3: '
        'compared box for box (tools/analysis/detections.py) they differ by the threshold; add --score-thr 0.3 to '
        'match',
        f'--save-detections replaces {student}, which holds the detections scoring >= 0.5 '
        f'(mimiq_mm.DetPredictionWriter, {replaced})']
    with pytest.raises(SystemExit, match='would overwrite the reference of --agreement'):
        add_fidelity_metrics(fidelity_args(save_detections=reference, agreement=reference))


def test_a_reference_without_a_recorded_threshold_gives_one_warning(tmp_path, reference, log_lines):
    """Files written before the threshold had a field of its own still name it in their
    description; a COCO file that says nothing (another tool's) has an unknown threshold."""
    from mimiq_mm.evaluation import detections_info
    coco = json.load(open(reference))
    coco['info'] = dict(description='detections with score >= 0.3')
    old = tmp_path / 'old.json'
    old.write_text(json.dumps(coco))
    assert detections_info(str(old))['score_thr'] == 0.3
    del coco['info']
    other = tmp_path / 'other_tool.json'
    other.write_text(json.dumps(coco))
    assert detections_info(str(other))['score_thr'] is None
    add_fidelity_metrics(fidelity_args(agreement=str(other), score_thr=0.5))
    warnings = [message for level, message in log_lines() if level == 'WARNING']
    assert len(warnings) == 1 and '\n' not in warnings[0]
    assert warnings[0].startswith(f'--agreement: the score threshold of {other} is unknown')
