"""Installing attention capture on a model, in place."""
import types

import torch.nn as nn

from .adapters import ADAPTERS
from ..utils.wrappers import unwrap_model
from .core import AttentionCore, CaptureContext

_CONTEXT_ATTR = '_mimiq_capture'


def supported_families():
    return [adapter.family for adapter in ADAPTERS]


class UnsupportedBackboneError(TypeError):
    pass


def _looks_like_attention(module):
    name = type(module).__name__.lower()
    return 'attention' in name or 'msa' in name


def _find_adapter(module):
    for adapter in ADAPTERS:
        if adapter.matches(module):
            return adapter
    return None


def install_attention_capture(model: nn.Module) -> CaptureContext:
    """Route every supported attention module of ``model`` through an :class:`AttentionCore`.

    Idempotent. Returns the model's :class:`CaptureContext` (``context.cores`` lists the cores in
    module order). Raises :class:`UnsupportedBackboneError` naming the supported families when the
    model has attention modules of an unknown kind, or none at all.
    """
    if _CONTEXT_ATTR in model.__dict__:
        return model.__dict__[_CONTEXT_ATTR]
    parents = {}
    for parent in model.modules():
        for child in parent.children():
            parents[id(child)] = parent
    context = CaptureContext()
    cores, unknown = [], []
    handled = set()
    for name, module in model.named_modules():
        if id(module) in handled or isinstance(module, AttentionCore):
            continue
        adapter = _find_adapter(module)
        if adapter is None:
            if _looks_like_attention(module) and not any(
                    _find_adapter(m) for m in module.modules() if m is not module):
                unknown.append(f'{name} ({type(module).__module__}.{type(module).__qualname__})')
            continue
        adapter.prepare(module)
        core = AttentionCore(name, **adapter.core_geometry(module, parents.get(id(module))))
        core.__dict__['context'] = context
        module.mimiq_core = core
        module.forward = types.MethodType(adapter.forward, module)
        handled.update(id(m) for m in module.modules())
        cores.append(core)
    if unknown or not cores:
        found = ', '.join(unknown) if unknown else 'no attention modules at all'
        raise UnsupportedBackboneError(
            f'cannot capture attention of {type(model).__name__}: found {found}. Supported backbone '
            'families: ' + '; '.join(supported_families()) + '. Use one of these backbones, or add an '
            'AttentionAdapter for yours in mimiq_mm/attention/adapters/.')
    context.cores = cores
    patch_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if patch_conv is not None:
        patch_conv.register_forward_hook(context.on_patch_embed)
    model.__dict__[_CONTEXT_ATTR] = context
    return context


def get_capture_context(model: nn.Module) -> CaptureContext:
    """The model's :class:`CaptureContext`; installs capture if it is not there yet."""
    model = unwrap_model(model)
    return install_attention_capture(model)


def attention_cores(model: nn.Module):
    """The installed :class:`AttentionCore` s of ``model`` in module order."""
    return list(get_capture_context(model).cores)
