"""From ``train_cfg.synthesis`` to a synthesizer and a finished synthetic set on disk.

``train_cfg.synthesis`` is one flat dict. Four keys describe the set and are read here
(:data:`SET_OPTIONS`, with their defaults); every other key is an option of the registered
synthesizer (``type``, default :class:`ImageSynthesizer`, whose signature holds the defaults).

:class:`SyntheticSetMaker` is the one way to make a set: the fine-tuning loop,
``tools/synthesize.py`` and the benchmarks use it.
"""
import inspect
import os.path as osp
from dataclasses import dataclass
from typing import Callable, Optional

from mmengine.logging import print_log

from ..registry import SYNTHESIZERS
from .pipeline import synthesize_set
from .store import SyntheticSet, file_sha256

#: the set's own options and their defaults (paper: 10K images, batch 32)
SET_OPTIONS = dict(num_images=10000, batch_size=32, seed=0, out_dir=None)


def set_options(cfg: Optional[dict]) -> dict:
    """The :data:`SET_OPTIONS` of ``cfg`` with defaults filled in."""
    cfg = dict(cfg or {})
    return {key: cfg.get(key, default) for key, default in SET_OPTIONS.items()}


def build_synthesizer(cfg: Optional[dict], distiller):
    """The synthesizer of ``train_cfg.synthesis`` for ``distiller`` (a :class:`QuantDistiller`):
    its teacher, task adapter and input normalisation are filled in."""
    options = {k: v for k, v in dict(cfg or {}).items() if k not in SET_OPTIONS}
    options.setdefault('type', 'ImageSynthesizer')
    if options.get('image_size') is None:
        raise ValueError('set train_cfg.synthesis.image_size to the input size the teacher was trained on, '
                         'e.g. (224, 224)')
    pre = distiller.data_preprocessor
    runtime = dict(teacher=distiller.teacher, task=distiller.task, pixel_mean=pre.pixel_mean.flatten().tolist(),
                   pixel_std=pre.pixel_std.flatten().tolist())
    synthesizer_cls = SYNTHESIZERS.get(options['type'])
    if synthesizer_cls is None:
        raise ValueError(f"unknown synthesizer type {options['type']!r}; registered: "
                         f'{sorted(SYNTHESIZERS.module_dict)}')
    known = set(inspect.signature(synthesizer_cls).parameters) - set(runtime)
    unknown = set(options) - known - {'type'}
    if unknown:
        raise ValueError(f'unknown synthesis options {sorted(unknown)}; known: '
                         f'{sorted(known | set(SET_OPTIONS))}')
    # The class from the registry, built here: Registry.build would look in the config's default
    # scope (mmpretrain, mmdet, ...) first, which has no synthesizers.
    return synthesizer_cls(**{k: v for k, v in options.items() if k != 'type'}, **runtime)


def synthetic_root(cfg: Optional[dict], work_dir: str, method: str) -> str:
    """Where the set lives: ``out_dir``, else ``<work_dir>/synthetic_<method>``."""
    return set_options(cfg)['out_dir'] or osp.join(work_dir, f'synthetic_{method}')


@dataclass
class SyntheticSetMaker:
    """A synthetic set on disk and the synthesizer that makes it: :meth:`from_config` opens the
    set (its folder and the settings that define it), :meth:`make` makes what is missing.

    Attributes:
        synthesizer: built by :func:`build_synthesizer`.
        synthetic_set (SyntheticSet): at its root, with the synthesizer's, the set's and the
            teacher's settings (path and sha256), so that a folder made otherwise is refused.
    """
    synthesizer: object
    synthetic_set: SyntheticSet

    @classmethod
    def from_config(cls, cfg: Optional[dict], distiller, work_dir: Optional[str] = None,
                    root: Optional[str] = None) -> 'SyntheticSetMaker':
        """The set of ``train_cfg.synthesis`` for ``distiller``'s teacher, at ``root``, else at
        ``out_dir``, else at ``<work_dir>/synthetic_<method>``."""
        synthesizer = build_synthesizer(cfg, distiller)
        options = set_options(cfg)
        teacher_checkpoint = distiller.teacher_checkpoint
        settings = dict(synthesizer.settings(), num_images=options['num_images'], batch_size=options['batch_size'],
                        base_seed=options['seed'], teacher_checkpoint=teacher_checkpoint,
                        teacher_sha256=file_sha256(teacher_checkpoint))
        root = root or synthetic_root(cfg, work_dir, synthesizer.method)
        return cls(synthesizer, SyntheticSet(root, _jsonable(settings)))

    def make(self, visualizer=None, should_stop: Optional[Callable[[], bool]] = None) -> bool:
        """Make (or finish) the set; whether it is complete (:func:`prepare_synthetic_set`)."""
        return prepare_synthetic_set(self.synthesizer, self.synthetic_set, visualizer, should_stop)


def prepare_synthetic_set(synthesizer, synthetic_set: SyntheticSet, visualizer=None,
                          should_stop: Optional[Callable[[], bool]] = None) -> bool:
    """Make what is missing of ``synthetic_set`` (nothing if it is finished).

    Returns:
        bool: whether the set is complete (False when ``should_stop`` ended the work early).
    """
    if synthetic_set.is_complete():
        print_log(f'using the finished synthetic set in {synthetic_set.root}', logger='current')
        return True
    synthesizer.check_image_size()
    return synthesize_set(synthesizer, synthetic_set, synthesizer.num_classes(), visualizer=visualizer,
                          should_stop=should_stop)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
