# Teacher of the dense benchmark: mmdet's Mask R-CNN Swin-T config with only its sizes
# shrunk for a 2-core CPU: Swin embed 48, depths 2-2-2-2, window 4 (shifted windows kept), FPN,
# RPN and RoI heads at 64 channels; 128x128 digits-on-CIFAR images (benchmarks/dense/README.md);
# a short iteration schedule; no pretrained backbone (nothing is downloaded).
#   python tools/train.py configs/dense_bench/mask-rcnn_swin-e48-w4_fpn64_digits.py \
#       --work-dir work_dirs/dense_bench/mask-rcnn
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './_base_/digits_instance.py']

model = dict(
    backbone=dict(embed_dims=48, depths=[2, 2, 2, 2], window_size=4, drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[48, 96, 192, 384], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=10),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=10)),
    # at most 5 digits per image: fewer proposals and sampled RoIs than COCO's
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

train_dataloader = dict(_delete_=True, **_base_.digits_train_dataloader,
                        sampler=dict(type='DefaultSampler', shuffle=True), batch_sampler=None)
val_dataloader = dict(_delete_=True, **_base_.digits_test_dataloader,
                      sampler=dict(type='DefaultSampler', shuffle=False), drop_last=False)
test_dataloader = val_dataloader
val_evaluator = dict(**_base_.digits_evaluator)
test_evaluator = val_evaluator

# schedule: the 1x recipe (AdamW, linear warm-up, x0.1 steps at 2/3 and 11/12) in iterations;
# lr raised from 1e-4 (batch 16, ImageNet-pretrained backbone) for training from scratch at batch 4
max_iters = 1800
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[max_iters * 2 // 3, max_iters * 11 // 12], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=5e-4))
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1),
                     logger=dict(interval=20))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
