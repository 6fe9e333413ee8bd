# MimiQ data-free QAT, the paper's recipe (sections 5 and 6.1), as `mimiq_*` variables.
# A model config inherits its OpenMMLab config (the teacher's `model`, data pipeline and evaluator)
# and this file. mmengine forbids the same key in two bases, so the recipe's loop, optimizer,
# schedule and hooks come as one variable, `mimiq_recipe`, that the model config takes over in one
# line, and the distiller wraps the base's model:
#   _base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py', '../_base_/mimiq_dfq.py']
#   globals().update(_base_.mimiq_recipe)
#   model = dict(_base_.mimiq_model, _delete_=True, architecture=_base_.model)
#   train_cfg['synthesis']['image_size'] = 224
# then only what differs from the recipe (see configs/deit/ and configs/mask_rcnn/).
custom_imports = dict(imports=['mimiq_mm'], allow_failed_imports=False)

# The distiller around a base config's model: model = dict(_base_.mimiq_model, _delete_=True,
# architecture=_base_.model, ...). L_T = KL + gamma * L_HAD (paper Table 3 sweeps gamma 1, 10, 100).
mimiq_model = dict(
    type='mimiq_mm.QuantDistiller',
    teacher_checkpoint=None,
    # LSQ activations started at the range of least quantization error, weights clipped likewise
    # (mimiq_mm.quant.QuantConfig's defaults: never below noise-calibrated PTQ in our measurements);
    # the paper reports the better of min-max and LSQ: mimiq_paper_quant below is its min-max form
    quant=dict(w_bits=4, a_bits=4, act_method='lsq', lsq_init='mse', w_fit='mse'),
    kd=dict(temperature=1.0, loss_weight=1.0),
    had=dict(metric='dssim', loss_weight=10.0))

# The paper's quantizers as the implementation notes read them: per-channel min-max weights, EMA
# min-max activations (model = dict(..., quant=dict(_base_.mimiq_paper_quant, w_bits=4, a_bits=4))).
mimiq_paper_quant = dict(act_method='minmax', w_fit='minmax')

num_synthetic = 10000  # paper: 10K images
ft_batch = 16          # paper: batch 16 (per GPU)
iters_per_epoch = num_synthetic // ft_batch
mimiq_train_cfg = dict(
    type='mimiq_mm.DataFreeQATLoop',
    data_source='synthetic',
    synthesis=dict(
        method='mimiq',          # 'mimiq' | 'base' | 'psaq' | 'noise'
        num_images=num_synthetic,
        batch_size=32,           # paper: 32
        steps=2000,              # paper: 2K steps per batch
        lr=0.1,                  # paper: Adam lr 0.1, betas (0.9, 0.999)
        alpha=1.0,               # weight of L_CL
        beta=2.5e-5,             # weight of L_TV
        ihc=dict(similarity='abs', ssim='global'),  # paper: 1 - |SSIM|; lineage: 'squared'
        out_dir=None,            # default <work_dir>/synthetic_<method>; reuse a set by pointing here
        seed=0),
    batch_size=ft_batch,
    max_iters=200 * iters_per_epoch,  # paper: 200 epochs
    calibration_batches=4,
    val_interval=25 * iters_per_epoch)

# Paper: SGD, Nesterov momentum 0.9, lr 1e-3, x0.1 at epochs 50 and 100.
mimiq_optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.0))
mimiq_param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, milestones=[50 * iters_per_epoch, 100 * iters_per_epoch], gamma=0.1)
]
mimiq_auto_scale_lr = dict(enable=False, base_batch_size=16)

mimiq_default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5 * iters_per_epoch, max_keep_ckpts=2),
    logger=dict(type='LoggerHook', interval=50))
mimiq_log_processor = dict(by_epoch=False)
mimiq_custom_hooks = [dict(type='mimiq_mm.StudentExportHook')]

# What a model config takes over in one line, `globals().update(_base_.mimiq_recipe)`: the
# recipe's settings replace its OpenMMLab base's (`_delete_`: nothing of the base's schedule stays).
mimiq_recipe = dict(
    train_cfg=dict(_delete_=True, **mimiq_train_cfg),
    optim_wrapper=dict(_delete_=True, **mimiq_optim_wrapper),
    param_scheduler=mimiq_param_scheduler,
    auto_scale_lr=mimiq_auto_scale_lr,
    default_hooks=mimiq_default_hooks,
    log_processor=mimiq_log_processor,
    custom_hooks=mimiq_custom_hooks)
