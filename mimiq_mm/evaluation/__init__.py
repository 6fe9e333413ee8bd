"""Metrics for mm's evaluators: fidelity of a student to its teacher."""
from .agreement import SegAgreementMetric, SegPredictionWriter
from .detections import DEFAULT_SCORE_THR, DetPredictionWriter, describe_detections, detections_info
from .fidelity import fidelity_metric, reference_format, reference_writer

__all__ = ['DEFAULT_SCORE_THR', 'SegAgreementMetric', 'SegPredictionWriter', 'DetPredictionWriter',
           'describe_detections', 'detections_info', 'fidelity_metric', 'reference_format', 'reference_writer']
