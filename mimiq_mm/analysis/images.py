"""Loading analysis images: a real ImageFolder or a synthetic set, as uint8 RGB batches.

Both kinds come out as an :class:`ImageBatch` of the model's input size, so the same code
records attention on real and synthetic images. Normalisation is left to the model side
(:func:`normalize_pixels` with the distiller's ``pixel_mean`` / ``pixel_std``).
"""
import os
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.utils import to_2tuple
from PIL import Image

from ..synthesis.store import load_manifest
from .errors import AnalysisInputError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


@dataclass
class ImageBatch:
    """The images of one source (a real folder or a synthetic set).

    Attributes:
        name (str): how plots and JSON name the source.
        kind (str): 'real' or 'synthetic'.
        pixels (Tensor): uint8 (B, 3, H, W) RGB.
        labels (list[int | None]): class index per image (synthetic target; real: folder index).
        files (list[str]): path of each image, relative to ``root``.
        root (str): the folder read.
        label_names (list[str] | None): names of the labels when the source itself knows them
            (an ImageFolder's class folders).
        settings (dict): the synthetic set's settings (empty for real folders).
    """
    name: str
    kind: str
    pixels: torch.Tensor
    labels: List[Optional[int]]
    files: List[str]
    root: str
    label_names: Optional[List[str]] = None
    settings: dict = field(default_factory=dict)

    def __len__(self):
        return self.pixels.shape[0]

    def label_text(self, index, class_names: Optional[Sequence[str]] = None):
        """'3: cat' style caption of image ``index`` ('' when it has no label)."""
        label = self.labels[index]
        if label is None:
            return ''
        names = self.label_names or class_names
        if names is not None and 0 <= label < len(names):
            return f'{label}: {names[label]}'
        return str(label)


def size_hw(size) -> Optional[Tuple[int, int]]:
    """An image size as (h, w): from an int, a (h, w) pair or a one-element list (``--input-size 32``);
    None stays None."""
    if size is None:
        return None
    size = to_2tuple(size.item() if isinstance(size, np.integer) else size)
    size = list(size) * 2 if len(size) == 1 else list(size)[-2:]
    return int(size[0]), int(size[1])


def resize_center_crop(image: Image.Image, size) -> Image.Image:
    """Resize so the image covers ``size`` = (h, w), then crop the centre (keeps the aspect)."""
    out_h, out_w = size_hw(size)
    if image.size == (out_w, out_h):
        return image
    scale = max(out_h / image.height, out_w / image.width)
    new_w, new_h = max(out_w, round(image.width * scale)), max(out_h, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    return image.crop((left, top, left + out_w, top + out_h))


def pil_to_pixels(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 (3, H, W) RGB tensor."""
    array = np.asarray(image.convert('RGB')).copy()
    return torch.from_numpy(array).permute(2, 0, 1)


def read_image(path, size=None) -> torch.Tensor:
    """uint8 (3, h, w) RGB pixels of the file at ``path``, resized to ``size`` when given."""
    with Image.open(path) as image:
        image = image.convert('RGB')
        if size is not None:
            image = resize_center_crop(image, size)
        return pil_to_pixels(image)


def find_images(root) -> Tuple[List[str], List[str]]:
    """Image files of an ImageFolder (``root/<class>/...``) or of a flat folder.

    Returns:
        tuple: (files, class_of_file): paths relative to ``root`` in sorted order, and the class
        folder of each ('' for images directly in ``root``).
    """
    if not os.path.isdir(root):
        raise AnalysisInputError(f'image folder {root!r} does not exist; pass a folder of images or an '
                                 'ImageFolder (DIR/<class>/<image>.png)')
    files, classes = [], []
    try:
        for current, dirs, names in os.walk(root):
            dirs.sort()
            rel_dir = os.path.relpath(current, root)
            top = '' if rel_dir == '.' else rel_dir.split(os.sep)[0]
            for name in sorted(names):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.normpath(os.path.join(rel_dir, name)))
                    classes.append(top)
    except PermissionError as err:
        raise AnalysisInputError(f'cannot read the image folder {root!r} ({err}); check its permissions') from err
    if not files:
        raise AnalysisInputError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {root!r}; pass a folder of '
                                 'images or an ImageFolder (DIR/<class>/<image>.png)')
    return files, classes


def round_robin_by_class(files, classes, max_images=None) -> List[int]:
    """Indices of up to ``max_images`` files taken in turn from each class, so a few images
    still cover many classes."""
    by_class = {}
    for index, name in enumerate(classes):
        by_class.setdefault(name, []).append(index)
    queues = [list(v) for _, v in sorted(by_class.items())]
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order if max_images is None else order[:max_images]


def load_image_folder(root, size, max_images=None, name=None) -> ImageBatch:
    """Up to ``max_images`` images of an ImageFolder, resized (cover + centre crop) to ``size``.

    Unreadable files are skipped with a warning; a folder where none can be read is an error.
    Labels are the index of the class folder (sorted), None for images in ``root`` itself.
    """
    files, classes = find_images(root)
    class_names = sorted({c for c in classes if c})
    pixels, labels, kept, errors = [], [], [], []
    for index in round_robin_by_class(files, classes):
        if max_images is not None and len(kept) >= max_images:
            break
        path = os.path.join(root, files[index])
        try:
            pixels.append(read_image(path, size))
        except (OSError, ValueError) as err:  # PIL raises UnidentifiedImageError (an OSError) and friends
            errors.append(f'{files[index]}: {err}')
            warnings.warn(f'skipping unreadable image {path}: {err}')
            continue
        kept.append(files[index])
        labels.append(class_names.index(classes[index]) if classes[index] else None)
    if not pixels:
        raise AnalysisInputError(f'none of the {len(files)} images in {root!r} could be read (first error: '
                                 f'{errors[0]}); pass a folder of readable images')
    return ImageBatch(name=name or f'real ({os.path.basename(os.path.normpath(root))})', kind='real',
                      pixels=torch.stack(pixels), labels=labels, files=kept, root=root,
                      label_names=class_names or None)


def synthetic_image_size(root):
    """The (h, w) a synthetic set was made at (from its manifest), or None."""
    size = load_manifest(root).get('settings', {}).get('image_size')
    return size_hw(size) if size else None


def load_synthetic_set(root, size=None, max_images=None, name=None, indices=None) -> ImageBatch:
    """Up to ``max_images`` images of a finished synthetic set with their target labels.

    Raises the FileNotFoundError of :func:`~mimiq_mm.synthesis.load_manifest` (naming the tool
    that makes a set) when ``root`` has no ``manifest.json``. ``indices`` picks images by position
    in the manifest instead of the first ``max_images``.
    """
    manifest = load_manifest(root)
    images = manifest['images']
    if not images:
        raise AnalysisInputError(f'the synthetic set in {root} is empty; make it again with tools/synthesize.py')
    if indices is None:
        indices = range(len(images) if max_images is None else min(len(images), max_images))
    bad = [i for i in indices if not 0 <= i < len(images)]
    if bad:
        raise AnalysisInputError(f'image indices {bad[:5]} are outside the {len(images)} images of {root}')
    pixels, labels, files = [], [], []
    for index in indices:
        with Image.open(os.path.join(root, images[index]['file'])) as img:
            img = img.convert('RGB')
            if size is not None and img.size[::-1] != size_hw(size):
                img = resize_center_crop(img, size)
            pixels.append(pil_to_pixels(img))
        labels.append(int(images[index]['label']))
        files.append(images[index]['file'])
    settings = manifest.get('settings', {})
    method = settings.get('method', 'synthetic')
    return ImageBatch(name=name or f'{method} ({os.path.basename(os.path.normpath(root))})', kind='synthetic',
                      pixels=torch.stack(pixels), labels=labels, files=files, root=root, settings=settings)


def normalize_pixels(pixels, mean, std) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> float model inputs (x - mean) / std; mean, std (3, 1, 1) in 0-255
    units, as the distiller's data preprocessor keeps them."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (pixels.float() - mean.to(pixels.device)) / std.to(pixels.device)


def batches(num_items, batch_size):
    """``slice`` objects covering ``range(num_items)`` in chunks of ``batch_size``."""
    if batch_size < 1:
        raise AnalysisInputError(f'batch size must be at least 1, got {batch_size}')
    return [slice(start, min(start + batch_size, num_items)) for start in range(0, num_items, batch_size)]
