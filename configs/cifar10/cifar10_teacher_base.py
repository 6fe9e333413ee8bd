# Data, schedule and runtime shared by the CIFAR-10 teachers: mmpretrain on an ImageFolder of 32x32
# images (/work/shared/datasets/cifar10-jpeg.tar.gz extracted: <data_root>/train/<class>/*.jpg,
# <data_root>/test/<class>/*.jpg). The teacher sees the train split only; the test split is used
# for the final top-1 alone (no validation during training, no model selection on it).
# benchmarks.cifar10_table sets data_root, the class count, epochs, batch size and learning
# rate from its --scale preset; to train by hand:
#   python tools/train.py configs/cifar10/vit-mini_p2_cifar10.py --amp \
#       --cfg-options train_dataloader.dataset.data_root=/tmp/cifar10 test_dataloader.dataset.data_root=/tmp/cifar10
_base_ = ['mmpretrain::_base_/default_runtime.py']

data_root = 'data/cifar10'
image_size = 32
num_classes = 10
max_epochs = 100
warmup_epochs = 5

# CIFAR-10 channel statistics (RGB, 0-255); LoadImageFromFile gives BGR, hence to_rgb.
data_preprocessor = dict(num_classes=num_classes, mean=[125.307, 122.961, 113.8575], std=[51.5865, 50.847, 51.255],
                         to_rgb=True)

# Standard CIFAR augmentation: 4-pixel zero padding + random 32x32 crop, horizontal flip.
# (The Resize is a no-op on CIFAR; it lets the same config read any ImageFolder.)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size)),
    dict(type='RandomCrop', crop_size=image_size, padding=4),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size)),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=256, num_workers=8, persistent_workers=True, pin_memory=True,
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
test_dataloader = dict(
    batch_size=500, num_workers=8, persistent_workers=False, pin_memory=True,
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_evaluator = dict(type='Accuracy', topk=(1, ))
# no validation loop: the test split is only read once, at the end
val_dataloader = None
val_evaluator = None
val_cfg = None
test_cfg = dict()

# AdamW + linear warm-up + cosine, bf16 autocast (tools/train.py --amp or the benchmark driver on CUDA).
optim_wrapper = dict(
    type='AmpOptimWrapper', dtype='bfloat16',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=warmup_epochs, T_max=max_epochs - warmup_epochs,
         eta_min=1e-5, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs)
auto_scale_lr = dict(enable=False, base_batch_size=256)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1, save_last=True))
env_cfg = dict(cudnn_benchmark=True)
randomness = dict(seed=0, deterministic=False)
