# Embedded default: MimiQ data-free W3/A3 quantization of the digits teacher (tools/demo.py).
# Scaled down from the paper's recipe (10K images x 2K steps, 200 epochs) to run on a CPU in minutes.
_base_ = ['./vit_digits_teacher.py', '../_base_/mimiq_dfq.py']

model = dict(
    _delete_=True,
    type='mimiq_mm.QuantDistiller',
    architecture=_base_.model,
    teacher_checkpoint='work_dirs/demo/teacher/epoch_30.pth',
    quant=dict(w_bits=3, a_bits=3, act_method='lsq'),
    kd=dict(temperature=1.0, loss_weight=1.0),
    had=dict(metric='dssim', loss_weight=1.0),
    augment=dict(crop_scale=(0.7, 1.0), flip=0.0, jitter=0.2, grayscale=0.0, blur=0.1))
# the MimiQ recipe of ../_base_/mimiq_dfq.py, scaled down below
train_cfg = dict(_delete_=True, **_base_.mimiq_train_cfg)
optim_wrapper = dict(_delete_=True, **_base_.mimiq_optim_wrapper)
param_scheduler = _base_.mimiq_param_scheduler
auto_scale_lr = _base_.mimiq_auto_scale_lr
default_hooks = _base_.mimiq_default_hooks
log_processor = _base_.mimiq_log_processor
custom_hooks = _base_.mimiq_custom_hooks
val_cfg = dict()
test_cfg = dict()
train_cfg.update(
    synthesis=dict(train_cfg['synthesis'], num_images=384, batch_size=64, steps=150, image_size=16, log_interval=50),
    batch_size=32, max_iters=300, calibration_batches=4, val_interval=300)
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, T_max=300, eta_min=1e-5)]
optim_wrapper['optimizer']['lr'] = 5e-3
default_hooks = dict(default_hooks, checkpoint=dict(default_hooks['checkpoint'], interval=300),
                     logger=dict(type='LoggerHook', interval=50))
