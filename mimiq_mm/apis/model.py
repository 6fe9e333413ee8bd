"""One way to get a model from a config and a checkpoint: :func:`init_model`.

Every tool that needs a model outside mmengine's Runner (analysis, benchmarks, deployment,
synthesis) goes through here; the Runner itself (``tools/train.py``, ``tools/test.py``) builds
and loads the same way (``cfg.model`` plus the top-level ``data_preprocessor``, mmengine's
checkpoint loader).
"""
import copy
import os.path as osp
from typing import Optional, Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from ..registry import MODELS as MIMIQ_MODELS
from .checkpoint import checkpoint_state_dict, load_checkpoint, load_weights

#: what :func:`init_model` can return from a mimiq_mm (QuantDistiller) config
MODEL_PARTS = ('model', 'teacher', 'student')


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """The config at ``config`` (a path, or a Config, copied) with ``cfg_options`` merged in,
    ``mimiq_mm`` and the config's ``custom_imports`` imported and its default scope set."""
    import mimiq_mm  # noqa: F401  (registers the components and the safe checkpoint loading)
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        if not osp.isfile(str(config)):
            raise FileNotFoundError(f'config file {config!r} not found; pass a config such as '
                                    'configs/demo/mimiq_vit_digits_w3a3.py')
        cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    return cfg


def build_model(cfg: Config) -> nn.Module:
    """``cfg.model`` built as mmengine's Runner builds it (with the top-level
    ``data_preprocessor``), with a clear error when the config's codebase is missing."""
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    try:
        return MODELS.build(model_cfg)
    except (KeyError, ImportError) as err:
        raise ValueError(f'cannot build the model of the config: {err}; is the OpenMMLab codebase the config '
                         'uses (mmpretrain, mmseg, mmdet) installed?') from err


def init_model(config: Union[str, Config], checkpoint: Optional[str] = None, device='cpu',
               cfg_options: Optional[dict] = None, part: str = 'model') -> nn.Module:
    """Build the model of ``config`` and load its weights, ready for inference (eval mode).

    For a mimiq_mm config (a :class:`QuantDistiller`):

    * ``checkpoint`` may be a full distiller checkpoint (``iter_*.pth`` of tools/train.py:
      teacher and student), a student export (``student_wXaY.pth`` of StudentExportHook) or a
      full-precision task checkpoint (loaded into the student, whose quantizers then need
      calibration). The teacher's weights come from the checkpoint when it holds them, else from
      ``model.teacher_checkpoint`` (not needed for ``part='student'``).
    * ``part``: 'model' (the distiller), 'teacher' or 'student'.

    For a plain OpenMMLab config the task model is returned with ``checkpoint`` loaded; ``part``
    must be 'model' or 'teacher'.

    The returned module carries the config as ``model.cfg``.
    """
    if part not in MODEL_PARTS:
        raise ValueError(f'part must be one of {MODEL_PARTS}, got {part!r}')
    cfg = load_config(config, cfg_options)
    model = build_model(cfg)
    if isinstance(model, MIMIQ_MODELS.get('QuantDistiller')):
        _load_distiller(model, checkpoint, part)
        model = model if part == 'model' else getattr(model, part)
    elif part == 'student':
        raise ValueError('this is not a mimiq_mm (QuantDistiller) config: it has no quantized student; use a config '
                         'from configs/ that wraps the model in mimiq_mm.QuantDistiller')
    elif checkpoint is not None:
        load_weights(model, checkpoint)
    model.cfg = cfg
    return model.to(device).eval()


def _load_distiller(distiller, checkpoint, part):
    loaded = load_checkpoint(checkpoint) if checkpoint is not None else None
    whole = loaded is not None and any(key.startswith(('teacher.', 'student.'))
                                       for key in checkpoint_state_dict(loaded))
    if not whole and part != 'student':
        distiller.init_weights()  # the teacher from model.teacher_checkpoint, copied into the student
    if loaded is None:
        return
    if whole:
        load_weights(distiller, loaded, what='QuantDistiller (teacher and student)')
    else:
        load_weights(distiller.student, loaded, what='student')
