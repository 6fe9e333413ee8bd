"""Getting the models to analyse: the teacher (and student) of a mimiq_mm config, a plain
OpenMMLab task config, or a timm model for quick use — with the input normalisation and size
the model expects."""
import copy
import json
import os
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..attention import install_attention_capture
from ..quant import quantize_model, quantizers
from .attention_stats import plain_forward
from .distance import calibrate_student
from .errors import AnalysisInputError
from .images import normalize_pixels

DEFAULT_INPUT_SIZE = (224, 224)


@dataclass
class AnalysisModel:
    """A teacher (and optionally a quantized student) ready for attention analysis.

    Attributes:
        teacher (nn.Module): full-precision model with attention capture installed, eval mode.
        pixel_mean, pixel_std (Tensor): (3, 1, 1) RGB normalisation in 0-255 units.
        input_size (tuple[int, int]): (h, w) the images are resized to.
        forward (callable): ``forward(model, inputs)`` runs teacher or student on normalised inputs.
        device (torch.device): where the models are.
        student (nn.Module | None): the fake-quantized student (head distance only).
        class_names (list[str] | None): class names known from the config.
        description (str): where the model came from (for JSON reports).
    """
    teacher: nn.Module
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    input_size: Tuple[int, int]
    forward: Callable = plain_forward
    device: torch.device = torch.device('cpu')
    student: Optional[nn.Module] = None
    class_names: Optional[List[str]] = None
    description: str = ''

    def inputs(self, pixels) -> torch.Tensor:
        """uint8 (B, 3, H, W) RGB -> normalised float inputs on the model's device."""
        return normalize_pixels(pixels.to(self.device), self.pixel_mean.to(self.device),
                                self.pixel_std.to(self.device))


def select_device(name='auto') -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(name)


def _size2(size):
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(v) for v in size)
    return size * 2 if len(size) == 1 else size[-2:]


def model_input_size(model) -> Optional[Tuple[int, int]]:
    """The input size a backbone was built for: timm ``patch_embed.img_size`` or the
    ``init_input_size`` of an OpenMMLab PatchEmbed; None if the model does not say."""
    for module in model.modules():
        for attr in ('img_size', 'init_input_size'):
            size = getattr(module, attr, None)
            if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
                return tuple(size)
    return None


def _warn_default_size():
    warnings.warn(f'cannot tell the model input size; using {DEFAULT_INPUT_SIZE} (set --input-size)')
    return DEFAULT_INPUT_SIZE


# ----------------------------------------------------------------------------- timm models

def parse_timm_kwargs(text) -> dict:
    """``--timm-kwargs`` JSON object -> dict, with the fix in the error."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnalysisInputError(f'--timm-kwargs is not valid JSON ({err}); write e.g. '
                                 '\'{"img_size": 32, "num_classes": 10}\'') from err
    if not isinstance(kwargs, dict):
        raise AnalysisInputError('--timm-kwargs must be a JSON object, e.g. \'{"img_size": 32}\'')
    return kwargs


def _require_file(path, what, hint):
    if not (os.path.isfile(path) or '://' in path):
        raise AnalysisInputError(f'{what} {path!r} not found; {hint}')


def read_state_dict(path) -> dict:
    """The weights of a checkpoint file (under 'state_dict' / 'model' when nested), without a DDP
    'module.' prefix."""
    from ..utils.checkpoint import load_checkpoint_file
    state = load_checkpoint_file(path)
    state = state.get('state_dict', state.get('model', state))
    if state and all(key.startswith('module.') for key in state):
        state = {key[len('module.'):]: value for key, value in state.items()}
    return state


def load_plain_state_dict(model, path):
    """Load a state dict (optionally with a 'teacher.'/'model.' prefix) into ``model``; mismatches
    are reported with the fix."""
    state = read_state_dict(path)
    own = set(model.state_dict())
    for prefix in ('teacher.', 'model.'):
        if not any(k in own for k in state) and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise AnalysisInputError(f'checkpoint {path} does not fit the model: {len(missing)} missing keys, e.g. '
                                 f'{missing[:3]}; check --timm-model/--timm-kwargs or the checkpoint')
    if unexpected:
        warnings.warn(f'checkpoint {path}: ignored {len(unexpected)} unexpected keys, e.g. {unexpected[:3]}')


def timm_model(name, kwargs=None, checkpoint=None, device='cpu', input_size=None, with_student=False,
               w_bits=4, a_bits=4, act_method='minmax') -> AnalysisModel:
    """A timm model as teacher (random weights unless ``checkpoint``), optionally with a fresh
    fake-quantized student (calibrate it with :meth:`calibrate_fresh_student`)."""
    import timm
    kwargs = dict(kwargs or {})
    try:
        teacher = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise AnalysisInputError(f'cannot build timm model {name!r} with {kwargs}: {err}') from err
    if checkpoint:
        _require_file(checkpoint, 'checkpoint', 'pass an existing --checkpoint file')
        load_plain_state_dict(teacher, checkpoint)
    else:
        warnings.warn(f'timm model {name} has random weights (no --checkpoint); maps show an untrained model')
    install_attention_capture(teacher)
    cfg = getattr(teacher, 'pretrained_cfg', None) or {}
    mean = torch.tensor(cfg.get('mean', (0.5, 0.5, 0.5)), dtype=torch.float32).view(3, 1, 1) * 255
    std = torch.tensor(cfg.get('std', (0.5, 0.5, 0.5)), dtype=torch.float32).view(3, 1, 1) * 255
    device = select_device(device)
    teacher = teacher.to(device).eval()
    student = None
    if with_student:
        student = quantize_model(copy.deepcopy(teacher), w_bits=w_bits, a_bits=a_bits, act_method=act_method)
        student = student.to(device).eval()
    size = _size2(input_size) or model_input_size(teacher) or _warn_default_size()
    return AnalysisModel(teacher=teacher, pixel_mean=mean, pixel_std=std, input_size=size, device=device,
                         student=student, description=f'timm:{name} {json.dumps(kwargs)}')


# ----------------------------------------------------------------------------- configs

def load_config(path, cfg_options=None):
    """mmengine Config of ``path`` with ``cfg_options`` merged, mimiq_mm imported and the default
    scope set, so the config's model can be built."""
    if not path or not os.path.isfile(path):
        raise AnalysisInputError(f'config file {path!r} not found; pass a config such as '
                                 'configs/demo/mimiq_vit_digits_w3a3.py (or --timm-model NAME for a quick look)')
    import mimiq_mm  # noqa: F401  (registers the mimiq_mm components)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    return cfg


def build_config_model(cfg, config_path=''):
    """``MODELS.build(cfg.model)`` (with the config's top-level ``data_preprocessor``, as the Runner
    builds it), with a clear error when the config's codebase is missing."""
    from mmengine.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:  # as mmengine's Runner does: the input normalisation
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    try:
        return MODELS.build(model_cfg)
    except (KeyError, ImportError) as err:
        raise AnalysisInputError(f'cannot build the model of {config_path}: {err}; is the OpenMMLab codebase '
                                 'the config uses (mmpretrain, mmseg, mmdet) installed?') from err


def _is_distiller(model):
    from ..models.distiller import QuantDistiller
    return isinstance(model, QuantDistiller)


def config_input_size(cfg) -> Optional[Tuple[int, int]]:
    """The synthesis image size of a mimiq_mm config (the size the teacher takes)."""
    synthesis = (cfg.get('train_cfg') or {}).get('synthesis') or {}
    return _size2(synthesis.get('image_size'))


def split_distiller_state(state):
    """(teacher part, student part) of a distiller state dict, prefixes removed. A state without
    'teacher.'/'student.' keys (a student export or plain task checkpoint) is all student."""
    teacher = {k[len('teacher.'):]: v for k, v in state.items() if k.startswith('teacher.')}
    student = {k[len('student.'):]: v for k, v in state.items() if k.startswith('student.')}
    if not teacher and not student:
        student = dict(state)
    return teacher, student


def _fit_keys(state, module):
    """Map checkpoint keys onto ``module.state_dict()`` keys, tolerating one 'model.' too many or
    too few: mmpretrain's TimmClassifier drops its 'model.' prefix only when it is the top-level
    module, so nested checkpoints (teacher./student. of a distiller) keep it."""
    own = set(module.state_dict())
    fitted = {}
    for key, value in state.items():
        if key not in own and key.startswith('model.') and key[len('model.'):] in own:
            key = key[len('model.'):]
        elif key not in own and f'model.{key}' in own:
            key = f'model.{key}'
        fitted[key] = value
    return fitted


def _load_part(module, state, what, path):
    missing, _ = module.load_state_dict(_fit_keys(state, module), strict=False)
    # Quantizer state may legitimately be absent (then the student is calibrated); weights may not.
    missing_weights = [key for key in missing if 'quantizer' not in key]
    if missing_weights:
        raise AnalysisInputError(f'{path} does not fit the config\'s {what}: {len(missing_weights)} missing keys, '
                                 f'e.g. {missing_weights[:3]}; check that config and checkpoint belong together')


def load_distiller_checkpoint(distiller, checkpoint) -> bool:
    """Load a trained distiller checkpoint (or a student-only export) into ``distiller``.

    Returns:
        bool: whether the checkpoint also held the teacher's weights.
    """
    _require_file(checkpoint, 'checkpoint', 'pass the checkpoint of a finished tools/train.py run '
                  '(or leave --checkpoint out to use a freshly calibrated student)')
    teacher, student = split_distiller_state(read_state_dict(checkpoint))
    if teacher:
        _load_part(distiller.teacher, teacher, 'teacher', checkpoint)
    if student:
        _load_part(distiller.student, student, 'student', checkpoint)
    return bool(teacher)


def load_teacher_weights(distiller, checkpoint=None):
    """Load the teacher from ``checkpoint`` (a teacher checkpoint, or a distiller checkpoint whose
    teacher part is used) or else from the config's ``model.teacher_checkpoint``."""
    path = checkpoint or distiller.teacher_checkpoint
    if not path:
        raise AnalysisInputError('no teacher weights: pass --checkpoint PATH or set model.teacher_checkpoint '
                                 'in the config (or --cfg-options model.teacher_checkpoint=PATH)')
    _require_file(path, 'teacher checkpoint', 'pass --checkpoint PATH or fix model.teacher_checkpoint in the '
                  'config (train the teacher first, e.g. tools/demo.py for the demo configs)')
    if os.path.isfile(path):
        teacher, _ = split_distiller_state(read_state_dict(path))
        if teacher:  # a distiller checkpoint
            _load_part(distiller.teacher, teacher, 'teacher', path)
            distiller.student.load_state_dict(distiller.teacher.state_dict(), strict=False)
            return
    distiller.teacher_checkpoint = path
    try:
        distiller.init_weights()
    except (ValueError, FileNotFoundError) as err:
        raise AnalysisInputError(str(err)) from err


def config_model(config, checkpoint=None, cfg_options=None, device='auto', input_size=None,
                 with_student=False, teacher_checkpoint=None, **quant) -> AnalysisModel:
    """Teacher (and student) of a config.

    Without ``with_student``, ``checkpoint`` holds the teacher (else ``model.teacher_checkpoint``).
    With it, ``checkpoint`` is a trained distiller checkpoint and ``teacher_checkpoint`` overrides
    the config's; a student whose quantizers the checkpoint does not initialise must be
    calibrated (:func:`calibrate_fresh_student`).
    A plain OpenMMLab task config (not a QuantDistiller) gives its model as the teacher, and its
    student is quantized with the ``quant`` options (w_bits, a_bits, act_method).
    """
    cfg = load_config(config, cfg_options)
    model = build_config_model(cfg, config)
    if not _is_distiller(model):
        result = _task_model(model, checkpoint, with_student, quant, config)
    else:
        result = _distiller_model(model, checkpoint, with_student, teacher_checkpoint)
        result.input_size = config_input_size(cfg) or result.input_size
    result.input_size = _size2(input_size) or result.input_size or _warn_default_size()
    result.device = select_device(device)
    result.teacher.to(result.device).eval()
    if result.student is not None:
        result.student.to(result.device).eval()
    result.class_names = config_class_names(cfg)
    result.description = f'config {config}'
    return result


def _distiller_model(distiller, checkpoint, with_student, teacher_checkpoint) -> AnalysisModel:
    """Teacher and student of a QuantDistiller, with their weights loaded."""
    if with_student:
        _load_teacher_and_student(distiller, checkpoint, teacher_checkpoint)
    else:
        load_teacher_weights(distiller, checkpoint)
    pre = distiller.data_preprocessor
    return AnalysisModel(teacher=distiller.teacher, student=distiller.student if with_student else None,
                         pixel_mean=pre.pixel_mean.cpu(), pixel_std=pre.pixel_std.cpu(),
                         input_size=model_input_size(distiller.teacher), forward=distiller.task.forward_tensor)


def _load_teacher_and_student(distiller, checkpoint, teacher_checkpoint):
    """Teacher from ``teacher_checkpoint`` / the config / the distiller ``checkpoint``; student from
    ``checkpoint`` (else it stays the teacher's fresh quantized copy)."""
    configured = distiller.teacher_checkpoint
    teacher_loaded = False
    if teacher_checkpoint or (configured and (os.path.isfile(configured) or '://' in configured)):
        load_teacher_weights(distiller, teacher_checkpoint)
        teacher_loaded = True
    if checkpoint:
        teacher_loaded = load_distiller_checkpoint(distiller, checkpoint) or teacher_loaded
    if not teacher_loaded:
        missing = f' (model.teacher_checkpoint {configured!r} does not exist)' if configured else ''
        raise AnalysisInputError(f'no teacher weights{missing}: pass --teacher-checkpoint PATH, set '
                                 'model.teacher_checkpoint in the config, or pass a full distiller --checkpoint')


def _task_model(model, checkpoint, with_student, quant, config) -> AnalysisModel:
    """A plain OpenMMLab task model as teacher (weights from ``checkpoint``), its input
    normalisation from its own data preprocessor."""
    from mmengine.runner import load_checkpoint

    from ..models.tasks import build_task
    if checkpoint:
        _require_file(checkpoint, 'checkpoint', 'pass an existing --checkpoint file')
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    else:
        warnings.warn(f'{config} is not a mimiq_mm.QuantDistiller config and no --checkpoint was given; '
                      'the model keeps its initial weights')
    install_attention_capture(model)
    pre = getattr(model, 'data_preprocessor', None)
    mean, std = getattr(pre, 'mean', None), getattr(pre, 'std', None)
    student = quantize_model(copy.deepcopy(model), **quant) if with_student else None
    return AnalysisModel(teacher=model, student=student, input_size=model_input_size(model),
                         pixel_mean=(mean if mean is not None else torch.zeros(3, 1, 1)).float().cpu(),
                         pixel_std=(std if std is not None else torch.full((3, 1, 1), 255.)).float().cpu(),
                         forward=build_task(model).forward_tensor)


def student_needs_calibration(student) -> bool:
    """True when some activation quantizer of ``student`` was never initialised."""
    flags = [bool(q.initialized) for q in quantizers(student) if hasattr(q, 'initialized')]
    return not all(flags)


def calibrate_fresh_student(model: AnalysisModel, inputs, batch_size=16) -> bool:
    """Calibrate ``model.student`` on ``inputs`` if its quantizers are not initialised yet.

    Returns:
        bool: whether calibration ran.
    """
    if model.student is None or not student_needs_calibration(model.student):
        return False
    calibrate_student(model.student, inputs, batch_size, model.forward)
    return True


# ----------------------------------------------------------------------------- class names

def read_class_names(values) -> Optional[List[str]]:
    """``--classes``: names on the command line, or one file with a name per line."""
    if not values:
        return None
    if len(values) == 1 and os.path.isfile(values[0]):
        with open(values[0]) as f:
            return [line.strip() for line in f if line.strip()]
    return list(values)


def _dataset_cfgs(cfg):
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        dataset = (cfg.get(key) or {}).get('dataset')
        while dataset is not None:
            yield dataset
            dataset = dataset.get('dataset')  # dataset wrappers (RepeatDataset, ClassBalanced...)


def _names_from_dataset_cfg(dataset):
    classes = (dataset.get('metainfo') or {}).get('classes') or dataset.get('classes')
    if isinstance(classes, str) and os.path.isfile(classes):
        return read_class_names([classes])
    if classes:
        return list(classes)
    try:  # a named dataset class knows its classes (mmpretrain ImageNet, CIFAR10...)
        from mmengine.registry import DATASETS
        dataset_cls = DATASETS.get(dataset.get('type'))
        names = (getattr(dataset_cls, 'METAINFO', None) or {}).get('classes')
        if names:
            return list(names)
    except (KeyError, TypeError):
        pass
    # CustomDataset-style folders: the class names are the subfolders.
    folder = os.path.join(dataset.get('data_root', '') or '', (dataset.get('data_prefix') or '')
                          if isinstance(dataset.get('data_prefix'), str) else
                          (dataset.get('data_prefix') or {}).get('img_path', ''))
    if folder and os.path.isdir(folder):
        subdirs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
        return subdirs or None
    return None


def config_class_names(cfg) -> Optional[List[str]]:
    """Class names from a config's dataset (metainfo, ``classes``, the dataset class or its folders)."""
    for dataset in _dataset_cfgs(cfg):
        names = _names_from_dataset_cfg(dataset)
        if names:
            return names
    return None
