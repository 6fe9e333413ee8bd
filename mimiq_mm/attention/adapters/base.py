"""The adapter interface: how one backbone family's attention module runs through AttentionCore.

An adapter recognises its family's attention modules (by class), tells the core their static
geometry (heads, window, shift) and provides a replacement ``forward`` that computes q, k, v with
the module's own weights, calls ``self.mimiq_core`` and applies the output projection. Nothing is
traced: the module stays where it is, with the same parameters and state_dict keys.
"""
from typing import Optional

import torch.nn as nn


class AttentionAdapter:
    """Base class of the per-family adapters."""

    #: human-readable family name, used in error messages
    family = ''

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def core_geometry(self, module: nn.Module, parent: Optional[nn.Module]) -> dict:
        """kwargs of :class:`AttentionCore` besides the name: ``num_heads``, optionally
        ``window_size`` and ``shift_size``."""
        return dict(num_heads=module.num_heads)

    def prepare(self, module: nn.Module) -> None:
        """Optional in-place changes before the forward is replaced."""

    @staticmethod
    def forward(module, *args, **kwargs):
        """The replacement forward, called with the attention module as ``module``."""
        raise NotImplementedError


def class_path(module):
    cls = type(module)
    return f'{cls.__module__}.{cls.__qualname__}'


def is_instance_of(module, *qualified_names):
    """True if any class in ``module``'s MRO has one of ``qualified_names`` ('pkg.mod.Class').

    Comparing names keeps adapters importable when the family's package is not installed, and
    tolerates classes moving inside a package (e.g. timm's Attention between releases) when a
    name is given as just the class name with a package prefix ('timm:Attention').
    """
    for cls in type(module).__mro__:
        full = f'{cls.__module__}.{cls.__qualname__}'
        for name in qualified_names:
            if ':' in name:
                pkg, cls_name = name.split(':')
                if cls.__qualname__ == cls_name and cls.__module__.split('.')[0] == pkg:
                    return True
            elif full == name:
                return True
    return False
