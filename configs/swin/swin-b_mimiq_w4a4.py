# MimiQ data-free W4/A4 quantization of mmpretrain's SWIN-B (ImageNet-1k, 224x224).
# Usage: python tools/train.py swin/swin-b_mimiq_w4a4.py --cfg-options model.teacher_checkpoint=CKPT
# (CKPT: the official mmpretrain checkpoint, a path or URL). ImageNet is needed only for evaluation
# (data_root of the base config); set val_cfg/val_dataloader/val_evaluator=None to skip it.
_base_ = ['mmpretrain::swin_transformer/swin-base_16xb64_in1k.py', '../_base_/mimiq_dfq.py']

model = dict(
    _delete_=True,
    type='mimiq_mm.QuantDistiller',
    architecture=_base_.model,
    teacher_checkpoint=None,
    quant=dict(w_bits=4, a_bits=4, act_method='minmax'),  # paper reports the better of minmax and lsq
    kd=dict(temperature=1.0, loss_weight=1.0),
    had=dict(metric='dssim', loss_weight=100.0))  # gamma (paper Table 3 sweeps 1, 10, 100)
# the MimiQ recipe of ../_base_/mimiq_dfq.py
train_cfg = dict(_delete_=True, **_base_.mimiq_train_cfg)
optim_wrapper = dict(_delete_=True, **_base_.mimiq_optim_wrapper)
param_scheduler = _base_.mimiq_param_scheduler
auto_scale_lr = _base_.mimiq_auto_scale_lr
default_hooks = _base_.mimiq_default_hooks
log_processor = _base_.mimiq_log_processor
custom_hooks = _base_.mimiq_custom_hooks
val_cfg = dict()
test_cfg = dict()
train_cfg['synthesis']['image_size'] = 224
