# The UPerNet-Swin teacher with its backbone initialised from the dense benchmark's Mask R-CNN
# teacher (same Swin: embed 48, depths 2-2-2-2, window 4, trained on the same images), the way
# mmseg's configs start from an ImageNet-pretrained backbone. Trained from scratch, the segmentor
# predicted background everywhere within our CPU budget (benchmarks/dense/README.md). Train the
# Mask R-CNN teacher first (configs/dense_bench/mask-rcnn_swin-e48-w4_fpn64_digits.py), then
#   python tools/train.py configs/dense_bench/upernet_swin-e48-w4_digits_det-init.py \
#       --work-dir work_dirs/dense_bench/upernet-swin
_base_ = ['./upernet_swin-e48-w4_digits.py']

detection_teacher = 'work_dirs/dense_bench/mask-rcnn/iter_1800.pth'
model = dict(backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=detection_teacher)))

max_iters = 400
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=50, end=max_iters, by_epoch=False)
]
default_hooks = dict(checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
