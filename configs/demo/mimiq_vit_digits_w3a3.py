# Embedded default: MimiQ data-free W3/A3 quantization of the digits teacher (tools/demo.py).
# Scaled down from the paper's recipe (10K images x 2K steps, 200 epochs) to run on a CPU in minutes.
_base_ = ['./vit_digits_teacher.py', '../_base_/mimiq_dfq.py']

globals().update(_base_.mimiq_recipe)  # the recipe's loop, optimizer, schedule and hooks replace the base's
model = dict(_base_.mimiq_model, _delete_=True, architecture=_base_.model,
             teacher_checkpoint='work_dirs/demo/teacher/epoch_30.pth',
             quant=dict(w_bits=3, a_bits=3, act_method='lsq'),
             had=dict(metric='dssim', loss_weight=1.0),
             augment=dict(crop_scale=(0.7, 1.0), flip=0.0, jitter=0.2, grayscale=0.0, blur=0.1))
train_cfg.update(
    synthesis=dict(train_cfg['synthesis'], num_images=384, batch_size=64, steps=150, image_size=16, log_interval=50),
    batch_size=32, max_iters=300, calibration_batches=4, val_interval=300)
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, T_max=300, eta_min=1e-5)]
optim_wrapper['optimizer']['lr'] = 5e-3
default_hooks = dict(default_hooks, checkpoint=dict(default_hooks['checkpoint'], interval=300),
                     logger=dict(type='LoggerHook', interval=50))
