"""DataFreeQATLoop: synthesise (or load) a synthetic set -> calibrate -> fine-tune -> validate; with
``train_cfg.generator``, a generator (or sample-update) step in every fine-tuning iteration."""
import math
from typing import Optional

from mmengine.dist import get_world_size
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from ..datasets import SyntheticImageDataset
from ..generators import build_generator
from ..registry import LOOPS
from ..synthesis import SyntheticSetMaker, load_manifest
from ..quant import quantizers_initialized, reset_activation_ranges, uncalibrated_quantizers
from ..utils.wrappers import unwrap_model
from .calibration import calibrate_missing_quantizers, calibrate_student, first_batches
from .generator_state import GeneratorStateHook
from .guard import DivergenceGuardHook
from .interrupt import InterruptCheckpointHook


@LOOPS.register_module()
class DataFreeQATLoop(IterBasedTrainLoop):
    """Data-free quantization-aware training of a :class:`QuantDistiller`, in four stages:

    1. make (or resume, or reuse) the synthetic set (``data_source='synthetic'``);
    2. calibrate the student's activation quantizers on its first batches;
    3. fine-tune for ``max_iters`` iterations (0: post-training quantization), validating every
       ``val_interval`` iterations and at the end;
    4. with ``max_iters=0``, validate the calibrated student.

    With ``generator``, every fine-tuning iteration first runs the generator's step
    (:mod:`mimiq_mm.generators`), which makes the batch the student trains on (GDFQ, Qimera,
    AdaDFQ: from the loader's class labels, ``data_source='generator'``) or updates the synthetic
    batch (PSAQ-ViT V2); the step's time is what mmengine logs as ``data_time``, its losses are
    logged as ``generator_*`` / ``samples_*``, and its state travels in the checkpoints. Before
    calibration the generator is built and may warm up (GDFQ's generator-only updates), and the
    student is calibrated on its batches.

    Args:
        runner: the mmengine Runner.
        dataloader (dict | None): the config's ``train_dataloader``; used only with
            ``data_source='real'``.
        data_source (str): 'synthetic' (MimiQ and the data-free baselines), 'generator' (the
            batches come from ``generator``: GDFQ, Qimera, AdaDFQ) or 'real' (the paper's
            "Real-Data FT" reference: the same recipe on the config's own training set).
        synthesis (dict): the synthetic set: ``num_images``, ``batch_size``, ``seed``, ``out_dir``
            (default ``<work_dir>/synthetic_<method>``; a finished set there is reused, an
            unfinished one resumed) and the synthesizer's options (``method``, ``image_size``,
            ``steps``, ...; see :class:`mimiq_mm.synthesis.ImageSynthesizer`). With
            ``data_source='generator'`` only ``image_size`` is read (the generated images' size).
        generator (dict | None): a registered data generator (``type='mimiq_mm.GDFQGenerator'``,
            ``'mimiq_mm.QimeraGenerator'``, ``'mimiq_mm.AdaDFQGenerator'``,
            ``'mimiq_mm.PSAQV2SampleStep'``) and its options.
        batch_size (int): fine-tuning batch size per GPU (paper: 16).
        max_iters (int | None): fine-tuning iterations; or give ``max_epochs`` over the
            synthetic set.
        calibration_batches (int): batches used to initialise activation quantizers.
        synthetic_set (str | None): fine-tune on this finished synthetic set (made by
            tools/synthesize.py, another run or a selection of one) as it is, instead of making
            one from ``synthesis``.
        holdout_images (int): synthetic images kept out of fine-tuning, on which
            :class:`BestStudentHook` compares students with the teacher (``holdout_dataset``).
        val_interval, val_begin: as in IterBasedTrainLoop.
    """

    def __init__(self, runner, dataloader: Optional[dict] = None, data_source='synthetic',
                 synthesis: Optional[dict] = None, generator: Optional[dict] = None, batch_size=16,
                 max_iters: Optional[int] = None,
                 max_epochs: Optional[float] = None, calibration_batches=4, synthetic_set: Optional[str] = None,
                 holdout_images=0, val_interval=1000, val_begin=1):
        if data_source not in ('synthetic', 'real', 'generator'):
            raise ValueError(f"data_source must be 'synthetic', 'real' or 'generator' (got {data_source!r})")
        self.data_source = data_source
        self.synthesis = dict(synthesis or {})
        self.generator = build_generator(generator)
        self.generator_ready, self.loaded_generator_state = False, None
        if self.generator is not None and self.generator.data_source != data_source:
            raise ValueError(f'{type(self.generator).__name__} needs train_cfg.data_source='
                             f'{self.generator.data_source!r} (got {data_source!r})')
        if data_source == 'generator' and self.generator is None:
            raise ValueError("data_source='generator' needs train_cfg.generator, e.g. "
                             "dict(type='mimiq_mm.GDFQGenerator')")
        self.calibration_batches = calibration_batches
        self.holdout_dataset = None
        if holdout_images and data_source != 'synthetic':
            raise ValueError('holdout_images needs data_source="synthetic"')
        self.set_maker = None
        if data_source == 'synthetic':
            if synthetic_set is not None:
                root, num_images = synthetic_set, load_manifest(synthetic_set)['num_images']
            else:
                self.set_maker = SyntheticSetMaker.from_config(self.synthesis, self.distiller_of(runner),
                                                               runner.work_dir)
                root, num_images = self.set_maker.synthetic_set.root, self.set_maker.synthetic_set.num_images
            images = dict(root=root, num_images=num_images, holdout=holdout_images)
            dataloader = dict(batch_size=batch_size, num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=True),
                              collate_fn=dict(type='default_collate'),
                              dataset=dict(type='mimiq_mm.SyntheticImageDataset', **images))
            if holdout_images:
                self.holdout_dataset = SyntheticImageDataset(**images, part='holdout')
            if max_iters is None and max_epochs is not None:
                per_epoch = math.ceil((num_images - holdout_images) / (batch_size * get_world_size()))
                max_iters = int(round(max_epochs * per_epoch))
        elif data_source == 'generator':
            dataloader = self.label_loader(runner, batch_size)
        elif dataloader is None:
            raise ValueError('data_source="real" needs the config\'s train_dataloader')
        else:
            dataloader = dict(dataloader, sampler=dict(type='InfiniteSampler', shuffle=True))
        if max_iters is None:
            raise ValueError('set train_cfg.max_iters (or, with synthetic data, train_cfg.max_epochs) of '
                             'DataFreeQATLoop')
        super().__init__(runner, dataloader, max_iters=int(max_iters), val_begin=val_begin,
                         val_interval=val_interval)
        if self._max_iters == 0:  # post-training quantization: nothing to schedule (and mmengine
            runner.param_schedulers = None  # refuses a schedule that ends at iteration 0)
        self.interrupt = InterruptCheckpointHook()
        runner.register_hook(self.interrupt)
        runner.register_hook(DivergenceGuardHook())
        if self.generator is not None:
            runner.register_hook(GeneratorStateHook(self))

    @staticmethod
    def distiller_of(runner):
        return unwrap_model(runner.model)

    def label_loader(self, runner, batch_size):
        """The dataloader of ``data_source='generator'``: the teacher's classes, shuffled, as
        many as a batch holds at least (:class:`mimiq_mm.datasets.ClassLabelDataset`)."""
        num_classes = self.generator.num_classes(self.distiller_of(runner))
        return dict(batch_size=batch_size, num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=True),
                    collate_fn=dict(type='default_collate'),
                    dataset=dict(type='mimiq_mm.ClassLabelDataset', num_classes=num_classes,
                                 repeats=max(1, math.ceil(batch_size / num_classes))))

    def run(self):
        """The stage order; fine-tuning itself is mmengine's iteration loop (``super().run()``),
        which also moves a resumed run past the batches it has trained on (the synthetic set is
        in memory, so that costs no image decoding)."""
        self.prepare_data()
        self.prepare_generator()
        self.calibrate()
        with self.interrupt.armed(self.runner):
            super().run()
        if self._max_iters == 0 and self.runner.val_loop is not None:
            self.runner.val_loop.run()  # post-training quantization: evaluate the calibrated student
        return self.runner.model

    def prepare_data(self):
        """Make (or finish) the synthetic set and load it."""
        if self.set_maker is not None:
            self.set_maker.make(visualizer=self.runner.visualizer)
        if self.data_source == 'synthetic':
            self.dataloader.dataset.load()
            if self.holdout_dataset is not None:
                self.holdout_dataset.load()

    def prepare_generator(self):
        """Build the generator for the model, then give it a resumed checkpoint's state or, on a
        fresh run, let it warm up."""
        if self.generator is None:
            return
        image_size = self.synthesis.get('image_size')
        if image_size is None:
            raise ValueError('set train_cfg.synthesis.image_size to the teacher\'s input size: the generator makes '
                             'images of that size')
        distiller = self.distiller_of(self.runner)
        self.generator.setup(distiller, image_size, self._max_iters, dataset=self.dataloader.dataset)
        self.generator_ready = True
        if self.loaded_generator_state is not None:
            self.generator.load_state_dict(self.loaded_generator_state)
            self.loaded_generator_state = None
            return
        if self._iter > 0:
            print_log(f'the checkpoint holds no state of {type(self.generator).__name__}: it starts afresh at '
                      f'iteration {self._iter}', logger='current', level=30)
        if self.generator.reads_student and not quantizers_initialized(distiller.student):
            # its loss runs the quantized student: calibrate it on the untrained generator's batches
            # for the warm-up, and afresh on the warmed-up generator's afterwards (calibrate())
            self.calibrate()
            self.generator.warmup(distiller, self.dataloader.batch_size)
            reset_activation_ranges(distiller.student)
        else:
            self.generator.warmup(distiller, self.dataloader.batch_size)

    def run_iter(self, data_batch):
        """One fine-tuning iteration; with a generator, its step first makes (or updates) the
        batch the student trains on (logged as mmengine's ``data_time``)."""
        if self.generator is not None:
            data_batch, log = self.generator.step(self.distiller_of(self.runner), data_batch)
            for key, value in log.items():
                self.runner.message_hub.update_scalar(f'train/{key}', value)
        super().run_iter(data_batch)

    def calibrate(self):
        """Initialise the student's activation quantizers on the first batches (a generator's:
        generated from them); a resumed run brought their state along and calibrates only a
        quantizer that has none."""
        distiller = self.distiller_of(self.runner)
        if self._iter > 0 and not uncalibrated_quantizers(distiller.student):
            return
        batches = first_batches(self.dataloader, self.calibration_batches)
        if self.generator is not None:
            batches = [self.generator.generate(distiller, data) for data in batches]
        if self._iter == 0:
            calibrate_student(distiller, batches)
        else:
            calibrate_missing_quantizers(distiller, batches)
