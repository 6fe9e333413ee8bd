# Teacher of the dense benchmark: mmseg's UPerNet Swin-T config with only its sizes
# shrunk for a 2-core CPU: Swin embed 48, depths 2-2-2-2, window 4 (shifted windows kept), UPerNet
# head at 64 channels (auxiliary FCN 32); 128x128 digits-on-CIFAR images, 11 classes
# (benchmarks/dense/README.md); a short schedule; no pretrained backbone (nothing is downloaded).
#   python tools/train.py configs/dense_bench/upernet_swin-e48-w4_digits.py \
#       --work-dir work_dirs/dense_bench/upernet-swin
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
          './_base_/digits_semantic.py']

crop_size = _base_.digits_crop_size
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(embed_dims=48, depths=[2, 2, 2, 2], window_size=4, drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(in_channels=[48, 96, 192, 384], channels=64, num_classes=_base_.digits_num_classes,
                     loss_decode=dict(_base_.digits_loss, loss_weight=1.0)),
    auxiliary_head=dict(in_channels=192, channels=32, num_classes=_base_.digits_num_classes,
                        loss_decode=dict(_base_.digits_loss, loss_weight=0.4)))

train_dataloader = dict(_delete_=True, **_base_.digits_train_dataloader,
                        sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(_delete_=True, **_base_.digits_test_dataloader,
                      sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader

# schedule: the 160k recipe (AdamW, linear warm-up, poly decay) in fewer iterations; lr raised
# from 6e-5 (batch 16, ImageNet-pretrained backbone) for training from scratch; background weighs
# 0.2 in the loss (_base_/digits_semantic.py)
max_iters = 800
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=100, end=max_iters, by_epoch=False)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(checkpoint=dict(interval=max_iters, max_keep_ckpts=1), logger=dict(interval=20))
randomness = dict(seed=0)
