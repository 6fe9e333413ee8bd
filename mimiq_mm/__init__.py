"""mimiq_mm: data-free low-bit quantization of vision transformers (MimiQ) for OpenMMLab.

Importing the package registers its components in the ``mimiq_mm`` registry scope and makes
mmengine's checkpoint loading work with torch >= 2.6 (see :mod:`mimiq_mm.utils.checkpoint`).
"""
__version__ = '0.1.0'

from . import registry  # noqa: F401,E402
from .utils import patch_mmengine_checkpoint_loading  # noqa: E402

patch_mmengine_checkpoint_loading()

from . import attention, datasets, engine, evaluation, generators, losses, models, quant, synthesis  # noqa: F401,E402
