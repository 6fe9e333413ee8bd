"""Which reference a model's predictions are stored as, and which metric scores a student against
it, chosen by the task's own evaluator in the config:

=================  ==================  =========================  =======================================
config evaluator   reference           written by                 scored by (keys)
=================  ==================  =========================  =======================================
mmseg IoUMetric    label maps, .npz    SegPredictionWriter        SegAgreementMetric (teacher/mIoU, aAcc)
mmdet CocoMetric   detections, .json   DetPredictionWriter        mmdet CocoMetric on them
                                                                  (teacher/bbox_mAP, teacher/segm_mAP)
=================  ==================  =========================  =======================================
"""
from typing import Optional

PREFIX = 'teacher'
SUFFIX = dict(label_maps='.npz', detections='.json')


def metric_list(evaluator) -> list:
    """A config's evaluator (one metric config or several) as a list."""
    if evaluator is None:
        return []
    return list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]


def _find(evaluator, name: str) -> Optional[dict]:
    return next((m for m in metric_list(evaluator) if str(m.get('type', '')).split('.')[-1] == name), None)


def reference_format(evaluator) -> Optional[str]:
    """``'label_maps'`` for a segmentor's evaluator, ``'detections'`` for a COCO detector's, else None."""
    if _find(evaluator, 'IoUMetric') is not None:
        return 'label_maps'
    if _find(evaluator, 'CocoMetric') is not None:
        return 'detections'
    return None


def _require_format(evaluator, path: str) -> str:
    fmt = reference_format(evaluator)
    if fmt is None:
        raise ValueError('fidelity to a reference needs a segmentor scored by IoUMetric or a detector scored by '
                         f'CocoMetric; this config evaluates with {[m.get("type") for m in metric_list(evaluator)]}')
    if not path.endswith(SUFFIX[fmt]):
        raise ValueError(f'this model stores its predictions as {fmt.replace("_", " ")}: name a {SUFFIX[fmt]} file, '
                         f'got {path}')
    return fmt


def reference_writer(evaluator, out_file: str, score_thr: Optional[float] = None, model: Optional[str] = None) -> dict:
    """The metric config that writes a model's predictions to ``out_file`` (the reference);
    detectors only: ``score_thr``, the lowest score of a detection kept (DetPredictionWriter's
    default if None), and ``model``, what made them; both are recorded in the file."""
    fmt = _require_format(evaluator, out_file)
    if fmt == 'label_maps':
        return dict(type='mimiq_mm.SegPredictionWriter', out_file=out_file)
    return dict(type='mimiq_mm.DetPredictionWriter', out_file=out_file,
                **(dict(score_thr=score_thr) if score_thr is not None else {}), **(dict(model=model) if model else {}))


def fidelity_metric(evaluator, reference: str) -> dict:
    """The metric config that scores predictions against a stored reference, with ``teacher/`` keys."""
    fmt = _require_format(evaluator, reference)
    if fmt == 'label_maps':
        return dict(type='mimiq_mm.SegAgreementMetric', reference=reference, prefix=PREFIX)
    coco = _find(evaluator, 'CocoMetric')
    # the config's own metric list (bbox, segm), on the stored detections instead of the annotations
    return dict(type='mmdet.CocoMetric', ann_file=reference, metric=coco.get('metric', 'bbox'),
                format_only=False, prefix=PREFIX)
