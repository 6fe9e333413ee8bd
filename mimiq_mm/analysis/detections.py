"""Detections of several models compared with a reference model's, per image and over a test set.

Reads the COCO instances files that ``tools/test.py --save-detections``
(:class:`mimiq_mm.DetPredictionWriter`) writes and matches each model's boxes to the reference's:
a box matches an unmatched reference box of the same class with IoU >= 0.5, highest scores
first (COCO's greedy rule at one threshold).
"""
import json
import os.path as osp
from typing import Dict, List

import numpy as np
import torch
from torchvision.ops import box_iou

from .errors import AnalysisInputError


def load_detections(path: str) -> Dict[str, dict]:
    """COCO instances file -> {image file name: dict(boxes=(N, 4) xyxy, labels=(N,), scores=(N,))}."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'detections {path} not found (write them with tools/test.py --save-detections)')
    with open(path) as f:
        coco = json.load(f)
    if not {'images', 'annotations', 'categories'} <= set(coco):
        raise AnalysisInputError(f'{path} is not a COCO instances file (images, annotations, categories)')
    names = {image['id']: image['file_name'] for image in coco['images']}
    per_image = {name: ([], [], []) for name in names.values()}
    for a in coco['annotations']:
        x, y, w, h = a['bbox']
        boxes, labels, scores = per_image[names[a['image_id']]]
        boxes.append([x, y, x + w, y + h])
        labels.append(a['category_id'])
        scores.append(a.get('score', 1.0))
    return {name: dict(boxes=np.asarray(b, np.float32).reshape(-1, 4), labels=np.asarray(l, np.int64),
                       scores=np.asarray(s, np.float32)) for name, (b, l, s) in per_image.items()}


def match_detections(detections: dict, reference: dict, iou_thr: float = 0.5) -> np.ndarray:
    """For each detection (in the given order), the index of the reference box it matches, or -1."""
    matched = np.full(len(detections['boxes']), -1, np.int64)
    if not len(detections['boxes']) or not len(reference['boxes']):
        return matched
    iou = box_iou(torch.from_numpy(detections['boxes']), torch.from_numpy(reference['boxes'])).numpy()
    iou[detections['labels'][:, None] != reference['labels'][None, :]] = 0  # another class never matches
    taken = np.zeros(len(reference['boxes']), bool)
    for i in np.argsort(-detections['scores'], kind='stable'):
        candidates = np.where(taken, -1.0, iou[i])
        j = int(candidates.argmax())
        if candidates[j] >= iou_thr:
            matched[i], taken[j] = j, True
    return matched


def box_agreement(models: Dict[str, Dict[str, dict]], reference: Dict[str, dict]) -> Dict[str, dict]:
    """Per model, over every image: ``recall`` (% of the reference's boxes it reproduces) and
    ``precision`` (% of its boxes that reproduce one)."""
    out = {}
    for name, detections in models.items():
        if set(detections) != set(reference):
            raise AnalysisInputError(f'{name}\'s detections cover other images than the reference\'s '
                                     '(another test split?)')
        hits = [match_detections(detections[key], reference[key]) for key in reference]
        matched = sum(int((h >= 0).sum()) for h in hits)
        predicted = sum(len(h) for h in hits)
        expected = sum(len(r['boxes']) for r in reference.values())
        out[name] = dict(recall=100.0 * matched / max(expected, 1), precision=100.0 * matched / max(predicted, 1),
                         boxes=predicted, reference_boxes=expected)
    return out


def boxes_to_draw(detections: dict, reference: dict) -> List[tuple]:
    """(box, colour, style) of one image: the model's boxes green where they match the reference,
    red where not; the reference boxes it misses yellow and dashed."""
    matched = match_detections(detections, reference)
    drawn = [(box, 'lime' if m >= 0 else 'red', '-') for box, m in zip(detections['boxes'], matched)]
    missed = np.setdiff1d(np.arange(len(reference['boxes'])), matched[matched >= 0])
    return drawn + [(reference['boxes'][j], 'yellow', '--') for j in missed]
