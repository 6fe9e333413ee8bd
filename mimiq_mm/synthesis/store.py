"""A synthetic set on disk: PNG images plus a JSON manifest, written batch by batch.

Layout of ``root``::

    images/000000.png ...         RGB uint8, one file per image
    manifest.rank{R}.json         what rank R finished (rewritten atomically after every batch)
    manifest.json                 the merged manifest, once every batch is done

Batch ``b`` (images ``b·B`` to ``b·B + B - 1``) is made from seed ``base_seed + b`` by rank
``b mod world_size``, so ranks never duplicate work and an interrupted run resumes at the first
unfinished batch of each shard, whatever the world size of the new run.
"""
import glob
import hashlib
import json
import os
import time

import numpy as np
import torch
from PIL import Image

MANIFEST = 'manifest.json'
FORMAT_VERSION = 1


def file_sha256(path):
    """sha256 of a file, or None if ``path`` is not a local file."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def _atomic_write_json(path, data):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


class SyntheticSet:
    """Reader/writer of a synthetic set.

    Args:
        root (str): the set's folder.
        settings (dict): what defines the set (method, teacher hash, sizes, seeds, loss options).
            A folder made with other settings is refused instead of being mixed.
    """

    def __init__(self, root, settings):
        self.root = root
        self.settings = dict(settings)
        self.num_images = int(settings['num_images'])
        self.batch_size = int(settings['batch_size'])
        self.num_batches = -(-self.num_images // self.batch_size)
        os.makedirs(os.path.join(root, 'images'), exist_ok=True)

    # ----------------------------------------------------------------- reading the state
    def finished_batches(self):
        """{batch index: record} of every batch any rank has finished, after checking settings."""
        done = {}
        for path in sorted(glob.glob(os.path.join(self.root, 'manifest*.json'))):
            with open(path) as f:
                data = json.load(f)
            self._check_settings(data.get('settings', {}), path)
            done.update({int(k): v for k, v in data.get('batches', {}).items()})
        return done

    def _check_settings(self, theirs, path):
        keys = sorted(set(theirs) | set(self.settings))
        diff = [k for k in keys if k != 'num_images' and theirs.get(k) != self.settings.get(k)]
        if diff:
            raise ValueError(
                f'the synthetic set in {self.root} ({os.path.basename(path)}) was made with other settings '
                f'({", ".join(f"{k}: {theirs.get(k)!r} vs {self.settings.get(k)!r}" for k in diff)}); '
                'point synthesis.out_dir at a new folder (or delete this one) to make a new set')

    def is_complete(self):
        return os.path.isfile(os.path.join(self.root, MANIFEST)) and \
            len(self.finished_batches()) >= self.num_batches

    def pending_batches(self, rank=0, world_size=1):
        done = self.finished_batches()
        return [b for b in range(self.num_batches) if b % world_size == rank and b not in done]

    def batch_targets(self, batch, num_classes):
        """Target labels of batch ``batch``: a balanced cycle over classes, shuffled by its seed."""
        start = batch * self.batch_size
        size = min(self.batch_size, self.num_images - start)
        labels = torch.arange(start, start + size) % num_classes
        g = torch.Generator().manual_seed(int(self.settings['base_seed']) + batch)
        return labels[torch.randperm(size, generator=g)]

    # ----------------------------------------------------------------- writing
    def write_batch(self, batch, pixels, targets, losses, rank=0, seconds=None):
        """Save a finished batch: ``pixels`` uint8 (B, 3, H, W) RGB, ``targets`` (B,)."""
        start = batch * self.batch_size
        files = []
        for i, img in enumerate(pixels.cpu().numpy()):
            name = f'images/{start + i:06d}.png'
            Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(os.path.join(self.root, name))
            files.append(name)
        shard_path = os.path.join(self.root, f'manifest.rank{rank}.json')
        shard = {'settings': self.settings, 'batches': {}}
        if os.path.isfile(shard_path):
            with open(shard_path) as f:
                shard = json.load(f)
        shard['batches'][str(batch)] = dict(seed=int(self.settings['base_seed']) + batch, files=files,
                                            labels=[int(t) for t in targets.tolist()], losses=losses,
                                            rank=rank, seconds=seconds, finished=time.time())
        _atomic_write_json(shard_path, shard)

    def merge(self):
        """Write ``manifest.json`` from the shards once every batch is done; returns its dict."""
        done = self.finished_batches()
        missing = [b for b in range(self.num_batches) if b not in done]
        if missing:
            raise RuntimeError(f'cannot merge the synthetic set in {self.root}: batches {missing[:10]} '
                               'are not finished yet; run the synthesis again to resume it')
        images = []
        for b in range(self.num_batches):
            rec = done[b]
            images += [dict(file=f, label=l) for f, l in zip(rec['files'], rec['labels'])]
        files = [im['file'] for im in images]
        if len(set(files)) != len(files):
            raise RuntimeError('duplicate images in the synthetic set shards')
        manifest = dict(format=FORMAT_VERSION, settings=self.settings, num_images=len(images), images=images,
                        batches={str(b): {k: v for k, v in done[b].items() if k != 'files'}
                                 for b in range(self.num_batches)})
        _atomic_write_json(os.path.join(self.root, MANIFEST), manifest)
        return manifest


def load_manifest(root):
    """The merged manifest of a finished synthetic set, with a clear error if there is none."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'no finished synthetic set in {root} ({MANIFEST} missing); make one with '
            'tools/synthesize.py or let tools/train.py synthesise it')
    with open(path) as f:
        return json.load(f)
