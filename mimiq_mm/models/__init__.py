from .distiller import DistillDataPreprocessor, QuantDistiller
from .tasks import TaskAdapter, build_task

__all__ = ['DistillDataPreprocessor', 'QuantDistiller', 'TaskAdapter', 'build_task']
