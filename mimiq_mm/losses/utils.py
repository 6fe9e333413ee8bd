"""Small helpers for losses that consume :class:`~mimiq_mm.attention.AttentionRecord` lists."""


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
