# The demo's full-precision teacher: a small DeiT-style ViT (timm, through mmpretrain's
# TimmClassifier) on scikit-learn's digits at 16x16 (tools/demo.py exports them to data/digits).
_base_ = ['mmpretrain::_base_/default_runtime.py']

data_root = 'data/digits'
image_size = 16
model = dict(
    type='TimmClassifier',
    model_name='vit_tiny_patch16_224',
    pretrained=False,
    img_size=image_size,
    patch_size=2,
    embed_dim=96,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    num_classes=10,
    loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1))
data_preprocessor = dict(num_classes=10, mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=image_size, crop_ratio_range=(0.8, 1.0), backend='pillow'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=64, num_workers=0, persistent_workers=False,
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=128, num_workers=0, persistent_workers=False,
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, T_max=30, eta_min=1e-5)]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=10)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(logger=dict(type='LoggerHook', interval=10), checkpoint=dict(type='CheckpointHook', interval=30))
randomness = dict(seed=0, deterministic=False)
