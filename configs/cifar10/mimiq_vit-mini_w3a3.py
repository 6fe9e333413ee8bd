# MimiQ (IHC synthesis + KL + HAD) at W3/A3 on the CIFAR-10 ViT teacher, with the `gpu-30min`
# recipe of configs/cifar10/benchmark.py, for use by hand. The benchmark driver
# (benchmarks.cifar10_table) builds the same config for each of its units and saves the
# exact one it ran as <unit>/config.py. Usage:
#   python tools/train.py configs/cifar10/mimiq_vit-mini_w3a3.py --cfg-options \
#       model.teacher_checkpoint=TEACHER.pth test_dataloader.dataset.data_root=/tmp/cifar10
#   (the teacher: python tools/train.py configs/cifar10/vit-mini_p2_cifar10.py --amp --cfg-options
#    train_dataloader.dataset.data_root=/tmp/cifar10 test_dataloader.dataset.data_root=/tmp/cifar10)
_base_ = ['./vit-mini_p2_cifar10.py', '../_base_/mimiq_dfq.py']

globals().update(_base_.mimiq_recipe)  # the recipe's loop, optimizer, schedule and hooks replace the base's
model = dict(_base_.mimiq_model, _delete_=True, architecture=dict(_base_.model, drop_path_rate=0.0),
             quant=dict(w_bits=3, a_bits=3, act_method='lsq'),
             had=dict(metric='dssim', loss_weight=1.0),
             augment=dict(crop_scale=(0.6, 1.0), flip=0.5, jitter=0.2, jitter_prob=0.8, grayscale=0.0, blur=0.1))
train_cfg.update(
    synthesis=dict(train_cfg['synthesis'], num_images=1024, batch_size=128, steps=200, image_size=32,
                   log_interval=50),
    batch_size=128, max_iters=400, calibration_batches=4, val_interval=10 ** 9)
optim_wrapper['optimizer']['lr'] = 1e-2
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=400, T_max=400, eta_min=1e-4)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=1),
                     logger=dict(type='LoggerHook', interval=50))
