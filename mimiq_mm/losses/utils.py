"""Small helpers for losses that consume :class:`~mimiq_mm.attention.AttentionRecord` lists."""
import torch


class AutocastFreeFunction(torch.autograd.Function):
    """An autograd function whose ``_forward`` and ``_backward`` run with autocast off, so that
    statistics stay in fp32 inside a bf16/fp16 region. Subclasses define ``_forward(ctx, x, ...)``
    (its first tensor argument names the device) and ``_backward(ctx, *grads)``."""

    @classmethod
    def forward(cls, ctx, x, *args):
        ctx.device_type = x.device.type
        with torch.autocast(x.device.type, enabled=False):
            return cls._forward(ctx, x, *args)

    @classmethod
    def backward(cls, ctx, *grads):
        with torch.autocast(ctx.device_type, enabled=False):
            return cls._backward(ctx, *grads)



def select_records(records, layers=None):
    """Records picked by ``layers``.

    Args:
        records (list[AttentionRecord]): records in call order.
        layers (Sequence[int] | None): indices into ``records`` (negatives count from the end);
            None keeps all.

    Returns:
        list[AttentionRecord]
    """
    records = list(records)
    if layers is None:
        return records
    num = len(records)
    picked = []
    for index in layers:
        if not -num <= index < num:
            raise IndexError(f'layer index {index} out of range for {num} attention records')
        picked.append(records[index])
    return picked


def require_field(record, field):
    """``record.<field>``, or a ValueError saying which recorder field is missing."""
    value = getattr(record, field)
    if value is None:
        raise ValueError(f"attention record '{record.name}' has no '{field}'; record it with "
                         f"AttentionRecorder(model, fields=(..., '{field}'))")
    return value
