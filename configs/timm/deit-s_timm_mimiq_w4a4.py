# A timm model through mmpretrain's TimmClassifier: DeiT-S from timm (checkpoint: a timm state_dict
# file, e.g. pytorch_model.bin / model.safetensors converted with torch.save, given as teacher_checkpoint).
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py', '../_base_/mimiq_dfq.py']

globals().update(_base_.mimiq_recipe)  # the recipe's loop, optimizer, schedule and hooks replace the base's
model = dict(_base_.mimiq_model, _delete_=True,
             architecture=dict(type='mmpretrain.TimmClassifier', model_name='deit_small_patch16_224', pretrained=False,
                               num_classes=1000))
train_cfg['synthesis']['image_size'] = 224
