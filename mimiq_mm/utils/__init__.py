"""Small utilities shared across mimiq_mm."""
from .checkpoint import (TRUST_ENV_VAR, UnsafeCheckpointError, allowlisted_globals,
                         checkpoint_safe_globals, checkpoints_trusted_by_env, load_checkpoint_file,
                         load_checkpoint_url, patch_mmengine_checkpoint_loading)

__all__ = [
    'TRUST_ENV_VAR', 'UnsafeCheckpointError', 'allowlisted_globals', 'checkpoint_safe_globals',
    'checkpoints_trusted_by_env', 'load_checkpoint_file', 'load_checkpoint_url',
    'patch_mmengine_checkpoint_loading',
]
