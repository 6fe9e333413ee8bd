"""DataFreeQATLoop: synthesise (or load) a synthetic set -> calibrate -> fine-tune -> validate."""
import math
import os
from typing import Optional

import torch
from mmengine.dist import broadcast, get_dist_info, is_distributed
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..datasets import SyntheticImageDataset
from ..registry import LOOPS
from ..synthesis import ImageSynthesizer, SyntheticSet, check_method, file_sha256, synthesize_set

SYNTHESIS_DEFAULTS = dict(
    method='mimiq', num_images=10000, batch_size=32, steps=2000, lr=0.1, betas=(0.9, 0.999), alpha=1.0,
    beta=2.5e-5, ihc=None, psaq=None, tv=None, augment=None, amp_dtype=None, seed=0, out_dir=None,
    image_size=None, num_classes=None, log_interval=200, prior=None)


def unwrap(model):
    return getattr(model, 'module', model)


@LOOPS.register_module()
class DataFreeQATLoop(IterBasedTrainLoop):
    """Data-free quantization-aware training of a :class:`QuantDistiller`.

    Args:
        runner: the mmengine Runner.
        dataloader: the config's ``train_dataloader``; used only with ``data_source='real'``.
        data_source (str): 'synthetic' (MimiQ and the data-free baselines) or 'real' (the paper's
            "Real-Data FT" reference: the same recipe on the config's own training set).
        synthesis (dict): synthetic-set options (see ``SYNTHESIS_DEFAULTS``; paper values);
            ``out_dir`` defaults to ``<work_dir>/synthetic_<method>``, and an existing finished set
            there is reused, an unfinished one resumed. ``prior`` selects the model giving L_CL:
            None/'head' (the teacher's own output) or ``dict(type='classifier', model=...,
            checkpoint=..., image_size=224)`` (see :func:`mimiq_mm.models.dense.build_synthesis_prior`).
        batch_size (int): fine-tuning batch size per GPU (paper: 16).
        max_iters (int | None): fine-tuning iterations; 0 gives post-training quantization
            (calibration only). Or give ``max_epochs`` over the synthetic set.
        calibration_batches (int): batches used to initialise activation quantizers.
        num_workers (int): dataloader workers for the synthetic set.
        val_interval, val_begin: as in IterBasedTrainLoop; validation also runs at the end.
    """

    def __init__(self, runner, dataloader=None, data_source='synthetic', synthesis: Optional[dict] = None,
                 batch_size=16, max_iters: Optional[int] = None, max_epochs: Optional[float] = None,
                 calibration_batches=4, num_workers=2, val_interval=1000, val_begin=1):
        if data_source not in ('synthetic', 'real'):
            raise ValueError(f"data_source must be 'synthetic' or 'real' (got {data_source!r})")
        self._runner = runner
        self.data_source = data_source
        self.synthesis = dict(SYNTHESIS_DEFAULTS, **(synthesis or {}))
        unknown = set(self.synthesis) - set(SYNTHESIS_DEFAULTS)
        if unknown:
            raise ValueError(f'unknown synthesis options {sorted(unknown)}; known: {sorted(SYNTHESIS_DEFAULTS)}')
        check_method(self.synthesis['method'])
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.calibration_batches = calibration_batches
        self._dataloader_cfg = dataloader
        rank, world = get_dist_info()
        per_epoch = math.ceil(self.synthesis['num_images'] / (batch_size * world))
        # mmengine sizes epoch-based schedulers from len(train_dataloader) before run(); the
        # synthetic set does not exist yet, so stand in with its known length.
        self.dataloader = _PendingLoader(per_epoch)
        if data_source == 'real':
            self.dataloader = runner.build_dataloader(dataloader, seed=runner.seed)
        if max_iters is None:
            if max_epochs is None:
                raise ValueError('set train_cfg.max_iters or train_cfg.max_epochs of DataFreeQATLoop')
            if data_source == 'real':
                raise ValueError('with data_source="real" give train_cfg.max_iters')
            max_iters = int(round(max_epochs * per_epoch))
        self._max_iters = int(max_iters)
        self._max_epochs = 1
        self._epoch = 0
        self._iter = 0
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False
        self.dynamic_milestones, self.dynamic_intervals = [0], [val_interval]

    # ------------------------------------------------------------------ data
    @property
    def distiller(self):
        return unwrap(self.runner.model)

    def synthetic_root(self):
        out = self.synthesis['out_dir']
        return out or os.path.join(self.runner.work_dir, f"synthetic_{self.synthesis['method']}")

    def image_size(self):
        size = self.synthesis['image_size']
        if size is None:
            raise ValueError('set train_cfg.synthesis.image_size to the input size the teacher was trained on, '
                             'e.g. (224, 224)')
        size = (size, size) if isinstance(size, int) else tuple(size)
        return size

    def check_image_size(self, size):
        """Fail early, with the fix, if the backbone cannot take ``size``."""
        model = self.distiller
        device = next(model.teacher.parameters()).device
        try:
            with torch.no_grad():
                model.task.forward_tensor(model.teacher, torch.zeros(1, 3, *size, device=device))
        except Exception as err:  # the backbone's own message says why
            raise ValueError(f'image size {size} does not fit the teacher backbone ({type(err).__name__}: {err}); '
                             'set train_cfg.synthesis.image_size to a size it accepts (usually its training '
                             'size, a multiple of the patch size and window size)') from err

    def build_prior(self):
        """The separate L_CL model of ``synthesis.prior``, or None (the teacher's own output)."""
        if not hasattr(self, '_prior'):
            from ..models.dense import build_synthesis_prior
            pre = self.distiller.data_preprocessor
            self._prior = build_synthesis_prior(self.synthesis['prior'], pre.pixel_mean.flatten().tolist(),
                                                pre.pixel_std.flatten().tolist(),
                                                device=next(self.distiller.teacher.parameters()).device)
        return self._prior

    def build_synthesizer(self):
        model = self.distiller
        s = self.synthesis
        pre = model.data_preprocessor
        return ImageSynthesizer(
            model.teacher, model.task, self.image_size(), pre.pixel_mean.flatten().tolist(),
            pre.pixel_std.flatten().tolist(), method=s['method'], steps=s['steps'], lr=s['lr'], betas=s['betas'],
            alpha=s['alpha'], beta=s['beta'], ihc=s['ihc'], psaq=s['psaq'], tv=s['tv'], augment=s['augment'],
            amp_dtype=s['amp_dtype'], log_interval=s['log_interval'], prior=self.build_prior())

    def synthetic_settings(self):
        s = self.synthesis
        model = self.distiller
        keys = ('method', 'num_images', 'batch_size', 'steps', 'lr', 'alpha', 'beta', 'ihc', 'psaq', 'tv',
                'augment', 'seed', 'prior')
        settings = {k: s[k] for k in keys if k != 'prior' or s[k] not in (None, 'head', {'type': 'head'})}
        settings['base_seed'] = settings.pop('seed')
        settings['image_size'] = list(self.image_size())
        settings['teacher_checkpoint'] = model.teacher_checkpoint
        settings['teacher_sha256'] = file_sha256(model.teacher_checkpoint)
        return _jsonable(settings)

    def prepare_synthetic_set(self):
        size = self.image_size()
        self.check_image_size(size)
        synthetic = SyntheticSet(self.synthetic_root(), self.synthetic_settings())
        if not synthetic.is_complete():
            prior = self.build_prior()
            num_classes = self.synthesis['num_classes'] or (
                prior.num_classes() if prior is not None else self.distiller.task.num_classes(self.distiller.teacher))
            synthesize_set(self.build_synthesizer(), synthetic, num_classes, visualizer=self.runner.visualizer)
        else:
            print_log(f'using the finished synthetic set in {synthetic.root}', logger='current')
        return SyntheticImageDataset(synthetic.root)

    def build_loader(self):
        if self.data_source == 'real':
            return self.dataloader
        dataset = self.prepare_synthetic_set()
        sampler = DistributedSampler(dataset, shuffle=True, seed=self.runner.seed or 0) if is_distributed() else None
        generator = torch.Generator().manual_seed(self.runner.seed or 0)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=sampler is None, sampler=sampler,
                          num_workers=self.num_workers, drop_last=len(dataset) >= self.batch_size,
                          generator=generator, persistent_workers=False)

    # ------------------------------------------------------------------ calibration
    def calibrate(self):
        model = self.distiller
        if model.quantizers_initialized() and self._iter > 0:
            return  # resumed: the quantizer state came with the checkpoint
        batches = []
        for i, data in enumerate(self.dataloader):
            if i >= self.calibration_batches:
                break
            batches.append(model.data_preprocessor(data, False)['inputs'])
        model.calibrate(batches)
        if is_distributed():
            # Ranks calibrated on different images: make every rank use rank 0's quantizers.
            for tensor in list(model.student.parameters()) + list(model.student.buffers()):
                broadcast(tensor.data, src=0)
        print_log(f'calibrated activation quantizers on {len(batches)} batches', logger='current')

    def save_interrupted(self):
        """On Ctrl-C, checkpoint the iterations finished since the last checkpoint, so that
        ``--resume`` continues from here (the synthetic set is already safe on disk)."""
        if self._iter == 0:
            return
        filename = f'iter_{self._iter}.pth'
        self.runner.save_checkpoint(self.runner.work_dir, filename, by_epoch=False)
        if get_dist_info()[0] == 0:
            with open(os.path.join(self.runner.work_dir, 'last_checkpoint'), 'w') as f:
                f.write(os.path.join(self.runner.work_dir, filename))
        print_log(f'interrupted: saved {filename}; continue with tools/train.py CONFIG --resume', logger='current',
                  level=30)

    # ------------------------------------------------------------------ run
    def run(self):
        self.runner.call_hook('before_train')
        self.dataloader = self.build_loader()
        self.dataloader_iterator = CyclingIterator(self.dataloader)
        self.calibrate()
        self.runner.call_hook('before_train_epoch')
        self.dataloader_iterator.skip(self._iter)  # resumed: continue where training stopped
        try:
            while self._iter < self._max_iters and not self.stop_training:
                self.runner.model.train()
                self.run_iter(next(self.dataloader_iterator))
                if (self.runner.val_loop is not None and self._iter >= self.val_begin
                        and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                    self.runner.val_loop.run()
        except KeyboardInterrupt:
            self.save_interrupted()
            raise
        if self._max_iters == 0 and self.runner.val_loop is not None:
            self.runner.val_loop.run()  # post-training quantization: evaluate the calibrated student
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model


class CyclingIterator:
    """Endless iteration over a loader, reshuffling each pass (``set_epoch`` for distributed
    samplers). Unlike mmengine's ``_InfiniteDataloaderIterator`` it does not sleep 2 s at every
    pass, which would dominate fine-tuning on a small synthetic set."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0
        self.iterator = iter(loader)

    def __iter__(self):
        return self

    def skip(self, num_batches):
        """Move on by ``num_batches`` without loading whole passes: jump to the right pass
        (epoch) and read only the remainder."""
        passes, rest = divmod(num_batches, max(len(self.loader), 1))
        if passes:
            self.epoch += passes
            sampler = getattr(self.loader, 'sampler', None)
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(self.epoch)
            self.iterator = iter(self.loader)
        for _ in range(rest):
            next(self)

    def __next__(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.epoch += 1
            sampler = getattr(self.loader, 'sampler', None)
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(self.epoch)
            self.iterator = iter(self.loader)
            return next(self.iterator)


class _PendingLoader:
    """Length of the synthetic loader before the set exists."""
    dataset = None

    def __init__(self, length):
        self.length = length

    def __len__(self):
        return self.length


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
