# Teacher of the dense benchmark: mmseg's UPerNet DeiT-S/16 config with only its sizes
# shrunk for a 2-core CPU: a DeiT-style ViT (class token, 6 heads) of embed 192, depth 6, patch 8
# on 128x128 images (a 16x16 patch grid), features of blocks 2/3/5/6 (the base: 3/6/9/12 of 12),
# UPerNet head at 64 channels (auxiliary FCN 32); 11 classes (benchmarks/dense/README.md); a short
# schedule; no pretrained backbone (nothing is downloaded).
#   python tools/train.py configs/dense_bench/upernet_deit-e192-p8_digits.py \
#       --work-dir work_dirs/dense_bench/upernet-deit
_base_ = ['mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py', './_base_/digits_semantic.py']

crop_size = _base_.digits_crop_size
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, patch_size=8, embed_dims=192, num_layers=6, num_heads=6,
                  out_indices=(1, 2, 4, 5)),
    decode_head=dict(in_channels=[192] * 4, channels=64, num_classes=_base_.digits_num_classes,
                     loss_decode=dict(_base_.digits_loss, loss_weight=1.0)),
    auxiliary_head=dict(in_channels=192, channels=32, num_classes=_base_.digits_num_classes,
                        loss_decode=dict(_base_.digits_loss, loss_weight=0.4)))

train_dataloader = dict(_delete_=True, **_base_.digits_train_dataloader,
                        sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(_delete_=True, **_base_.digits_test_dataloader,
                      sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader

# schedule: the 80k recipe (AdamW, linear warm-up, poly decay) in fewer iterations; lr raised
# from 6e-5 (batch 16, ImageNet-pretrained backbone) for training from scratch; background weighs
# 0.2 in the loss (_base_/digits_semantic.py)
max_iters = 500
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=100, end=max_iters, by_epoch=False)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(checkpoint=dict(interval=max_iters, max_keep_ckpts=1), logger=dict(interval=20))
randomness = dict(seed=0)
