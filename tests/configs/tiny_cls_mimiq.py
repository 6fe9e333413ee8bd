# A tiny classification run of the whole data-free pipeline for tests: the demo's configs with a
# 2-block ViT, 8 synthetic images of 2 optimisation steps and a few fine-tuning iterations.
# The tests set data_root and model.teacher_checkpoint with --cfg-options.
_base_ = ['../../configs/demo/mimiq_vit_digits_w3a3.py']

model = dict(
    architecture=dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=4),
    quant=dict(w_bits=4, a_bits=4, act_method='lsq'),
    had=dict(loss_weight=1.0),
    augment=None)
data_preprocessor = dict(num_classes=4)
train_cfg = dict(
    synthesis=dict(num_images=8, batch_size=4, steps=2, image_size=16, log_interval=1),
    batch_size=4, max_iters=10, calibration_batches=1, val_interval=5)
param_scheduler = [dict(type='ConstantLR', by_epoch=False, factor=1.0)]
optim_wrapper = dict(optimizer=dict(lr=1e-3))  # the paper's lr
default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=3), logger=dict(interval=1))
val_dataloader = dict(batch_size=8)
test_dataloader = dict(batch_size=8)
