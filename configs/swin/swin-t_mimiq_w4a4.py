# MimiQ data-free W4/A4 quantization of mmpretrain's SWIN-T (ImageNet-1k, 224x224).
# Usage: python tools/train.py swin/swin-t_mimiq_w4a4.py --cfg-options model.teacher_checkpoint=CKPT
# (CKPT: the official mmpretrain checkpoint, a path or URL). ImageNet is needed only for evaluation
# (data_root of the base config); set val_cfg/val_dataloader/val_evaluator=None to skip it.
_base_ = ['mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py', '../_base_/mimiq_dfq.py']

globals().update(_base_.mimiq_recipe)  # the recipe's loop, optimizer, schedule and hooks replace the base's
model = dict(_base_.mimiq_model, _delete_=True, architecture=_base_.model,
             had=dict(metric='dssim', loss_weight=1.0))  # gamma (paper Table 3 sweeps 1, 10, 100)
train_cfg['synthesis']['image_size'] = 224
