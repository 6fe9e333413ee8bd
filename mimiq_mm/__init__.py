"""mimiq_mm: data-free low-bit quantization of vision transformers (MimiQ) for OpenMMLab.

Importing the package registers its components in the ``mimiq_mm`` registry scope.
"""
__version__ = '0.1.0'

from . import registry  # noqa: F401,E402
from . import attention, quant  # noqa: F401,E402
