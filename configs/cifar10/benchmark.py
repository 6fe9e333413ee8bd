# The recipe of benchmarks.cifar10_table: teachers, the methods compared (rows of the table),
# bit-widths (columns) and the scale presets that size every stage. Read with mmengine's Config;
# give another file with --benchmark-config, or override single values on the command line
# (--teacher-epochs, --synth-images, --synth-steps, --ft-iters, ...; see --help).
#
# Methods follow the paper's Table 1 (baselines vs MimiQ vs "Real-Data FT") and Table 4 (ablation
# of the synthesis and distillation losses):
#   noise_ptq  post-training quantization (min-max) calibrated on Gaussian noise, no fine-tuning
#   psaq       PSAQ-ViT: patch-similarity-entropy synthesis, min-max PTQ on 32 images
#   psaq_v2    PSAQ-ViT V2: PSAQ-ViT's images updated at every fine-tuning iteration to make teacher and
#              student disagree, the student trained to agree (KL)
#   gdfq       GDFQ: a conditional generator trained against the teacher, alternating with the student (KD + CE)
#   qimera     Qimera: GDFQ with superposed class embeddings (boundary-supporting samples)
#   adadfq     AdaDFQ: a generator whose samples adapt their difficulty to the student, within margins
#   base       base synthesis (L_CL + L_TV) + KL fine-tuning                (Table 4, row 1)
#   ihc        IHC synthesis (L_IHC + L_CL + L_TV) + KL = MimiQ without HAD (Table 4, row 4)
#   mimiq      IHC synthesis + KL + HAD = MimiQ                             (Table 4, row 5)
#   real_ft    the same QAT recipe (KL + HAD) on the real train split: the upper reference
# The synthetic set of each synthesis method is made once per teacher and seed (ihc and mimiq share
# one) and reused by every bit-width of that seed (train_cfg.synthetic_set; see synthetic_set_per_seed
# below). The generator rows make their images during fine-tuning (data='generator'); psaq_v2 evolves
# a copy of its set in memory.
# The four baselines that train a generator or update samples keep their papers' own parts (generator,
# its optimiser and warm-up, their losses and temperatures; the CIFAR settings of their released code)
# and share the scale's student recipe (optimizer, iterations, batch, quantizers) with every row.
benchmark = 'cifar10'
image_size = 32  # synthesis size: the teachers' input

# The dataset: an ImageFolder with train/<class>/* and test/<class>/* (cifar10-jpeg.tar.gz
# extracted). `bindings` point every config at --data-root; the images are decoded once per
# process (the teachers train for epochs, every unit evaluates 10,000 test images).
data = dict(bindings={'train_dataloader.dataset.data_root': '{data_root}',
                      'test_dataloader.dataset.data_root': '{data_root}'},
            train_split='train', test_split='test', decode_once=True, decode_steps=1)
metrics = [dict(key='accuracy/top1', name='top-1 (%)', scale=1.0)]

teachers = dict(
    vit=dict(label='ViT (DeiT-S-style, patch 2, class token, 6 heads)'),
    swin=dict(label='Swin (patch 2, window 4)'),
)

# The synthetic sets, made once per teacher and seed and shared by every row and bit-width that
# reads them: train_cfg.synthesis options; `size` names the scale's image count for the set.
synthetic_sets = dict(
    noise=dict(method='noise', size='noise_images'),
    psaq=dict(method='psaq', size='psaq_images'),
    psaq_pool=dict(method='psaq'),  # PSAQ-ViT V2's initial samples: PSAQ-ViT's synthesis, the full set size
    base=dict(method='base'),
    mimiq=dict(method='mimiq'),
)

# A seed varies the synthetic images as well as fine-tuning: the units of seed s read sets made with
# the synthesis seed of synthesis_common plus s x 1,000,000 (seed 0's are <teacher>/synthetic/<set>,
# seed s's <teacher>/synthetic/<set>_s<s>; a set selected from another follows its source's seed), so
# the spread over seeds includes the synthesis' own. False: every seed reads seed 0's sets (the spread
# of fine-tuning alone, on one shared set).
synthetic_set_per_seed = True

# The rows (insertion order = table order): the data a row quantizes with (a synthetic set or
# 'real', the train split), whether it fine-tunes (else post-training quantization calibrated on
# the whole set), whether L_HAD is on; `cfg_options` may add any config override.
rows = dict(
    noise_ptq=dict(label='Gaussian-noise PTQ', data='noise', finetune=False),
    psaq=dict(label='PSAQ-ViT (PTQ on PSAQ images)', data='psaq', finetune=False),
    psaq_v2=dict(label='PSAQ-ViT V2 (adaptive samples + KL)', data='psaq_pool', had=False, cfg_options={
        'model.augment': None,
        'train_cfg.generator': dict(
            type='mimiq_mm.PSAQV2SampleStep', steps=1,
            # PSAQ-ViT's Adam betas (0.5, 0.9) and cosine decay; lr 0.02, not its synthesis lr 0.2, which
            # drifts the written-back samples into noise (W4/A4: 35.61 against 57.76, psaq-v2-step.py)
            lr=0.02, betas=(0.5, 0.9),
            disagreement_weight=1.0, psaq_weight=1.0, tv_weight=2.5e-5,
            class_weight=0.0)}),               # V2: no class guidance
    gdfq=dict(label='GDFQ (generator + KD + CE)', data='generator', had=False, cfg_options={
        'model.augment': None,
        # GDFQ: T 20, alpha 1, times T²; its nn.KLDivLoss() also averages over the 10 classes: T²/C
        'model.kd': dict(temperature=20.0, loss_weight=0.1),
        'model.student_losses': [dict(type='mimiq_mm.LabelCrossEntropyLoss', loss_weight=1.0)],  # + CE towards y
        'train_cfg.generator': dict(
            type='mimiq_mm.GDFQGenerator', latent_dim=100, conditioning='embedding',  # GDFQ's CIFAR generator
            lr=1e-3, betas=(0.5, 0.999),      # GDFQ: Adam lr 1e-3, betas (0.5, 0.999) ...
            lr_milestones=(0.25, 0.5, 0.75),  # ... x0.1 at epochs 100, 200, 300 of 400
            warmup_ratio=4 / 396)}),           # GDFQ (CIFAR): 4 generator-only warm-up epochs of 400
    qimera=dict(label='Qimera (superposed embeddings + KD + CE)', data='generator', had=False, cfg_options={
        'model.augment': None,
        'model.kd': dict(temperature=20.0, loss_weight=0.1),  # as GDFQ
        'model.student_losses': [dict(type='mimiq_mm.LabelCrossEntropyLoss', loss_weight=1.0)],  # soft targets
        'train_cfg.generator': dict(
            type='mimiq_mm.QimeraGenerator', superpose_prob=0.4, superpose_classes=2,  # Qimera (CIFAR-10 script)
            noise_scale=1.0, embed_init='classifier', disentangle=True, intermediate_dim=100,
            conditioning='embedding', lr=1e-3, betas=(0.5, 0.999), lr_milestones=(0.25, 0.5, 0.75),
            warmup_ratio=4 / 396)}),           # Qimera (CIFAR-10): 4 warm-up epochs of 400
    adadfq=dict(label='AdaDFQ (adaptive generator, margins)', data='generator', had=False, cfg_options={
        'model.augment': None,
        'model.kd': dict(temperature=20.0, loss_weight=0.0),  # AdaDFQ's student: no KL, ...
        # ... but -T²·H(softmax((t - s) / T)), T 20 (its CIFAR trainer)
        'model.student_losses': [dict(type='mimiq_mm.DifferenceEntropyLoss', temperature=20.0)],
        'train_cfg.generator': dict(
            type='mimiq_mm.AdaDFQGenerator',
            lower=0.1, upper=0.8,             # AdaDFQ (CIFAR-10, 3 bits): lambda_l 0.1, lambda_u 0.8
            disagreement_weight=0.2, agreement_weight=0.1, class_weight=1.0,  # alpha_ds 0.2, alpha_as 0.1, beta 1
            latent_dim=100, conditioning='embedding', lr=1e-3, betas=(0.5, 0.999),
            lr_milestones=(0.25, 0.5, 0.75), warmup_ratio=4 / 396)}),  # AdaDFQ (CIFAR): epochs 100/200/300, 4 warm-up
    base=dict(label='Base synthesis (CL+TV) + KL', data='base', had=False),
    ihc=dict(label='IHC + KL (MimiQ w/o HAD)', data='mimiq', had=False),
    mimiq=dict(label='IHC + KL + HAD (MimiQ)', data='mimiq', had=True),
    real_ft=dict(label='Real-data FT (same QAT recipe, train split)', data='real', had=True),
)

# The paper's expectations, checked on the measured means (see benchmarks/table/report.py).
checks = [
    dict(type='gap', row='mimiq', ref='real_ft', at_most=5, bits=['w3a3', 'w2a4']),
    dict(type='margin', row='mimiq', over='psaq', at_least=15, bits=['w3a3', 'w2a4']),
    dict(type='margin', row='mimiq', over='noise_ptq', at_least=15, bits=['w3a3', 'w2a4']),
    dict(type='order', rows=['real_ft', 'mimiq', 'ihc', 'base', 'psaq'], bits=['w3a3', 'w2a4']),
    dict(type='gap', row='mimiq', ref='fp', at_most=2, bits=['w4a4']),
    dict(type='below', row='noise_ptq', value=30, bits=['w3a3']),
]
# The paper's Table 1: MimiQ at least as accurate as every data-free baseline, in every cell.
BASELINES = ['noise_ptq', 'psaq', 'psaq_v2', 'gdfq', 'qimera', 'adadfq']
checks += [dict(type='margin', row='mimiq', over=baseline, at_least=0, bits=['w4a4', 'w3a3', 'w2a4'])
           for baseline in BASELINES]

headline_bits = ['w3a3', 'w2a4']
all_bits = ['w3a3', 'w2a4', 'w4a4', 'w5a5', 'w4a8']

# Synthesis settings common to every scale (paper section 6.1 and implementation notes).
synthesis_common = dict(lr=0.1, alpha=1.0, beta=2.5e-5, ihc=dict(similarity='abs', ssim='global'), seed=0)

# SimCLR-style augmentation of synthetic batches during fine-tuning, sized for 32x32 images.
ft_augment = dict(crop_scale=(0.6, 1.0), flip=0.5, jitter=0.2, jitter_prob=0.8, grayscale=0.0, blur=0.1)

scales = {
    # CPU smoke test of the driver on tiny generated data: every stage runs, the figures mean nothing.
    'smoke': dict(
        description='CPU smoke test of the driver on tiny data; the figures mean nothing',
        teacher_configs=dict(vit='configs/cifar10/vit-smoke_cifar10.py', swin='configs/cifar10/swin-smoke_cifar10.py'),
        teachers=['vit'], bits=['w3a3'], seeds=[0],
        teacher=dict(epochs=2, warmup_epochs=0, batch_size=8, lr=1e-3, weight_decay=0.05, max_seconds=None),
        synthesis=dict(num_images=8, batch_size=4, steps=2, noise_images=8, psaq_images=8, amp_dtype=None,
                       log_interval=1),
        finetune=dict(iters=4, batch_size=4, lr=5e-3, schedule='cosine', act_method='lsq',
                      kd_temperature=1.0, had_gamma=1.0, calibration_batches=1, augment=ft_augment, drop_path_rate=0.0,
                      checkpoint_interval=1000),
        ptq=dict(batch_size=4, act_method='minmax', w_fit='minmax'),
        eval=dict(batch_size=16),
        workers=0,
        estimates=dict(teacher=30, synth=10, quant=10, eval=5),
    ),
    # A 2-core CPU (the development machine, no GPU) in about 35 minutes (76 before the speed work):
    # a smaller teacher (patch 4, 8x8 grid, 6 heads), 256 synthetic images, 150 fine-tuning iterations.
    # Far below the paper's recipe and below gpu-30min; it exists so the method can be checked on real
    # data where no GPU is lent.
    'cpu-2core': dict(
        description='a 2-core CPU in ~35 min: 0.45 M-parameter ViT teacher (patch 4, 6 heads) trained ~14 min, '
                    '256 synthetic images x 200 steps, 150 fine-tuning iterations; far below the paper recipe',
        teacher_configs=dict(vit='configs/cifar10/vit-cpu_p4_cifar10.py',
                             swin='configs/cifar10/swin-cpu_p4w4_cifar10.py'),
        teacher_labels=dict(vit='ViT (DeiT-S-style heads, patch 4, class token, 6 heads, dim 96, depth 4)',
                            swin='Swin (patch 4, window 4, two stages, 3/6 heads, dim 48)'),
        teachers=['vit'], bits=['w3a3', 'w2a4'], seeds=[0, 1, 2],
        # a fixed schedule; max_seconds only guards against a runaway run (the report marks a cut teacher)
        teacher=dict(epochs=6, warmup_epochs=1, batch_size=128, lr=2e-3, weight_decay=0.05, max_seconds=3600),
        synthesis=dict(num_images=256, batch_size=64, steps=200, noise_images=128, psaq_images=32,
                       amp_dtype=None, log_interval=50),
        finetune=dict(iters=150, batch_size=64, lr=1e-2, schedule='cosine', act_method='lsq',
                      kd_temperature=1.0, had_gamma=1.0, calibration_batches=2, augment=ft_augment,
                      drop_path_rate=0.0, checkpoint_interval=1000),
        ptq=dict(batch_size=16, act_method='minmax', w_fit='minmax'),
        eval=dict(batch_size=64),  # cache-sized batches: 10K test images in ~19 s of one core instead of ~30 s at 500 (benchmarks/cifar10/README.md)
        workers=1,
        # after the teacher (both cores), two one-thread lanes share the other units: the small matrices
        # of this model scale poorly over threads (benchmarks/cifar10/README.md, "Two lanes")
        jobs=2,
        estimates=dict(teacher=920, synth=240, quant=150, eval=30),
    ),
    # One H100 lent for about 30 device minutes (commands of <= 10 minutes, machine starts
    # included): the main ViT teacher (<= 4.5 min), three synthetic sets (~1 min each), 16 fine-tuning
    # and 8 PTQ units at the two headline bit-widths and 2 seeds (~30 s / ~8 s each; estimates, not
    # measurements). Swin and W4/A4, W5/A5, W4/A8 only if time is left.
    'gpu-30min': dict(
        description='one ~30 GPU-minute run on an H100: small teachers, 1K synthetic images x 200 steps, '
                    '400 fine-tuning iterations; far below the paper recipe',
        teacher_configs=dict(vit='configs/cifar10/vit-mini_p2_cifar10.py',
                             swin='configs/cifar10/swin-mini_p2w4_cifar10.py'),
        teachers=['vit'], bits=['w3a3', 'w2a4'], seeds=[0, 1],
        teacher=dict(epochs=60, warmup_epochs=5, batch_size=256, lr=1e-3, weight_decay=0.05, max_seconds=600),
        synthesis=dict(num_images=1024, batch_size=128, steps=200, noise_images=128, psaq_images=32,
                       amp_dtype=None, log_interval=50),
        finetune=dict(iters=400, batch_size=128, lr=1e-2, schedule='cosine', act_method='lsq',
                      kd_temperature=1.0, had_gamma=1.0, calibration_batches=4, augment=ft_augment,
                      drop_path_rate=0.0, checkpoint_interval=200),
        ptq=dict(batch_size=16, act_method='minmax', w_fit='minmax'),
        eval=dict(batch_size=500),
        workers=10,
        estimates=dict(teacher=290, synth=60, quant=30, eval=8),
    ),
    # The paper's data-free recipe (10K images x 2K steps, 200 epochs of SGD at batch 16, lr decay at
    # epochs 50 and 100) on DeiT-S-sized teachers: many GPU-hours.
    'paper': dict(
        description="the paper's recipe (10K synthetic images x 2K steps, 200 fine-tuning epochs); GPU-hours",
        teacher_configs=dict(vit='configs/cifar10/deit-s_p2_cifar10.py', swin='configs/cifar10/swin-t_p2w4_cifar10.py'),
        teachers=['vit', 'swin'], bits=all_bits, seeds=[0, 1, 2],
        teacher=dict(epochs=300, warmup_epochs=10, batch_size=256, lr=1e-3, weight_decay=0.05, max_seconds=None),
        synthesis=dict(num_images=10000, batch_size=32, steps=2000, noise_images=128, psaq_images=32,
                       amp_dtype=None, log_interval=500),
        finetune=dict(iters=125000, batch_size=16, lr=1e-3, schedule='paper', milestones=[31250, 62500],
                      act_method='lsq', kd_temperature=1.0, had_gamma=10.0, calibration_batches=4,
                      augment=ft_augment, drop_path_rate=0.0, checkpoint_interval=5000),
        ptq=dict(batch_size=16, act_method='minmax', w_fit='minmax'),
        eval=dict(batch_size=500),
        workers=10,
        estimates=dict(teacher=7200, synth=7200, quant=7200, eval=10),
    ),
}
