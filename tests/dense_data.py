"""Tiny COCO-format and ADE20K-format datasets for the dense-task tests, drawn on the fly.

Each image holds a few filled shapes (rectangles and polygons) on a textured background; the
COCO annotations carry their boxes and polygon masks, the ADE20K label PNGs their class ids.
"""
import json
import os

import numpy as np
from PIL import Image, ImageDraw


def _shapes(rng, size, count):
    """``count`` random shapes: (kind, polygon [(x, y), ...]) inside a ``size`` x ``size`` image."""
    shapes = []
    for _ in range(count):
        w, h = rng.integers(size // 5, size // 2, size=2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        if rng.random() < 0.5:
            poly = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
        else:  # a triangle / diamond
            poly = [(x0 + w // 2, y0), (x0 + w, y0 + h // 2), (x0 + w // 2, y0 + h), (x0, y0 + h // 2)][
                :3 + int(rng.integers(0, 2))]
        shapes.append([(int(x), int(y)) for x, y in poly])
    return shapes


def _background(rng, size):
    base = rng.integers(40, 200, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_coco(root, num_images=4, size=64, seed=0, split='val2017', category_ids=(1, 3, 18)):
    """Write ``root/<split>/*.jpg`` and ``root/annotations/instances_<split>.json``.

    The category list is COCO's 80 classes (ids 1..80, in CocoDataset's order), so mmdet's
    ``CocoDataset`` and ``CocoMetric`` work unchanged; objects use ``category_ids``.

    Returns:
        str: the annotation file path.
    """
    from mmdet.datasets import CocoDataset
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    classes = CocoDataset.METAINFO['classes']
    categories = [dict(id=i + 1, name=name, supercategory='thing') for i, name in enumerate(classes)]
    images, annotations = [], []
    for img_id in range(1, num_images + 1):
        array = _background(rng, size)
        canvas = Image.fromarray(array)
        draw = ImageDraw.Draw(canvas)
        for poly in _shapes(rng, size, int(rng.integers(1, 4))):
            color = tuple(int(c) for c in rng.integers(0, 255, size=3))
            draw.polygon(poly, fill=color)
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            mask = Image.new('L', (size, size))
            ImageDraw.Draw(mask).polygon(poly, fill=1)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=img_id, category_id=int(rng.choice(category_ids)),
                bbox=[x0, y0, x1 - x0, y1 - y0], area=float(np.asarray(mask).sum()), iscrowd=0,
                segmentation=[[float(v) for p in poly for v in p]]))
        name = f'{img_id:012d}.jpg'
        canvas.save(os.path.join(root, split, name), quality=95)
        images.append(dict(id=img_id, file_name=name, width=size, height=size))
    ann_file = os.path.join(root, 'annotations', f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return ann_file


def make_ade20k(root, num_images=4, size=64, seed=0, split='validation', labels=(1, 2, 5, 13)):
    """Write ``root/images/<split>/*.jpg`` and ``root/annotations/<split>/*.png``.

    Label PNGs hold ADE20K ids (0 = "other", ignored with ``reduce_zero_label``; 1..150 classes):
    background pixels ``labels[0]``, each shape one of the other ``labels``.
    """
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, 'images', split)
    ann_dir = os.path.join(root, 'annotations', split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    for i in range(num_images):
        canvas = Image.fromarray(_background(rng, size))
        label = Image.new('L', (size, size), color=labels[0])
        draw, draw_label = ImageDraw.Draw(canvas), ImageDraw.Draw(label)
        for poly in _shapes(rng, size, int(rng.integers(1, 4))):
            draw.polygon(poly, fill=tuple(int(c) for c in rng.integers(0, 255, size=3)))
            draw_label.polygon(poly, fill=int(rng.choice(labels[1:])))
        label.putpixel((0, 0), 0)  # one "other" pixel, ignored by the metric
        name = f'ADE_{split[:3]}_{i:08d}'
        canvas.save(os.path.join(img_dir, name + '.jpg'), quality=95)
        label.save(os.path.join(ann_dir, name + '.png'))
    return root
