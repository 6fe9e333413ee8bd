"""A synthetic set on disk: PNG images plus a JSON manifest, written batch by batch.

Layout of ``root``::

    images/000000.png ...         RGB uint8, one file per image
    manifest.rank{R}.json         what rank R finished (rewritten atomically after every batch)
    manifest.json                 the merged manifest, once every batch is done

Batch ``b`` (images ``b·B`` to ``b·B + B - 1``) is made from seed ``base_seed + b`` by rank
``b mod world_size``, so ranks never duplicate work and an interrupted run resumes at the first
unfinished batch of each shard, whatever the world size of the new run.

Every image's size and sha256 are recorded with its batch. A set is checked when it is opened:
a batch with a missing or damaged image counts as unfinished, so making or resuming the set
(:class:`SyntheticSet`) makes it again; reading a finished set (:func:`read_image_file`, by
:class:`~mimiq_mm.datasets.SyntheticImageDataset`) stops with :class:`DamagedSyntheticSetError`,
which names the images and the fix. Sets written before the checksums were recorded are checked
for presence and decodability.
"""
import glob
import hashlib
import io
import json
import logging
import os
import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from mmengine.logging import print_log
from PIL import Image

MANIFEST = 'manifest.json'
FORMAT_VERSION = 1
DAMAGED_SUFFIX = '.damaged'  # a manifest that is not valid JSON is set aside under this suffix


class DamagedSyntheticSetError(ValueError):
    """A synthetic set's manifest or images are damaged; the message names them and the fix."""


def file_sha256(path):
    """sha256 of a file, or None if ``path`` is not a local file."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def _atomic_write(path, data: bytes):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def _atomic_write_json(path, data):
    _atomic_write(path, json.dumps(data, indent=1).encode())


def read_manifest_file(path) -> dict:
    """A manifest (merged or a rank's shard) as a dict; :class:`DamagedSyntheticSetError` naming
    the file and what is wrong where it is not one."""
    try:
        with open(path, 'rb') as f:
            data = json.loads(f.read())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise DamagedSyntheticSetError(f'{path} is damaged: not valid JSON ({err})') from None
    if not isinstance(data, dict):
        raise DamagedSyntheticSetError(f'{path} is damaged: a JSON {type(data).__name__}, not a manifest')
    return data


def read_image_file(root, item) -> Tuple[Optional[bytes], Optional[str]]:
    """(the bytes of the image ``item`` of a manifest, None) where it is as written, else (None,
    what is wrong). ``item``: ``file``, and ``bytes`` and ``sha256`` where the set records them
    (the caller decodes the bytes; for sets without the record, that is the only check)."""
    try:
        with open(os.path.join(root, item['file']), 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return None, 'missing'
    except OSError as err:
        return None, f'unreadable ({err.strerror})'
    if 'bytes' in item and len(data) != item['bytes']:
        return None, f"{'truncated: ' if len(data) < item['bytes'] else ''}{len(data)} bytes, {item['bytes']} written"
    if 'sha256' in item and hashlib.sha256(data).hexdigest() != item['sha256']:
        return None, 'changed since it was written (another sha256)'
    return data, None


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PNG's bytes (a damaged one raises what PIL raises)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert('RGB'))


def image_problem(root, item) -> Optional[str]:
    """What is wrong with the image ``item`` of a set (None: it is as written, or, where the
    set records no checksum, it decodes)."""
    data, problem = read_image_file(root, item)
    if problem is None and 'sha256' not in item:
        try:
            decode_image(data)
        except Exception as err:  # noqa: BLE001  (whatever PIL raises on a damaged file)
            problem = f'cannot be decoded ({err})'
    return problem


def damaged_images_error(root, damaged: Dict[str, str]) -> DamagedSyntheticSetError:
    """The error of a finished set read as it is with the ``damaged`` images ({file: what is wrong})."""
    listed = '; '.join(f'{file}: {why}' for file, why in list(damaged.items())[:8])
    more = f'; and {len(damaged) - 8} more' if len(damaged) > 8 else ''
    return DamagedSyntheticSetError(
        f'the synthetic set in {root} has {len(damaged)} damaged image(s) ({listed}{more}); fine-tuning does not '
        f'start on it. Re-make them with the config and teacher that made the set: python tools/synthesize.py '
        f'CONFIG --out-dir {root} (or point train_cfg.synthesis.out_dir at it instead of train_cfg.synthetic_set) '
        'makes the batches holding them again; or delete the folder and make a new set')


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
        self._intact = set()    # (batch, finished) of the records whose images were found intact
        self._reported = set()  # ... and of those reported damaged
        os.makedirs(os.path.join(root, 'images'), exist_ok=True)

    # ----------------------------------------------------------------- reading the state
    def finished_batches(self):
        """{batch index: record} of every batch any rank has finished, after checking settings;
        a batch with a missing or damaged image is left out (made again), with a log line."""
        done = self._recorded_batches()
        damaged = self._damaged_batches(done)
        return {b: record for b, record in done.items() if b not in damaged}

    def _recorded_batches(self):
        """{batch: record} of every manifest file; where two hold a batch (a batch made again),
        the later record. A manifest that is not valid JSON is set aside: its batches are made again."""
        done = {}
        for path in sorted(glob.glob(os.path.join(self.root, 'manifest*.json'))):
            try:
                data = read_manifest_file(path)
            except DamagedSyntheticSetError as err:
                self._set_aside(path, err)
                continue
            self._check_settings(data.get('settings', {}), path)
            for b, record in self._batch_records(data).items():
                if b not in done or record.get('finished', 0) >= done[b].get('finished', 0):
                    done[b] = record
        return done

    def _batch_records(self, data):
        """The batch records of one manifest file, each with the ``images`` it made (file, and
        size and sha256 where recorded): a shard keeps them per batch, the merged manifest per image."""
        records = {int(k): dict(v) for k, v in data.get('batches', {}).items()}
        for b, record in records.items():
            if 'images' in data:
                record['images'] = data['images'][b * self.batch_size:(b + 1) * self.batch_size]
            elif 'sha256' in record:
                record['images'] = [dict(file=f, bytes=n, sha256=h)
                                    for f, n, h in zip(record['files'], record['bytes'], record['sha256'])]
            else:  # written before the checksums were recorded
                record['images'] = [dict(file=f) for f in record['files']]
        return records

    def _damaged_batches(self, done):
        """{batch: {file: what is wrong}} of the recorded batches with a missing or damaged image;
        a record found intact is not read again by this object."""
        damaged = {}
        for b, record in done.items():
            key = (b, record.get('finished'))
            if key not in self._intact:
                problems = {item['file']: image_problem(self.root, item) for item in record['images']}
                problems = {file: why for file, why in problems.items() if why}
                if problems:
                    damaged[b] = problems
                else:
                    self._intact.add(key)
        new = {b: problems for b, problems in damaged.items() if (b, done[b].get('finished')) not in self._reported}
        if new:
            self._reported |= {(b, done[b].get('finished')) for b in new}
            files = '; '.join(f'{file}: {why}' for problems in new.values() for file, why in problems.items())
            print_log(f'synthetic set {self.root}: batch(es) {", ".join(str(b) for b in sorted(new))} hold damaged '
                      f'images ({files[:1000]}); they are made again', logger='current', level=logging.WARNING)
            try:  # the set is not complete any more: its merged manifest is written again when it is
                os.remove(os.path.join(self.root, MANIFEST))
            except FileNotFoundError:
                pass
        return damaged

    def _set_aside(self, path, err):
        """A manifest that is not valid JSON: the merged one is written again from the shards; a
        shard's batches are made again."""
        what = 'written again from manifest.rank*.json' if os.path.basename(path) == MANIFEST else \
            'its batches are made again'
        try:
            os.replace(path, path + DAMAGED_SUFFIX)
        except FileNotFoundError:  # another rank set it aside
            return
        print_log(f'{err}; set aside as {os.path.basename(path)}{DAMAGED_SUFFIX}, {what}', logger='current',
                  level=logging.WARNING)

    def _check_settings(self, theirs, path):
        keys = sorted(set(theirs) | set(self.settings))
        diff = [k for k in keys if k != 'num_images' and theirs.get(k) != self.settings.get(k)]
        if diff:
            raise ValueError(
                f'the synthetic set in {self.root} ({os.path.basename(path)}) was made with other settings '
                f'({", ".join(f"{k}: {theirs.get(k)!r} vs {self.settings.get(k)!r}" for k in diff)}); '
                'point synthesis.out_dir at a new folder (or delete this one) to make a new set')

    def is_complete(self):
        done = self.finished_batches()  # first: it removes a merged manifest that is damaged or out of date
        return os.path.isfile(os.path.join(self.root, MANIFEST)) and len(done) >= self.num_batches

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
        files, sizes, digests = [], [], []
        for i, img in enumerate(pixels.cpu().numpy()):
            name = f'images/{start + i:06d}.png'
            png = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(png, format='PNG')
            # the checksum of the bytes written; written whole or not at all (a killed run leaves no half image)
            _atomic_write(os.path.join(self.root, name), png.getvalue())
            files.append(name)
            sizes.append(len(png.getvalue()))
            digests.append(hashlib.sha256(png.getvalue()).hexdigest())
        shard_path = os.path.join(self.root, f'manifest.rank{rank}.json')
        shard = {'settings': self.settings, 'batches': {}}
        if os.path.isfile(shard_path):
            shard = read_manifest_file(shard_path)
        shard['batches'][str(batch)] = dict(seed=int(self.settings['base_seed']) + batch, files=files, bytes=sizes,
                                            sha256=digests, labels=[int(t) for t in targets.tolist()], losses=losses,
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
            images += [dict(item, label=label) for item, label in zip(done[b]['images'], done[b]['labels'])]
        files = [im['file'] for im in images]
        if len(set(files)) != len(files):
            raise RuntimeError('duplicate images in the synthetic set shards')
        per_image = ('files', 'bytes', 'sha256', 'images')  # in ``images``
        manifest = dict(format=FORMAT_VERSION, settings=self.settings, num_images=len(images), images=images,
                        batches={str(b): {k: v for k, v in done[b].items() if k not in per_image}
                                 for b in range(self.num_batches)})
        _atomic_write_json(os.path.join(self.root, MANIFEST), manifest)
        return manifest


def load_manifest(root):
    """The merged manifest of a finished synthetic set, with a clear error if there is none or it
    is damaged (what is wrong and the fix)."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'no finished synthetic set in {root} ({MANIFEST} missing); make one with '
            'tools/synthesize.py or let tools/train.py synthesise it')
    try:
        manifest = read_manifest_file(path)
        if not isinstance(manifest.get('images'), list):
            raise DamagedSyntheticSetError(f'{path} is damaged: it has no list of images')
    except DamagedSyntheticSetError as err:
        fix = (f'rebuild it from the manifest.rank*.json next to it: python tools/synthesize.py CONFIG --out-dir '
               f'{root}, with the config and teacher that made the set (it also makes again any batch that is '
               'missing or damaged)') if glob.glob(os.path.join(root, 'manifest.rank*.json')) else \
            f'nothing in {root} can rebuild it: delete the folder and make the set again (tools/synthesize.py)'
        raise DamagedSyntheticSetError(f'{err}; {fix}') from None
    return manifest
