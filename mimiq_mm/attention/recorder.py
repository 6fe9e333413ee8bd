"""Collecting per-head attention from a model prepared with :func:`install_attention_capture`."""
from typing import Iterable, Optional, Sequence

from .core import AttentionRecord

RECORDABLE = ('scores', 'probs', 'outputs')


class AttentionRecorder:
    """Context manager that collects :class:`AttentionRecord` s during forward passes.

    Example::

        install_attention_capture(model)
        with AttentionRecorder(model, fields=('scores',)) as rec:
            model(images)
        rec.records  # one AttentionRecord per attention call, in call order

    Args:
        model (nn.Module): a model with capture installed.
        fields (Sequence[str]): which of 'scores', 'probs', 'outputs' to keep.
        layers (Iterable[int] | None): indices (in call order of the installed cores) to keep;
            None keeps all.
        detach (bool): detach the kept tensors (analysis) or keep the graph (losses).
    """

    def __init__(self, model, fields: Sequence[str] = RECORDABLE, layers: Optional[Iterable[int]] = None,
                 detach: bool = False):
        from .install import get_capture_context
        unknown = set(fields) - set(RECORDABLE)
        if unknown:
            raise ValueError(f'unknown attention fields {sorted(unknown)}; choose from {RECORDABLE}')
        self.context = get_capture_context(model)
        self.names = [core.attn_name for core in self.context.cores]
        self.fields = tuple(fields)
        self.detach = detach
        self.keep = None if layers is None else {self.names[i] for i in layers}
        self.records = []

    def wants(self, name):
        return self.keep is None or name in self.keep

    def add(self, name, layout, **tensors):
        kept = {}
        for key in self.fields:
            value = tensors[key]
            kept[key] = value.detach() if self.detach else value
        self.records.append(AttentionRecord(name=name, layout=layout, **kept))

    def clear(self):
        self.records = []

    def __enter__(self):
        self.records = []
        self.context.recorders.append(self)
        return self

    def __exit__(self, *exc):
        if self in self.context.recorders:
            self.context.recorders.remove(self)
        return False
