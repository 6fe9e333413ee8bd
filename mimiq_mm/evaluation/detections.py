"""Fidelity to a reference detector: its detections written as COCO ground truth.

The segmentation analogue is :mod:`.agreement`. For detectors no new metric is needed: once the
teacher's confident detections are stored as a COCO instances file, mmdet's own ``CocoMetric``
with that file as ``ann_file`` scores any student against them (``teacher/bbox_mAP``,
``teacher/segm_mAP``: 100 = the teacher's boxes and masks exactly, whatever the annotations say).
The file's ``info`` records the score threshold and what wrote it (:func:`detections_info`): a
reference written at another threshold is another reference.
"""
import datetime
import json
import os
import os.path as osp
import re
from typing import Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from ..registry import METRICS


WRITER = 'mimiq_mm.DetPredictionWriter'
DEFAULT_SCORE_THR = 0.3  # mmdet's visualiser draws the detections scoring at least this too


def detections_info(path: str) -> dict:
    """What a COCO detections file says about itself: ``score_thr`` (the lowest score kept; None
    where the file does not say, e.g. annotations or another tool's file), ``written_by``,
    ``model`` and ``date_created`` (None where not recorded)."""
    try:
        with open(path) as f:
            coco = json.load(f)
    except ValueError as err:
        raise ValueError(f'{path} is not a COCO detections file: not valid JSON ({err})') from None
    if not isinstance(coco, dict) or 'annotations' not in coco:
        raise ValueError(f'{path} is not a COCO detections file (no annotations list)')
    info = coco.get('info') if isinstance(coco.get('info'), dict) else {}
    score_thr = info.get('score_thr')
    # files written before the threshold was a field of its own name it in the description
    old_format = re.fullmatch(r'detections with score >= ([0-9.eE+-]+)', str(info.get('description', '')))
    if score_thr is None and old_format:
        score_thr = float(old_format.group(1))
    return dict(score_thr=score_thr, written_by=info.get('written_by', WRITER if old_format else None),
                model=info.get('model'), date_created=info.get('date_created'))


def describe_detections(info: dict) -> str:
    """``info`` (of :func:`detections_info`) in words, for logs: 'the detections of M scoring >= T (by, date)'."""
    made = f" of {info['model']}" if info.get('model') else ''
    kept = 'with an unknown score threshold' if info['score_thr'] is None else f"scoring >= {info['score_thr']:g}"
    source = ', '.join(str(v) for v in (info.get('written_by'), info.get('date_created')) if v)
    return f'the detections{made} {kept}' + (f' ({source})' if source else '')


def _instances(data_sample: dict) -> dict:
    if 'pred_instances' not in data_sample or 'bboxes' not in data_sample['pred_instances']:
        raise ValueError('detections come from detectors (data samples with pred_instances.bboxes); this model '
                         f'predicts {sorted(k for k in data_sample if k.startswith("pred_"))}')
    return data_sample['pred_instances']


def _encode_masks(masks: np.ndarray) -> list:
    """(N, H, W) bool -> N compressed COCO RLEs with ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    for rle in rles:
        rle['counts'] = rle['counts'].decode()
    return rles


@METRICS.register_module()
class DetPredictionWriter(BaseMetric):
    """Writes a detector's confident detections on every test image as a COCO instances file
    (``images``, ``categories`` from the dataset's classes, one ``annotation`` per detection with
    its box, mask as RLE when the model predicts masks, and score); reports no metric.

    Args:
        out_file (str): the ``.json`` to write (atomically, once all images are seen).
        score_thr (float): detections scoring below it are left out: they are the ones a user of
            the model would not draw (mmdet's visualiser uses 0.3 too). Recorded in the file.
        model (str | None): what made the detections (e.g. config and checkpoint), recorded with
            the threshold.
    """

    def __init__(self, out_file: str, score_thr: float = DEFAULT_SCORE_THR, model: Optional[str] = None,
                 collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not 0 <= score_thr < 1:
            raise ValueError(f'DetPredictionWriter: score_thr must be in [0, 1), got {score_thr}')
        self.out_file = out_file
        self.score_thr = score_thr
        self.model = model

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = _instances(sample)
            keep = (pred['scores'] >= self.score_thr).cpu().numpy()
            boxes = pred['bboxes'].cpu().numpy()[keep]
            masks = pred['masks'].cpu().numpy()[keep] if 'masks' in pred else None
            self.results.append(dict(
                img_id=sample['img_id'], height=int(sample['ori_shape'][0]), width=int(sample['ori_shape'][1]),
                file_name=osp.basename(sample.get('img_path') or str(sample['img_id'])),
                boxes=boxes, scores=pred['scores'].cpu().numpy()[keep], labels=pred['labels'].cpu().numpy()[keep],
                masks=None if masks is None else _encode_masks(masks) if len(masks) else []))

    def compute_metrics(self, results: list) -> dict:
        from pycocotools import mask as mask_utils
        classes = self.dataset_meta['classes']
        info = dict(description=f'detections with score >= {self.score_thr}', score_thr=self.score_thr,
                    written_by=WRITER, model=self.model,
                    date_created=datetime.datetime.now().isoformat(timespec='seconds'))
        coco = dict(info=info, images=[], annotations=[],
                    categories=[dict(id=i + 1, name=name) for i, name in enumerate(classes)])
        for image in results:
            coco['images'].append(dict(id=image['img_id'], width=image['width'], height=image['height'],
                                       file_name=image['file_name']))
            for i, (box, score, label) in enumerate(zip(image['boxes'], image['scores'], image['labels'])):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotation = dict(id=len(coco['annotations']) + 1, image_id=image['img_id'], category_id=int(label) + 1,
                                  bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1), iscrowd=0,
                                  score=float(score))
                if image['masks'] is not None:
                    annotation['segmentation'] = image['masks'][i]
                    annotation['area'] = float(mask_utils.area(image['masks'][i]))  # COCO's size ranges use it
                coco['annotations'].append(annotation)
        if len({image['id'] for image in coco['images']}) != len(coco['images']):
            raise ValueError('DetPredictionWriter: two test images share an img_id')
        os.makedirs(osp.dirname(osp.abspath(self.out_file)), exist_ok=True)
        partial = self.out_file + '.partial'
        with open(partial, 'w') as f:
            json.dump(coco, f)
        os.replace(partial, self.out_file)
        return {}
