# The quantization recipe of the dense benchmark at the size of a 2-core CPU: the MimiQ recipe of
# ../../_base_/mimiq_dfq.py (10K images x 2K steps, 200 epochs at batch 16) with a few hundred
# images and iterations (sizing measured in benchmarks/dense/README.md), as `bench_*` variables and,
# for a model config to take over in one line, `bench_recipe` (see mask-rcnn_swin-e48-w4_mimiq_w4a4.py):
#   globals().update(_base_.bench_recipe)
_base_ = ['../../_base_/mimiq_dfq.py']

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
bench_recipe = dict(
    train_cfg=dict(_delete_=True, **bench_train_cfg),
    train_dataloader=dict(batch_size=bench_ft_batch),  # real-data FT: the same batch as on synthetic images
    optim_wrapper=dict(_delete_=True, **bench_optim_wrapper),
    param_scheduler=bench_param_scheduler,
    default_hooks=bench_default_hooks,
    log_processor=_base_.mimiq_log_processor,
    custom_hooks=_base_.mimiq_custom_hooks)
