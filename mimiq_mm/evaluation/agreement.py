"""Fidelity to a reference model: a student's segmentation scored against its teacher's.

A quantized student should behave like its teacher. The annotation metrics (mIoU against the
labels) measure that only when the teacher is close to the labels: when it is not, a student
that deviates *towards* the labels scores above its teacher and one that deviates away scores
below, however small the deviation (the two-class DeiT UPerNet of benchmarks/dense/README.md).
Scoring the student with the teacher's own predictions as the labels measures how far it
deviates, whatever the direction.

Two metrics, both usable in any mmseg config (``custom_imports=dict(imports=['mimiq_mm'])``):

* :class:`SegPredictionWriter` stores a model's label maps (e.g. the teacher's on the test
  split) in one ``.npz`` file, keyed by image file name;
* :class:`SegAgreementMetric` scores predictions against those stored maps with mmseg's own
  IoU arithmetic: ``aAcc`` is the pixel agreement, ``mIoU`` the mean IoU of student vs teacher.
"""
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from ..registry import METRICS


def _image_key(data_sample: dict) -> str:
    return osp.basename(data_sample['img_path'])


def _label_map(data_sample: dict) -> torch.Tensor:
    """The predicted label map of one sample, (H, W)."""
    if 'pred_sem_seg' not in data_sample:
        raise ValueError('label maps come from semantic segmentors (data samples with pred_sem_seg); this model '
                         f'predicts {sorted(k for k in data_sample if k.startswith("pred_"))}')
    return data_sample['pred_sem_seg']['data'].squeeze(0)


@METRICS.register_module()
class SegPredictionWriter(BaseMetric):
    """Writes every predicted label map to ``out_file`` (``.npz``, uint8 or int32 (H, W) arrays
    keyed by image file name); reports no metric.

    Args:
        out_file (str): where the maps go (written atomically once all images are seen).
    """

    def __init__(self, out_file: str, collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.out_file = out_file

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            labels = _label_map(sample).cpu().numpy()
            self.results.append((_image_key(sample), labels.astype(np.uint8 if labels.max() < 256 else np.int32)))

    def compute_metrics(self, results: list) -> dict:
        maps = dict(results)
        if len(maps) != len(results):
            raise ValueError('SegPredictionWriter: two test images share a file name; the maps are keyed by it')
        os.makedirs(osp.dirname(osp.abspath(self.out_file)), exist_ok=True)
        partial = self.out_file + '.partial.npz'  # np.savez appends .npz to names without it
        np.savez_compressed(partial, **maps)
        os.replace(partial, self.out_file)
        return {}


@METRICS.register_module()
class SegAgreementMetric(BaseMetric):
    """Pixel agreement and mean IoU of the predicted label maps against reference maps written
    by :class:`SegPredictionWriter` (the reference's labels take the place of the annotations).

    Args:
        reference (str): the ``.npz`` of reference label maps, one per test image.
        prefix (str): key prefix of the results (``'teacher'`` gives ``teacher/mIoU``,
            ``teacher/aAcc``).
    """
    default_prefix = 'teacher'

    def __init__(self, reference: str, collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.reference = reference
        self._maps = None

    def _reference_map(self, key: str) -> np.ndarray:
        if self._maps is None:
            if not osp.isfile(self.reference):
                raise FileNotFoundError(f'SegAgreementMetric: reference predictions {self.reference} not found; write '
                                        "them with the reference model and test_evaluator=dict(type="
                                        "'mimiq_mm.SegPredictionWriter', out_file=...)")
            self._maps = np.load(self.reference)  # read lazily, one image's map at a time
        if key not in self._maps.files:
            raise KeyError(f'SegAgreementMetric: image {key!r} has no map in {self.reference} (written for another '
                           'test split?)')
        return self._maps[key]

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        from mmseg.evaluation.metrics import IoUMetric  # the optional 'seg' extra
        num_classes = len(self.dataset_meta['classes'])
        for sample in data_samples:
            prediction = _label_map(sample)
            reference = torch.from_numpy(self._reference_map(_image_key(sample)).astype(np.int64)).to(prediction)
            if reference.shape != prediction.shape:
                raise ValueError(f'SegAgreementMetric: {_image_key(sample)} is {tuple(prediction.shape)} here and '
                                 f'{tuple(reference.shape)} in {self.reference}')
            # no pixel is ignored: every reference pixel carries a class
            self.results.append(IoUMetric.intersect_and_union(prediction, reference, num_classes, ignore_index=-1))

    def compute_metrics(self, results: list) -> dict:
        from mmseg.evaluation.metrics import IoUMetric
        intersect, union, predicted, labelled = (sum(column) for column in zip(*results))
        scores = IoUMetric.total_area_to_metrics(intersect, union, predicted, labelled, ['mIoU'])
        return dict(aAcc=round(float(scores['aAcc']) * 100, 2), mIoU=round(float(np.nanmean(scores['IoU'])) * 100, 2))
