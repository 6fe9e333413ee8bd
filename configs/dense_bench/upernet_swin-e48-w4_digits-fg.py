# The two-class UPerNet-Swin teacher of the dense benchmark: background vs digit (all ten digits one
# class; label maps in annotations/<split>_foreground/, written by benchmarks.make_dense_data).
# With the ten digit classes the segmentor finds the digits (on test images: P(background) 0.20 on
# digit pixels vs 0.75 on background after 800 iterations, 97 % of digit pixels below 0.5) but not
# which digit they are (pixel identity 15 %, chance 10 %), so argmax stays background and mIoU is
# the class prior (benchmarks/dense/README.md, "What was tried"). Same model, backbone initialised
# from the detector teacher's Swin; only the number of classes and the label folder change.
#   python tools/train.py configs/dense_bench/upernet_swin-e48-w4_digits-fg.py \
#       --work-dir work_dirs/dense_bench/upernet-swin-fg
_base_ = ['./upernet_swin-e48-w4_digits_det-init.py']

model = _base_.digits_fg_heads
train_dataloader = dict(dataset=_base_.digits_fg_train_dataset)
val_dataloader = dict(dataset=_base_.digits_fg_test_dataset)
test_dataloader = val_dataloader

max_iters = 800
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=50, end=max_iters, by_epoch=False)
]
default_hooks = dict(checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
