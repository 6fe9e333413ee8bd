"""Metrics for mm's evaluators: fidelity of a student to its teacher."""
from .agreement import SegAgreementMetric, SegPredictionWriter

__all__ = ['SegAgreementMetric', 'SegPredictionWriter']
