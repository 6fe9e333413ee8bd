# The two-class UPerNet-DeiT teacher of the dense benchmark: background vs digit (see
# upernet_swin-e48-w4_digits-fg.py for why two classes). The ten-class DeiT model with only the
# number of classes and the label folder changed; trained from scratch (no detector with this
# backbone to start from), 800 iterations.
#   python tools/train.py configs/dense_bench/upernet_deit-e192-p8_digits-fg.py \
#       --work-dir work_dirs/dense_bench/upernet-deit-fg
_base_ = ['./upernet_deit-e192-p8_digits.py']

model = _base_.digits_fg_heads
train_dataloader = dict(dataset=_base_.digits_fg_train_dataset)
val_dataloader = dict(dataset=_base_.digits_fg_test_dataset)
test_dataloader = val_dataloader

max_iters = 800
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=100, end=max_iters, by_epoch=False)
]
default_hooks = dict(checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
