# The recipe of benchmarks.dense_table: the paper's Table 2 in miniature on
# trained Mask R-CNN (Swin) and UPerNet (Swin, DeiT) teachers, digits on CIFAR-10 photos
# (benchmarks.make_dense_data; benchmarks/dense/README.md). Read by the same driver as
# the CIFAR-10 classification table (benchmarks.table); every unit's config is its
# teacher config wrapped by ../_base_/mimiq_dfq.py plus the overrides of this file.
benchmark = 'dense-digits'
image_size = (128, 128)  # synthesis size: the teachers' training size

# --data-root points the configs at another copy of the data (they read data/dense_digits/).
data = dict(bindings={'train_dataloader.dataset.data_root': '{data_root}/',
                      'test_dataloader.dataset.data_root': '{data_root}/',
                      'test_evaluator.ann_file': '{data_root}/annotations/instances_validation.json'},
            train_split='training', test_split='validation', decode_once=True, decode_steps=1,
            # every student also scored against its teacher's predictions (segmentors: label maps,
            # mimiq_mm.SegAgreementMetric; detectors: detections >= 0.3 as COCO ground truth, mmdet's
            # CocoMetric), which ranks rows by how far they deviate, not in which direction
            teacher_agreement=True)
# The configs' own evaluators: CocoMetric (box and mask mAP, 0-1 -> %) and IoUMetric (mIoU, %);
# fidelity to the teacher: mIoU and pixel agreement with the teacher's label maps as the labels.
metrics = [dict(key='coco/bbox_mAP', name='box mAP', scale=100.0),
           dict(key='coco/segm_mAP', name='mask mAP', scale=100.0),
           dict(key='mIoU', name='mIoU', scale=1.0),
           dict(key='teacher/mIoU', name='mIoU against the teacher\'s predictions (fidelity)', scale=1.0, fp=100.0),
           dict(key='teacher/aAcc', name='pixel agreement with the teacher (%)', scale=1.0, fp=100.0),
           dict(key='teacher/bbox_mAP', name='box mAP against the teacher\'s detections (fidelity)', scale=100.0,
                fp=100.0),
           dict(key='teacher/segm_mAP', name='mask mAP against the teacher\'s detections (fidelity)', scale=100.0,
                fp=100.0)]
FIDELITY = ('teacher/mIoU', 'teacher/bbox_mAP', 'teacher/segm_mAP')

teachers = dict(
    maskrcnn=dict(label='Mask R-CNN, Swin (embed 48, depths 2-2-2-2, window 4), FPN 64',
                  model=dict(task=dict(type='detection', num_rois=128, num_mask_rois=32, prior_rois=16))),
    upernet_swin=dict(label='UPerNet, Swin (embed 48, depths 2-2-2-2, window 4)',
                      model=dict(task=dict(type='segmentation', aux_weight=0.4))),
    upernet_deit=dict(label='UPerNet, DeiT-style ViT (embed 192, depth 6, 6 heads, patch 8)',
                      model=dict(task=dict(type='segmentation', aux_weight=0.4))),
    # background vs digit: the ten-class UPerNets find the digits but do not tell them apart
    upernet_swin_fg=dict(label='UPerNet, Swin as above, two classes (background, digit)',
                         model=dict(task=dict(type='segmentation', aux_weight=0.4))),
    upernet_deit_fg=dict(label='UPerNet, DeiT-style ViT as above, two classes (background, digit)',
                         model=dict(task=dict(type='segmentation', aux_weight=0.4))),
)

# Task prior (the dense head's own) + TV, with and without IHC; Gaussian noise for PTQ; PSAQ-ViT's
# synthesis (patch-similarity entropy + task prior + TV) as PSAQ-ViT V2's initial samples.
synthetic_sets = dict(
    noise=dict(method='noise', size='noise_images'),
    base=dict(method='base'),
    mimiq=dict(method='mimiq'),
    psaq_pool=dict(method='psaq'),
)

# The units of seed s read sets made with synthesis seed + s x 1,000,000 (<teacher>/synthetic/<set>_s<s>;
# seed 0's <teacher>/synthetic/<set>): the spread over seeds includes the synthesis'. False: every
# seed reads seed 0's sets.
synthetic_set_per_seed = True

rows = dict(
    noise_ptq=dict(label='Gaussian-noise PTQ', data='noise', finetune=False),
    base=dict(label='Base synthesis (task prior + TV) + task KD', data='base', had=False),
    ihc=dict(label='IHC synthesis + task KD (MimiQ without HAD)', data='mimiq', had=False),
    mimiq=dict(label='MimiQ (IHC + task prior + TV, task KD + HAD)', data='mimiq', had=True),
    real_ft=dict(label='Real-data FT (same QAT recipe, train split)', data='real', had=True),
    # The paper's data-free baselines on dense models (Table 2 has PSAQ-ViT V2; GDFQ as the CNN method that
    # applies to dense inputs: its generator learns against the task prior of MimiQ's dense synthesis, the
    # dense head's own outputs towards each image's class): their own parts, the scale's student recipe.
    gdfq=dict(label='GDFQ (generator against the task prior + task KD)', data='generator', had=False, cfg_options={
        'model.augment': None,
        # GDFQ: KL at T 20, times T²; its nn.KLDivLoss() averages over the classes too: T²/C (C = 2, the
        # table's UPerNets), here per pixel (the detector: its distillation terms, T on the RoI classes).
        # Its cross entropy towards y does not apply: y is the image's class, not each pixel's or box's label.
        'model.kd': dict(temperature=20.0, loss_weight=0.5),
        'train_cfg.generator': dict(
            type='mimiq_mm.GDFQGenerator', latent_dim=100, conditioning='embedding',
            lr=1e-3, betas=(0.5, 0.999), lr_milestones=(0.25, 0.5, 0.75),  # GDFQ: Adam, x0.1 at epochs 100/200/300
            warmup_ratio=50 / 350,            # GDFQ (ImageNet): 50 generator-only epochs of 400
            prior=dict(type='head'))}),       # the class prior of MimiQ's dense synthesis: the model's own head
    psaq_v2=dict(label='PSAQ-ViT V2 (adaptive samples + task KD)', data='psaq_pool', had=False, cfg_options={
        'model.augment': None,
        'train_cfg.generator': dict(
            # PSAQ-ViT's Adam betas; the sample step of the CIFAR-10 table (lr 0.02, ../cifar10/psaq-v2-step.py)
            type='mimiq_mm.PSAQV2SampleStep', steps=1, lr=0.02, betas=(0.5, 0.9),
            disagreement_weight=1.0, psaq_weight=1.0, tv_weight=2.5e-5, class_weight=0.0)}),  # V2: no class guidance
    # LSQ quantizers initialised from the min-max range (LSQ+), so fine-tuning starts at PTQ
    mimiq_lsqplus=dict(label='MimiQ, LSQ+ initialisation (fine-tuning starts at min-max PTQ)', data='mimiq',
                       had=True, cfg_options={'model.quant.lsq_init': 'minmax'}),
    base_lsqplus=dict(label='Base synthesis + task KD, LSQ+ initialisation', data='base', had=False,
                      cfg_options={'model.quant.lsq_init': 'minmax'}),
    real_ft_lsqplus=dict(label='Real-data FT, LSQ+ initialisation', data='real', had=True,
                         cfg_options={'model.quant.lsq_init': 'minmax'}),
    # segmentors: every class the teacher predicts in a batch gets an equal share of the pixel KL
    # (a test of why real batches, 92 % background, distil a less faithful student)
    real_ft_balanced=dict(label='Real-data FT, class-balanced pixel KL', data='real', had=True,
                          cfg_options={'model.task.class_balance': True}),
    mimiq_balanced=dict(label='MimiQ, class-balanced pixel KL', data='mimiq', had=True,
                        cfg_options={'model.task.class_balance': True}),
    # segmentors only: the train images as the test pipeline reads them (no random resize/crop, no
    # photometric distortion), as the synthetic images are fed (another test of the same question);
    # dataset.dataset: the driver wraps every dataset in mimiq_mm.DecodedImageDataset (decode_once)
    real_ft_unaugmented=dict(label='Real-data FT, train images without augmentation', data='real', had=True,
                             cfg_options={'train_dataloader.dataset.dataset.pipeline': [
                                 dict(type='LoadImageFromFile'),
                                 dict(type='Resize', scale=(512, 128), keep_ratio=True),
                                 dict(type='PackSegInputs')]}),
)

headline_bits = ['w4a4']
all_bits = ['w8a8', 'w4a8', 'w4a4', 'w3a3']

synthesis_common = dict(lr=0.1, alpha=1.0, beta=2.5e-5, ihc=dict(similarity='abs', ssim='global'), seed=0,
                        prior=dict(type='head'))

# The paper's expectations (each metric a teacher has; 'fp' is the full-precision teacher).
# The W4/A4 ones are also checked at W3/A3, the column added where W4/A4 leaves no gap.
LOW_BITS = ['w4a4', 'w3a3']
checks = [dict(type='gap', row=row, ref='fp', at_most=1, bits=['w8a8'], metric=metric)
          for row in ('noise_ptq', 'base', 'mimiq', 'real_ft')
          for metric in ('coco/bbox_mAP', 'coco/segm_mAP', 'mIoU')] + [
    dict(type='margin', row='mimiq', over='noise_ptq', at_least=10, bits=LOW_BITS),
    dict(type='margin', row='mimiq', over='base', at_least=0, bits=LOW_BITS),
    dict(type='gap', row='mimiq', ref='real_ft', at_most=5, bits=LOW_BITS),
    dict(type='order', rows=['real_ft', 'mimiq', 'base', 'noise_ptq'], bits=LOW_BITS),
] + [  # the same expectations on fidelity to the teacher, also where mIoU / mAP leave no gap
    check for metric in FIDELITY for check in (
        dict(type='margin', row='mimiq', over='base', at_least=0, bits=['w8a8', 'w4a8'] + LOW_BITS, metric=metric),
        dict(type='order', rows=['real_ft', 'mimiq', 'base', 'noise_ptq'], bits=['w8a8', 'w4a8'] + LOW_BITS,
             metric=metric))
]

# MimiQ at least as good as each data-free baseline of the paper, every cell (annotations and fidelity;
# each teacher is checked on the metrics its task reports).
checks += [dict(type='margin', row='mimiq', over=baseline, at_least=0, bits=['w4a4'], metric=metric)
           for baseline in ('gdfq', 'psaq_v2')
           for metric in ('coco/bbox_mAP', 'coco/segm_mAP', 'mIoU', 'teacher/aAcc') + FIDELITY]

scales = {
    # About 3 hours of one CPU core (sizing measured in benchmarks/dense/README.md).
    'cpu-2core': dict(
        description='one CPU core, ~3 h: 64 synthetic 128x128 images x 100 steps, 50-200 QAT iterations at batch 8, '
                    '500 test images; far below the paper recipe',
        teacher_configs=dict(maskrcnn='configs/dense_bench/mask-rcnn_swin-e48-w4_fpn64_digits.py',
                             upernet_swin='configs/dense_bench/upernet_swin-e48-w4_digits.py',
                             upernet_deit='configs/dense_bench/upernet_deit-e192-p8_digits.py',
                             upernet_swin_fg='configs/dense_bench/upernet_swin-e48-w4_digits-fg.py',
                             upernet_deit_fg='configs/dense_bench/upernet_deit-e192-p8_digits-fg.py'),
        # trained with tools/train.py (benchmarks/dense/README.md, "Reproduce"); the registered ones
        # (benchmarks/teachers.json) are read from the teachers folder instead when they are there
        teacher_checkpoints=dict(maskrcnn='work_dirs/dense_bench/mask-rcnn/iter_1800.pth',
                                 upernet_swin='work_dirs/dense_bench/upernet-swin/teacher.pth',
                                 upernet_deit='work_dirs/dense_bench/upernet-deit/teacher.pth',
                                 upernet_swin_fg='work_dirs/dense_bench/upernet-swin-fg/iter_800.pth',
                                 upernet_deit_fg='work_dirs/dense_bench/upernet-deit-fg/iter_800.pth'),
        # the table of benchmarks/results/dense_cpu-2core_amd-epyc_2026-12-06.md; the other rows are studies, run by --rows
        teachers=['maskrcnn', 'upernet_swin_fg', 'upernet_deit_fg'],
        rows=['noise_ptq', 'base', 'ihc', 'mimiq', 'real_ft'],
        bits=['w8a8', 'w4a8', 'w4a4', 'w3a3'], seeds=[0],
        bits_seeds=dict(w4a4=[0, 1], w3a3=[0, 1]),
        teacher=dict(epochs=0, warmup_epochs=0, batch_size=8, lr=1e-3, weight_decay=0.05, max_seconds=None),
        synthesis=dict(num_images=64, batch_size=16, steps=100, noise_images=32, log_interval=25),
        # the library's LSQ start and weight ranges (lsq_init / w_fit unset)
        finetune=dict(iters=200, batch_size=8, lr=1e-3, schedule='cosine', act_method='lsq',
                      kd_temperature=1.0, had_gamma=1.0, calibration_batches=2, augment=None, checkpoint_interval=1000),
        finetune_overrides=dict(maskrcnn=dict(iters=50),
                                upernet_deit=dict(iters=80, had_gamma=10.0),
                                upernet_deit_fg=dict(iters=80, had_gamma=10.0)),
        ptq=dict(batch_size=8, act_method='minmax', w_fit='minmax'),
        eval=dict(batch_size=8),
        workers=0,
        estimates=dict(teacher=0, synth=600, quant=300, eval=60),
    ),
}
