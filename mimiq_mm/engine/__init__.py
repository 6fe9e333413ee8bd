from .hooks import BestStudentHook, StudentExportHook
from .loops import DataFreeQATLoop

__all__ = ['BestStudentHook', 'DataFreeQATLoop', 'StudentExportHook']
