"""Loading weights into a model: every checkpoint a mimiq_mm model reads (the teacher of a
:class:`~mimiq_mm.models.QuantDistiller`, :func:`~mimiq_mm.apis.init_model`'s checkpoints, the
analysis tools' models) goes through here, i.e. through mmengine's checkpoint loader (safe
loading, local files and URLs, see :mod:`mimiq_mm.utils.checkpoint`)."""
import re
from typing import List, Union

import torch.nn as nn
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

#: a DDP wrapper's prefix; mmengine's default revision
REVISE_KEYS = [(r'^module\.', '')]


def load_checkpoint(checkpoint: str) -> dict:
    """The checkpoint at ``checkpoint`` (a path or URL), read on the CPU by mmengine's loader."""
    loaded = _load_checkpoint(checkpoint, map_location='cpu', logger='current')
    if not isinstance(loaded, dict):
        raise ValueError(f'{checkpoint} holds no state dict; pass a checkpoint saved by tools/train.py '
                         'or an OpenMMLab/timm checkpoint')
    return loaded


def checkpoint_state_dict(loaded: dict) -> dict:
    """The weights of a loaded checkpoint (its ``state_dict``, a timm/DeiT ``model`` entry, or the
    dict itself), with the keys revised as mmengine does (no DDP ``module.`` prefix)."""
    state = loaded.get('state_dict', loaded.get('model', loaded))
    revised = {}
    for key, value in state.items():
        for pattern, replacement in REVISE_KEYS:
            key = re.sub(pattern, replacement, key)
        revised[key] = value
    return revised


def load_weights(model: nn.Module, checkpoint: Union[str, dict], what='model') -> dict:
    """Load ``checkpoint`` (a path or URL, or an already loaded checkpoint dict) into ``model``
    strictly, through mmengine's checkpoint loader and its ``revise_keys``. A mismatch is an error
    that says which checkpoint and model disagree.

    Quantizer state may be absent (a full-precision checkpoint loads into a quantized model,
    whose quantizers then stay uncalibrated); weights may not.
    """
    loaded = load_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    if not isinstance(loaded, dict):
        raise ValueError(f'{checkpoint} holds no state dict; pass a checkpoint saved by tools/train.py '
                         'or an OpenMMLab/timm checkpoint')
    try:
        _load_checkpoint_to_model(model, loaded, strict=True, revise_keys=REVISE_KEYS)
    except RuntimeError as err:
        source = checkpoint if isinstance(checkpoint, str) else 'the checkpoint'
        raise ValueError(f'{source} does not fit the config\'s {what}: {first_lines(err)}; check that config '
                         'and checkpoint belong together') from err
    return loaded


def load_matching_weights(model: nn.Module, state_dict: dict, source: str, what: str, prefix: str = '') -> List[str]:
    """Load ``state_dict`` into ``model`` where the checkpoint may hold more than the model:
    every key of ``model`` under ``prefix`` must be there (else an error naming ``source`` and
    ``what``), keys the model does not have are left out and returned.

    Args:
        model (nn.Module): where the weights go.
        state_dict (dict): weights (see :func:`checkpoint_state_dict`).
        source (str): the checkpoint, for the errors ("teacher checkpoint X").
        what (str): the model, for the errors ("model.architecture").
        prefix (str): only the model's keys under this prefix must be in ``state_dict``.

    Returns:
        list[str]: the unexpected keys.
    """
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f'{source} does not fit {what} ({err}); check that the config describes the '
                         'checkpoint\'s model') from err
    missing = [k for k in missing if k.startswith(prefix)]
    if missing:
        raise ValueError(f'{source} does not fit {what}: {len(missing)} missing keys, e.g. {missing[:5]}; '
                         'check the config and checkpoint')
    return list(unexpected)


def first_lines(err, count=4):
    lines = [line for line in str(err).splitlines() if line.strip()]
    return ' '.join(lines[1:count] if len(lines) > 1 else lines)
