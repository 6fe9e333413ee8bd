"""Small utilities shared across mimiq_mm."""
from .checkpoint import (TRUST_ENV_VAR, CorruptCheckpointError, UnsafeCheckpointError, allowlisted_globals,
                         checkpoint_safe_globals, checkpoints_trusted_by_env, load_checkpoint_file,
                         load_checkpoint_url, patch_mmengine_checkpoint_loading)
from .download import CheckpointDownloadError
from .integrity import checkpoint_damage

__all__ = [
    'TRUST_ENV_VAR', 'CheckpointDownloadError', 'CorruptCheckpointError', 'UnsafeCheckpointError',
    'allowlisted_globals', 'checkpoint_damage', 'checkpoint_safe_globals', 'checkpoints_trusted_by_env',
    'load_checkpoint_file', 'load_checkpoint_url', 'patch_mmengine_checkpoint_loading',
]
