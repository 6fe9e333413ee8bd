from .hooks import StudentExportHook
from .loops import DataFreeQATLoop

__all__ = ['DataFreeQATLoop', 'StudentExportHook']
