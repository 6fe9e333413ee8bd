"""Metrics for mm's evaluators: fidelity of a student to its teacher."""
from .agreement import SegAgreementMetric, SegPredictionWriter
from .detections import DetPredictionWriter
from .fidelity import fidelity_metric, reference_format, reference_writer

__all__ = ['SegAgreementMetric', 'SegPredictionWriter', 'DetPredictionWriter', 'fidelity_metric',
           'reference_format', 'reference_writer']
