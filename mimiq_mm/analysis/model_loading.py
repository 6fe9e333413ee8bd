"""Getting the models to analyse: the teacher (and student) of a mimiq_mm config or of a plain
OpenMMLab task config (through :func:`mimiq_mm.apis.init_model`), or a timm model for a quick
look, with the input normalisation and size the model expects."""
import copy
import json
import os
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..apis import init_model, load_weights
from ..attention import install_attention_capture
from ..quant import QuantConfig, quantize_model, quantizers_initialized
from ..models import calibrate_activations
from .attention_stats import plain_forward
from .errors import AnalysisInputError
from .images import batches, normalize_pixels, size_hw

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


def _require_file(path, what, hint):
    if not (os.path.isfile(path) or '://' in path):
        raise AnalysisInputError(f'{what} {path!r} not found; {hint}')


def _normalisation(preprocessor):
    """(mean, std), each (3, 1, 1) in 0-255 units, of a data preprocessor (identity if it has none)."""
    mean, std = getattr(preprocessor, 'mean', None), getattr(preprocessor, 'std', None)
    mean = mean if mean is not None else getattr(preprocessor, 'pixel_mean', None)
    std = std if std is not None else getattr(preprocessor, 'pixel_std', None)
    return ((mean if mean is not None else torch.zeros(3, 1, 1)).float().cpu().view(3, 1, 1),
            (std if std is not None else torch.full((3, 1, 1), 255.)).float().cpu().view(3, 1, 1))


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


def timm_model(name, kwargs=None, checkpoint=None, device='cpu', input_size=None, with_student=False,
               w_bits=4, a_bits=4, act_method='minmax') -> AnalysisModel:
    """A timm model as teacher (random weights unless ``checkpoint``), optionally with a fresh
    fake-quantized student (calibrate it with :func:`calibrate_fresh_student`)."""
    import timm
    kwargs = dict(kwargs or {})
    try:
        teacher = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise AnalysisInputError(f'cannot build timm model {name!r} with {kwargs}: {err}') from err
    if checkpoint:
        _require_file(checkpoint, 'checkpoint', 'pass an existing --checkpoint file')
        try:
            load_weights(teacher, checkpoint, what=f'timm model {name}')
        except ValueError as err:
            raise AnalysisInputError(f'{err} (check --timm-model/--timm-kwargs)') from err
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
    size = size_hw(input_size) or model_input_size(teacher) or _warn_default_size()
    return AnalysisModel(teacher=teacher, pixel_mean=mean, pixel_std=std, input_size=size, device=device,
                         student=student, description=f'timm:{name} {json.dumps(kwargs)}')


# ----------------------------------------------------------------------------- configs

def config_model(config, checkpoint=None, cfg_options=None, device='auto', input_size=None,
                 with_student=False, teacher_checkpoint=None, **quant) -> AnalysisModel:
    """Teacher (and student) of a config, loaded by :func:`mimiq_mm.apis.init_model`.

    Without ``with_student``, ``checkpoint`` holds the teacher (a teacher checkpoint or a trained
    distiller checkpoint; else ``model.teacher_checkpoint``). With it, ``checkpoint`` is a trained
    distiller checkpoint or a student export and ``teacher_checkpoint`` overrides the config's; a
    student whose quantizers the checkpoint does not initialise must be calibrated
    (:func:`calibrate_fresh_student`). A plain OpenMMLab task config (not a QuantDistiller) gives
    its model as the teacher, and its student is quantized with the ``quant`` options
    (w_bits, a_bits, act_method).
    """
    from ..apis import load_config
    from ..models import QuantDistiller
    if checkpoint:
        _require_file(checkpoint, 'checkpoint' if with_student else 'teacher checkpoint',
                      'pass an existing --checkpoint file')
    options = dict(cfg_options or {})
    try:
        cfg = load_config(config, options)
        is_distiller = cfg.model.get('type') in ('mimiq_mm.QuantDistiller', 'QuantDistiller')
        if is_distiller and teacher_checkpoint:
            options['model.teacher_checkpoint'] = teacher_checkpoint
        if is_distiller and not with_student and checkpoint:
            options['model.teacher_checkpoint'] = checkpoint  # a teacher or distiller checkpoint
            checkpoint = None
        model = init_model(cfg, checkpoint, device=str(select_device(device)), cfg_options=options,
                           part='model' if is_distiller and with_student else 'teacher')
    except (ValueError, FileNotFoundError) as err:
        raise AnalysisInputError(str(err)) from err
    if isinstance(model, QuantDistiller):
        teacher, student, task = model.teacher, model.student, model.task
    else:
        from ..tasks import build_task
        if checkpoint is None and not is_distiller:  # a distiller's teacher came from teacher_checkpoint
            warnings.warn(f'{config} is not a mimiq_mm.QuantDistiller config and no --checkpoint was given; '
                          'the model keeps its initial weights')
        install_attention_capture(model)
        teacher, task = model, build_task(model)
        student = (quantize_model(copy.deepcopy(model), QuantConfig.from_any(quant).with_task_starts(task)).eval()
                   if with_student else None)
    pre = model.data_preprocessor if isinstance(model, QuantDistiller) else getattr(teacher, 'data_preprocessor', None)
    mean, std = _normalisation(pre)
    synthesis_size = size_hw(((cfg.get('train_cfg') or {}).get('synthesis') or {}).get('image_size'))
    size = size_hw(input_size) or synthesis_size or model_input_size(teacher) or _warn_default_size()
    return AnalysisModel(teacher=teacher, student=student, pixel_mean=mean, pixel_std=std, input_size=size,
                         forward=task.forward_tensor, device=select_device(device), class_names=config_class_names(cfg),
                         description=f'config {config}')


def calibrate_student(model: AnalysisModel, inputs, batch_size=16) -> None:
    """Calibrate ``model.student``'s activation quantizers on ``inputs`` (N, 3, H, W), in batches
    (:func:`mimiq_mm.models.calibrate_activations`, the pass fine-tuning starts with)."""
    calibrate_activations(model.student, (inputs[part] for part in batches(inputs.shape[0], batch_size)),
                          model.forward)


def calibrate_fresh_student(model: AnalysisModel, inputs, batch_size=16) -> bool:
    """Calibrate ``model.student`` on ``inputs`` if its quantizers are not initialised yet.

    Returns:
        bool: whether calibration ran.
    """
    if model.student is None or quantizers_initialized(model.student):
        return False
    calibrate_student(model, inputs, batch_size)
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
