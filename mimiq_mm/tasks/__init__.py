"""Task adapters, one file per task, registered in :data:`mimiq_mm.registry.TASKS`."""
from .base import TaskAdapter, build_task, freeze_stochastic_and_norm
from .classification import ClassifierTask
from .detection import DetectorTask
from .segmentation import SegmentorTask

__all__ = ['ClassifierTask', 'DetectorTask', 'SegmentorTask', 'TaskAdapter', 'build_task',
           'freeze_stochastic_and_norm']
