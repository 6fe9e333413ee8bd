# A timm model through mmpretrain's TimmClassifier: DeiT-S from timm (checkpoint: a timm state_dict
# file, e.g. pytorch_model.bin / model.safetensors converted with torch.save, given as teacher_checkpoint).
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py', '../_base_/mimiq_dfq.py']

model = dict(
    _delete_=True,
    type='mimiq_mm.QuantDistiller',
    architecture=dict(type='mmpretrain.TimmClassifier', model_name='deit_small_patch16_224', pretrained=False,
                      num_classes=1000),
    teacher_checkpoint=None,
    quant=dict(w_bits=4, a_bits=4, act_method='minmax'),
    kd=dict(temperature=1.0, loss_weight=1.0),
    had=dict(metric='dssim', loss_weight=10.0))
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
