# The quantization recipe of the dense benchmark (issue 15) at the size of a 2-core CPU, as
# `bench_*` variables (mmengine forbids a key in two bases; a MimiQ config takes them over
# explicitly, see mask-rcnn_swin-e48-w4_mimiq_w4a4.py). The paper's recipe is ../../_base_/mimiq_dfq.py:
# 10K images x 2K steps, 200 epochs at batch 16; here a few hundred images and iterations
# (sizing measured in benchmarks/dense/README.md).
bench_image_size = (128, 128)  # the teachers' training size
bench_ft_batch = 8
bench_ft_iters = 200
bench_train_cfg = dict(
    type='mimiq_mm.DataFreeQATLoop',
    data_source='synthetic',
    synthesis=dict(
        method='mimiq', num_images=128, batch_size=16, steps=100, image_size=bench_image_size,
        lr=0.1, alpha=1.0, beta=2.5e-5, ihc=dict(similarity='abs', ssim='global'), prior=dict(type='head'),
        out_dir=None, seed=0, log_interval=25),
    batch_size=bench_ft_batch,
    max_iters=bench_ft_iters,
    calibration_batches=2,
    val_interval=10 ** 9)  # validation (the test split) once, at the end
# The paper's optimizer (SGD, Nesterov, lr 1e-3) with a cosine decay over the short run.
bench_optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.0))
bench_param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=bench_ft_iters, T_max=bench_ft_iters, eta_min=1e-5)
]
bench_default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=1),
    logger=dict(type='LoggerHook', interval=10))
