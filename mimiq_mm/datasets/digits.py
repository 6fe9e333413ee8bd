"""The embedded default dataset: scikit-learn's handwritten digits, exported as an ImageFolder.

scikit-learn ships the 1,797 8×8 digit images inside the package, so the demo runs with no
network. They are upsampled to 16×16 RGB PNGs in the layout mmpretrain's ``CustomDataset``
reads: ``<root>/{train,test}/<class>/<index>.png``.
"""
import os

import numpy as np
from PIL import Image


def export_digits(root, size=16, test_fraction=0.3, seed=0):
    """Write the digits under ``root`` (idempotent). Returns (num_train, num_test)."""
    stamp = os.path.join(root, f'.exported_{size}_{test_fraction}_{seed}')
    if os.path.isfile(stamp):
        with open(stamp) as f:
            return tuple(int(v) for v in f.read().split())
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    labels = digits.target
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = int(round(len(labels) * test_fraction))
    splits = {'test': order[:num_test], 'train': order[num_test:]}
    for split, indices in splits.items():
        for i in indices:
            folder = os.path.join(root, split, str(labels[i]))
            os.makedirs(folder, exist_ok=True)
            img = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert('RGB')
            img.save(os.path.join(folder, f'{i:04d}.png'))
    counts = (len(splits['train']), len(splits['test']))
    with open(stamp, 'w') as f:
        f.write(f'{counts[0]} {counts[1]}')
    return counts
