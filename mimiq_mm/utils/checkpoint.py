"""Checkpoint loading that works with ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` refuses to unpickle anything but tensors and a few containers unless
told otherwise. mmengine 0.10.7 predates that change: its checkpoints carry numpy values (the
message hub's ``HistoryBuffer`` logs, numpy scalars in ``meta``) and its URL loader goes through
``torch.hub.load_state_dict_from_url``, which still unpickles with ``weights_only=False``.

Policy implemented here:

* By default checkpoints are loaded with ``weights_only=True`` plus an allowlist of the few globals
  that mmengine checkpoints are known to contain (numpy array/scalar/dtype reconstruction and
  mmengine's ``HistoryBuffer``). Anything else is refused with an :class:`UnsafeCheckpointError`
  that names the offending globals and the opt-in.
* Trusted legacy files can be loaded with full unpickling, either per call (``trusted=True``) or for
  the whole process (environment variable ``MIMIQ_TRUSTED_CHECKPOINTS=1``). Only do this for files
  whose origin you trust: full unpickling can execute arbitrary code.
* A file that fails to load is first checked for damage (empty, truncated, not a ``torch.save``
  file): that is a :class:`CorruptCheckpointError` naming the file, never the advice to unpickle it.
* URLs are downloaded into torch.hub's cache only once the file received loads (see
  :mod:`mimiq_mm.utils.download`); a failed download is one :class:`CheckpointDownloadError` line.

:func:`patch_mmengine_checkpoint_loading` routes mmengine's own loading (``load_checkpoint``,
``_load_checkpoint``, ``Runner.load_checkpoint``/``Runner.resume``, ``init_cfg`` pretrained
weights) through the same policy.
"""
import functools
import importlib
import logging
import os
import os.path as osp
import pickle
from contextlib import contextmanager
from typing import Any, Callable, List, Optional

import torch

from .download import cached_checkpoint_path, download_checkpoint, download_error
from .integrity import checkpoint_damage

TRUST_ENV_VAR = 'MIMIQ_TRUSTED_CHECKPOINTS'
_TRUE_VALUES = ('1', 'true', 'yes', 'on')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects outside the safe-loading allowlist.

    Subclasses :class:`pickle.UnpicklingError` (what ``torch.load`` raises) so existing handlers
    still catch it.
    """


class CorruptCheckpointError(ValueError):
    """A checkpoint file is damaged (empty, truncated, altered) or not a ``torch.save`` file at all.

    ``reason`` holds what is wrong with the file, without the advice around it.
    """

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason


def checkpoints_trusted_by_env() -> bool:
    """Whether the user opted into full unpickling for every checkpoint of this process."""
    return os.environ.get(TRUST_ENV_VAR, '').strip().lower() in _TRUE_VALUES


# ----------------------------------------------------------------------------- allowlist


def _numpy_safe_globals() -> List[Any]:
    """numpy reconstruction helpers, under both the numpy 1.x and 2.x module names.

    A pickle records the module path of the numpy that wrote it, so a checkpoint written under
    numpy 2 names ``numpy._core.multiarray`` even when read under numpy 1.x and vice versa.
    """
    import numpy as np
    try:  # numpy >= 1.26 (numpy.core is a deprecated alias from 2.0 on)
        multiarray = importlib.import_module('numpy._core.multiarray')
    except ImportError:
        multiarray = importlib.import_module('numpy.core.multiarray')
    safe: List[Any] = []
    for module_path in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        safe.append((multiarray._reconstruct, f'{module_path}._reconstruct'))
        safe.append((multiarray.scalar, f'{module_path}.scalar'))
    safe.append((np.ndarray, 'numpy.ndarray'))
    safe.append((np.dtype, 'numpy.dtype'))
    # Unpickling a dtype calls BUILD on an instance of its concrete class (numpy.dtypes.Float64DType
    # ...), which the weights-only unpickler only permits for allowlisted types.
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes['All']}
    safe.extend(cls for cls in dtype_classes if cls is not np.dtype)
    return safe


def _history_buffer_getattr(owner: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` restricted to HistoryBuffer's statistics methods.

    ``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``.
    Allowlisting the real ``getattr`` would let a file fetch any attribute of any allowlisted
    object, so only this narrow form is accepted.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    # The built-in four are only put into _statistics_methods by HistoryBuffer.__init__, so they
    # are listed explicitly for loads that happen before any buffer exists.
    statistics = {'min', 'max', 'current', 'mean'} | set(HistoryBuffer._statistics_methods)
    if owner is HistoryBuffer and name in statistics:
        return getattr(HistoryBuffer, name)
    raise UnsafeCheckpointError(
        f'Refusing getattr({owner!r}, {name!r}) while loading a checkpoint: only the statistics '
        'methods of mmengine.logging.HistoryBuffer are allowed.')


def _mmengine_safe_globals() -> List[Any]:
    from mmengine.logging.history_buffer import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')]


@functools.lru_cache(maxsize=1)
def checkpoint_safe_globals() -> tuple:
    """Every global beyond torch's defaults that safe loading accepts."""
    return tuple(_numpy_safe_globals() + _mmengine_safe_globals())


@contextmanager
def allowlisted_globals():
    """Temporarily extend torch's weights-only allowlist with :func:`checkpoint_safe_globals`.

    Only entries not already allowlisted are added, because leaving the context removes what it
    added: nested uses and a user's own ``add_safe_globals`` calls stay intact.
    """
    already_allowed = set(torch.serialization.get_safe_globals())
    missing = [item for item in checkpoint_safe_globals() if item not in already_allowed]
    with torch.serialization.safe_globals(missing):
        yield


# ----------------------------------------------------------------------------- loading


def _opt_in_hint() -> str:
    return (f'If you trust where this file came from, opt in to full unpickling (which can run '
            f'arbitrary code) with the environment variable {TRUST_ENV_VAR}=1 or, from Python, '
            f'load_checkpoint_file(path, trusted=True).')


def _opt_in_hint_for_other_schemes() -> str:
    # The bytes of these schemes never reach a file here, so damage cannot be told apart from a
    # forbidden object: a local copy gets both checks.
    return (f'The file is damaged or holds objects outside the allowlist: copy it to a local path and '
            f'load that, which tells the two apart (and honours {TRUST_ENV_VAR}=1 for files whose '
            f'origin you trust).')


def _global_name(allowlist_item: Any) -> str:
    if isinstance(allowlist_item, tuple):
        return allowlist_item[1]
    return f'{allowlist_item.__module__}.{allowlist_item.__qualname__}'


def _unsafe_checkpoint_error(source: str, error: Exception, local_file: Optional[str] = None,
                             hint: Optional[str] = None) -> UnsafeCheckpointError:
    offending = ''
    if local_file is not None:
        try:
            allowed = {_global_name(item) for item in checkpoint_safe_globals()}
            unsafe = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(local_file)
                      if name not in allowed]
            if unsafe:
                offending = f' It contains objects outside the allowlist: {", ".join(sorted(unsafe))}.'
        except Exception:  # listing globals is only a courtesy; the load error below is the fact
            pass
    return UnsafeCheckpointError(
        f'Refused to load checkpoint {source} with safe (weights_only) loading.{offending} '
        f'{hint or _opt_in_hint()}\nOriginal error: {error}')


def _missing_checkpoint_error(path: str, config_key: str, note: str = '') -> FileNotFoundError:
    return FileNotFoundError(
        f'Checkpoint file not found: {path}. Set `{config_key}` in the config (for example '
        f'`--cfg-options {config_key}=/path/to/checkpoint.pth`) to an existing checkpoint file.'
        f'{note}')


def load_checkpoint_file(path: str, map_location: Any = 'cpu', trusted: bool = False,
                         config_key: str = 'load_from', source: Optional[str] = None) -> Any:
    """Load a local checkpoint file under the safe-loading policy of this module.

    Args:
        path: local file path (``~`` is expanded).
        map_location: forwarded to :func:`torch.load`.
        trusted: load with full unpickling; also enabled by ``MIMIQ_TRUSTED_CHECKPOINTS=1``.
        config_key: the config key that supplied ``path``, named in the missing-file error.
        source: how to name the file in errors (default ``path``; a URL for downloads).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CorruptCheckpointError: the file is damaged or not a ``torch.save`` file.
        UnsafeCheckpointError: the file holds objects outside the allowlist and was not trusted.
    """
    path = osp.expanduser(str(path))
    if not osp.isfile(path):
        raise _missing_checkpoint_error(path, config_key)
    weights_only = not (trusted or checkpoints_trusted_by_env())
    try:
        if not weights_only:
            return torch.load(path, map_location=map_location, weights_only=False)
        with allowlisted_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # Random bytes fail the weights-only unpickler like a forbidden class does, so the file's
        # structure decides which of the two it is.
        damage = checkpoint_damage(path, error)
        if damage is not None:
            raise CorruptCheckpointError(
                f'Checkpoint {source or path} is damaged or not a PyTorch checkpoint ({damage}); replace '
                'it with a complete copy (download or save it again).', reason=damage) from error
        if weights_only and isinstance(error, pickle.UnpicklingError):
            raise _unsafe_checkpoint_error(source or path, error, local_file=path) from error
        raise


def load_checkpoint_url(url: str, map_location: Any = None, model_dir: Optional[str] = None,
                        progress: bool = False, trusted: bool = False) -> Any:
    """Load a checkpoint URL under the same policy, downloading it into torch.hub's cache once.

    A cached copy that turns out damaged is deleted and downloaded again; a new download enters
    the cache only after it has loaded, so an interrupted one never passes for complete.

    Raises:
        CheckpointDownloadError: the URL cannot be fetched, or what arrived is incomplete.
        UnsafeCheckpointError: as :func:`load_checkpoint_file` (the file is cached all the same,
            so that the trust opt-in does not download it again).
    """
    cached = cached_checkpoint_path(url, model_dir)
    if osp.isfile(cached):
        try:
            return load_checkpoint_file(cached, map_location, trusted, source=f'{cached} (from {url})')
        except CorruptCheckpointError as error:
            os.remove(cached)
            from mmengine.logging import print_log
            print_log(f'{error} Removed it; downloading again.', logger='current', level=logging.WARNING)
    pending = download_checkpoint(url, cached, progress)
    try:
        checkpoint = load_checkpoint_file(pending, map_location, trusted, source=url)
    except CorruptCheckpointError as error:
        os.remove(pending)
        raise download_error(url, cached, f'the file received is incomplete or damaged ({error.reason})') from error
    except UnsafeCheckpointError:
        os.replace(pending, cached)
        raise
    except BaseException:
        os.remove(pending)
        raise
    os.replace(pending, cached)
    return checkpoint


# ----------------------------------------------------------------------------- mmengine patch


def load_from_local_safely(filename: str, map_location: Any = None) -> Any:
    # mmengine reaches local files from `load_from`/resume and from pretrained init_cfg entries.
    path = osp.expanduser(filename)
    if not osp.isfile(path):
        raise _missing_checkpoint_error(
            path, 'load_from', note=' If the path came from a pretrained `init_cfg`, set its '
            '`checkpoint` key (e.g. model.backbone.init_cfg.checkpoint) instead.')
    return load_checkpoint_file(path, map_location=map_location)


def load_from_http_safely(filename: str, map_location: Any = None,
                           model_dir: Optional[str] = None, progress: bool = False) -> Any:
    """Replacement for mmengine's ``load_from_http``: rank 0 downloads first, then the others."""
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    checkpoint = None
    if rank == 0:
        checkpoint = load_checkpoint_url(filename, map_location, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load_checkpoint_url(filename, map_location, model_dir, progress)
    return checkpoint


def _guarded_loader(loader: Callable) -> Callable:
    """Wrap one of mmengine's remaining scheme loaders (pavi, ceph, open-mmlab cache).

    They call ``torch.load`` without ``weights_only``, which means safe loading on torch >= 2.6;
    the wrapper adds the allowlist and turns a refusal into an explanatory error. The trust opt-in
    cannot reach their ``torch.load`` call, so the error suggests loading a local copy instead.
    """
    @functools.wraps(loader)
    def load(filename, *args, **kwargs):
        try:
            with allowlisted_globals():
                return loader(filename, *args, **kwargs)
        except pickle.UnpicklingError as error:
            if isinstance(error, UnsafeCheckpointError):
                raise
            raise _unsafe_checkpoint_error(
                filename, error, hint=_opt_in_hint_for_other_schemes()) from error

    load._mimiq_guarded = True
    return load


_LOCAL_PREFIX = ''
_HTTP_PREFIXES = ('http://', 'https://')


def patch_mmengine_checkpoint_loading() -> None:
    """Route mmengine's checkpoint loading through this module's safe-loading policy.

    Idempotent. Covers every path through ``CheckpointLoader`` (``load_checkpoint``,
    ``_load_checkpoint``, ``Runner.load_checkpoint``/``resume``, ``init_cfg`` pretrained weights,
    ``CheckpointHook``): local files and http(s) URLs get the full policy (allowlist, clear errors,
    ``MIMIQ_TRUSTED_CHECKPOINTS`` opt-in); other schemes get the allowlist and clear errors.
    """
    from mmengine.runner import checkpoint as mm_checkpoint
    loader_registry = mm_checkpoint.CheckpointLoader
    if getattr(loader_registry, '_mimiq_patched', False):
        return
    for prefix, loader in list(loader_registry._schemes.items()):
        if prefix == _LOCAL_PREFIX or prefix in _HTTP_PREFIXES:
            continue
        if not getattr(loader, '_mimiq_guarded', False):
            loader_registry._schemes[prefix] = _guarded_loader(loader)
    loader_registry.register_scheme(_LOCAL_PREFIX, load_from_local_safely, force=True)
    loader_registry.register_scheme(_HTTP_PREFIXES, load_from_http_safely, force=True)
    # torchvision://, mmcls:// and open-mmlab:// URLs call the module-level load_from_http directly.
    mm_checkpoint.load_from_http = load_from_http_safely
    loader_registry._mimiq_patched = True
