"""Image batches for parity checks: random images, or a folder of images (ImageFolder layout)."""
import os
import os.path as osp

import torch

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


def random_batches(count, batch, input_size, seed=0):
    """``count`` batches of standard-normal images (already "normalised")."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, *input_size, generator=g) for _ in range(count)]


def list_images(folder):
    """Image files under ``folder`` (recursively, e.g. one sub-folder per class), sorted."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'image folder {folder!r} not found; pass a folder of images (one sub-folder per '
                                'class, as torchvision ImageFolder)')
    files = sorted(osp.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under {folder!r}')
    return files


def folder_batches(model, folder, input_size, batch):
    """Batches of the images under ``folder``, resized to ``input_size`` (H, W) and normalised by
    ``model``'s own data preprocessor (mean/std, BGR→RGB as its config says)."""
    import mmcv
    files = list_images(folder)
    preprocess = getattr(model, 'data_preprocessor', None)
    h, w = input_size
    for start in range(0, len(files), batch):
        images = [torch.from_numpy(mmcv.imresize(mmcv.imread(path, channel_order='bgr'), (w, h)))
                  .permute(2, 0, 1).contiguous() for path in files[start:start + batch]]
        if preprocess is not None:
            yield preprocess(dict(inputs=images), False)['inputs']
        else:
            yield torch.stack(images).float().div_(255.0)
