"""Synthetic sets chosen by the teacher's inter-head attention similarity (the paper's Fig. 3
experiment): rank the images of a set by how coherent the teacher's heads are on them and keep
the most coherent, the least coherent or a random part."""
import torch

from mimiq_mm.analysis.attention_stats import image_head_similarity
from mimiq_mm.datasets import SyntheticImageDataset
from mimiq_mm.synthesis import SyntheticSet, load_manifest

ORDERS = ('top', 'bottom', 'random')


def teacher_head_similarity(distiller, dataset: SyntheticImageDataset, batch_size=32) -> torch.Tensor:
    """(N,) mean inter-head attention similarity (|SSIM| of the head maps of each query, paper
    Eq. 9, over layers and queries) of the teacher on each image of ``dataset``."""
    dataset.load()
    inputs = distiller.data_preprocessor(dict(pixels=dataset.pixels), False)['inputs']
    return image_head_similarity(distiller.teacher, inputs, batch_size=batch_size,
                                 forward=distiller.task.forward_tensor)


def head_similarity_summary(distiller, dataset) -> dict:
    values = teacher_head_similarity(distiller, dataset)
    return dict(mean=float(values.mean()), std=float(values.std()) if len(values) > 1 else 0.0,
                min=float(values.min()), max=float(values.max()))


def select_synthetic_set(distiller, source_root: str, root: str, options: dict) -> None:
    """Write to ``root`` the part of the finished set at ``source_root`` given by ``options``:
    ``order`` ('top': most coherent first, 'bottom', 'random' with ``seed``) and ``fraction``.
    The new set is an ordinary finished set (manifest and PNGs) with settings that record the
    selection and the source's settings."""
    order, fraction = options['order'], float(options['fraction'])
    if order not in ORDERS:
        raise ValueError(f'set order must be one of {ORDERS}, got {order!r}')
    source = SyntheticImageDataset(source_root)
    similarity = teacher_head_similarity(distiller, source)
    count = max(1, int(round(fraction * len(source))))
    if order == 'random':
        ranked = torch.randperm(len(source), generator=torch.Generator().manual_seed(int(options.get('seed', 0))))
    else:
        ranked = similarity.argsort(descending=order == 'top')
    keep = ranked[:count].sort().values
    settings = dict(selection=dict(order=order, fraction=fraction, seed=options.get('seed', 0)),
                    source=load_manifest(source_root)['settings'], num_images=count, batch_size=count, base_seed=0)
    target = SyntheticSet(root, settings)
    target.write_batch(0, source.pixels[keep], source.labels[keep],
                       losses=dict(head_similarity=float(similarity[keep].mean())))
    target.merge()
