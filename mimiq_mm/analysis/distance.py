"""Teacher vs quantized-student distance of the per-head attention outputs, per layer.

The metrics are those of L_HAD (:class:`~mimiq_mm.losses.HeadAttentionDistillLoss`), applied to
one head at a time, so a layer's value is exactly L_HAD restricted to that layer.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

import torch

from ..attention import AttentionRecord, attention_cores
from ..losses import HAD_METRICS, HeadAttentionDistillLoss
from .attention_stats import check_layers, plain_forward, record_attention
from .errors import AnalysisInputError
from .images import batches

DEFAULT_METRICS = ('dssim', 'mse')


@dataclass
class HeadDistances:
    """Distances between teacher and student head outputs.

    Attributes:
        layer_names (list[str]): the measured attention layers.
        layer_indices (list[int]): their indices among the model's attention layers.
        per_head (dict[str, list[Tensor]]): metric -> one (H_l,) tensor per layer, averaged over
            images (and windows).
        num_images (int): how many images were measured.
    """
    layer_names: List[str]
    layer_indices: List[int]
    per_head: Dict[str, List[torch.Tensor]] = field(default_factory=dict)
    num_images: int = 0

    def per_layer(self, metric) -> List[float]:
        """The head average of each layer (what L_HAD averages over)."""
        return [float(values.mean()) for values in self.per_head[metric]]

    def to_dict(self):
        return dict(num_images=self.num_images,
                    layers=[dict(index=i, name=n) for i, n in zip(self.layer_indices, self.layer_names)],
                    per_layer={m: self.per_layer(m) for m in self.per_head},
                    per_head={m: [v.tolist() for v in values] for m, values in self.per_head.items()},
                    mean={m: sum(self.per_layer(m)) / len(self.layer_names) for m in self.per_head})


def _one_head(record: AttentionRecord, head: int) -> AttentionRecord:
    return AttentionRecord(name=record.name, layout=record.layout, outputs=record.outputs[:, head:head + 1])


def record_head_distances(teacher_record, student_record, metric) -> torch.Tensor:
    """(H,) distance of each head's output attn·v (prefix tokens dropped), averaged over sequences."""
    loss = HeadAttentionDistillLoss(metric=metric)
    num_heads = teacher_record.outputs.shape[1]
    return torch.stack([loss([_one_head(teacher_record, h)], [_one_head(student_record, h)])
                        for h in range(num_heads)])


def check_metrics(metrics: Sequence[str]):
    unknown = [m for m in metrics if m not in HAD_METRICS]
    if unknown:
        raise AnalysisInputError(f'unknown distance metrics {unknown}; choose from {HAD_METRICS}')
    return list(metrics)


@torch.no_grad()
def head_distances(teacher, student, inputs, metrics=DEFAULT_METRICS, layers=None, batch_size=16,
                   forward: Callable = plain_forward) -> HeadDistances:
    """Per-layer, per-head distance of teacher and student head outputs on ``inputs``.

    Args:
        teacher, student (nn.Module): models with attention capture and the same layers.
        inputs (Tensor): normalised (N, 3, H, W).
        metrics (Sequence[str]): L_HAD metrics ('dssim', 'mse', 'l1', 'kl').
        layers (Sequence[int] | None): attention layer indices; None = all.
        forward (callable): ``forward(model, inputs)``.
    """
    metrics = check_metrics(metrics)
    num_layers = len(attention_cores(teacher))
    if len(attention_cores(student)) != num_layers:
        raise AnalysisInputError(f'teacher has {num_layers} attention layers but the student has '
                                 f'{len(attention_cores(student))}; they must be the same architecture')
    layers = check_layers(layers, num_layers)
    sums = {m: None for m in metrics}
    names = None
    for part in batches(inputs.shape[0], batch_size):
        t_records = record_attention(teacher, inputs[part], ('outputs',), layers, forward)
        s_records = record_attention(student, inputs[part], ('outputs',), layers, forward)
        names = [r.name for r in t_records]
        weight = part.stop - part.start  # batch-weighted, so the result is the mean over all images
        for metric in metrics:
            values = [record_head_distances(t, s, metric).cpu() * weight for t, s in zip(t_records, s_records)]
            sums[metric] = values if sums[metric] is None else [a + b for a, b in zip(sums[metric], values)]
    count = inputs.shape[0]
    return HeadDistances(layer_names=names, layer_indices=layers, num_images=count,
                         per_head={m: [v / count for v in sums[m]] for m in metrics})
