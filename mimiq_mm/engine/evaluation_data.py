"""Evaluation data is optional for a data-free run, required for a test run.

A MimiQ run needs only the checkpoint it quantizes; the base config's val/test dataset (ImageNet,
COCO, ADE20K) serves evaluation alone. The tools apply these config-level helpers before building
the Runner:

* :func:`skip_validation_without_data` (tools/train.py): when the validation data root does not
  exist, switch validation off and say so once, naming the path looked for and the setting;
* :func:`require_evaluation_data` (tools/test.py): a missing test data root is a one-line error.

A data root that exists is checked by building its dataset: empty or wrongly laid out data is an
:class:`EvaluationDataError`, never a silent skip.
"""
import copy
import logging
import os
import os.path as osp
from typing import List, Optional, Tuple

from mmengine.logging import print_log


class EvaluationDataError(ValueError):
    """The evaluation data a config points at is missing (where it is required) or unusable."""


def data_root_of(cfg, split: str) -> Optional[Tuple[str, str]]:
    """``(data_root, its config key)`` of the ``{split}_dataloader``'s dataset, looking through
    dataset wrappers (``dataset=dict(type='RepeatDataset', dataset=...)``); None when the config
    has no such dataloader or its dataset names no ``data_root``."""
    loader = cfg.get(f'{split}_dataloader')
    if not loader or not isinstance(loader.get('dataset'), dict):
        return None
    dataset, key = loader['dataset'], f'{split}_dataloader.dataset'
    while 'data_root' not in dataset and isinstance(dataset.get('dataset'), dict):
        dataset, key = dataset['dataset'], f'{key}.dataset'
    root = dataset.get('data_root')
    return (str(root), f'{key}.data_root') if root else None


def _evaluator_files(cfg, split: str) -> List[Tuple[str, str]]:
    """``(path, key)`` of the annotation files the evaluator reads itself (COCO's ``ann_file``)."""
    evaluator = cfg.get(f'{split}_evaluator')
    evaluators = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    files = []
    for index, metric in enumerate(evaluators):
        if isinstance(metric, dict) and metric.get('ann_file'):
            key = f'{split}_evaluator' + (f'[{index}]' if len(evaluators) > 1 else '') + '.ann_file'
            files.append((str(metric['ann_file']), key))
    return files


def _how_to_set(cfg, split: str, root: str, key: str) -> str:
    extra = ''.join(f' and {file_key}' for _, file_key in _evaluator_files(cfg, split))
    return f'put the data at {root} (a symlink works) or set {key}=PATH{extra} with --cfg-options'


def skip_validation_without_data(cfg) -> Optional[str]:
    """Switch validation off when its data root does not exist; returns the message said, if any.

    Validation data that exists is checked with :func:`check_evaluation_data`.
    """
    found = data_root_of(cfg, 'val')
    if found is None or cfg.get('val_cfg') is None:
        return None
    root, key = found
    if osp.exists(root):
        check_evaluation_data(cfg, 'val')
        return None
    message = (f'validation skipped: no evaluation data at {root} ({key}). Synthesis, calibration, '
               f'fine-tuning and the student export go on without it; to validate, '
               f'{_how_to_set(cfg, "val", root, key)}.')
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    print_log(message, logger='current', level=logging.WARNING)
    return message


def require_evaluation_data(cfg, split: str = 'test') -> None:
    """A missing ``{split}`` data root is a one-line :class:`EvaluationDataError`."""
    found = data_root_of(cfg, split)
    if found is None:
        return
    root, key = found
    if not osp.exists(root):
        raise EvaluationDataError(f'evaluation needs the {split} data, which is not at {root} ({key}): '
                                  f'{_how_to_set(cfg, split, root, key)}')
    check_evaluation_data(cfg, split)


def check_evaluation_data(cfg, split: str) -> None:
    """Fail with the fix when the existing ``{split}`` data root is empty or laid out wrongly.

    Builds the dataset as the Runner will (under the config's ``default_scope``), so a layout
    the dataset class cannot read fails here, with the path and the setting, before any work.
    """
    root, key = data_root_of(cfg, split)
    skip = (f'; or run without evaluation: --cfg-options {split}_cfg=None {split}_dataloader=None '
            f'{split}_evaluator=None' if split == 'val' else '')
    if not osp.isdir(root) or not os.listdir(root):
        raise EvaluationDataError(f'the evaluation data root {root} ({key}) is '
                                  f'{"empty" if osp.isdir(root) else "not a directory"}; '
                                  f'point {key} at the dataset{skip}')
    for path, file_key in _evaluator_files(cfg, split):
        if not osp.isfile(path):
            raise EvaluationDataError(f'the evaluator\'s annotation file {path} ({file_key}) does not exist; '
                                      f'set {file_key} to it{skip}')
    from mmengine.registry import DATASETS, DefaultScope
    try:
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
            dataset = DATASETS.build(copy.deepcopy(cfg[f'{split}_dataloader']['dataset']))
            if hasattr(dataset, 'full_init'):
                dataset.full_init()
            size = len(dataset)
    except Exception as error:  # the dataset class's own reason, e.g. a missing split folder
        raise EvaluationDataError(f'the evaluation data at {root} ({key}) does not have the layout the '
                                  f'config expects ({type(error).__name__}: {_first_line(error)}); fix it or point '
                                  f'{key} at a complete copy{skip}') from error
    if size == 0:
        raise EvaluationDataError(f'the evaluation data at {root} ({key}) holds no samples; point {key} '
                                  f'at the dataset{skip}')


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ''
