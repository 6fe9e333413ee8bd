# MimiQ data-free W4/A4 quantization of mmseg's UPerNet with a DeiT-S backbone (ADE20K,
# 512x512; paper Table 2). Usage:
#   python tools/train.py configs/upernet/upernet_deit-s_mimiq_w4a4.py [--cfg-options model.teacher_checkpoint=CKPT]
#   python tools/test.py  configs/upernet/upernet_deit-s_mimiq_w4a4.py work_dirs/<name>/student_w4a4.pth
# The teacher is the official mmseg checkpoint (full precision: 42.96 mIoU), downloaded on first use;
# ADE20K is needed only for evaluation (`data_root` of the base config, data/ade/ADEChallengeData2016).
# mIoU comes from the base config's IoUMetric. Other bit-widths: the *_w5a5 / *_w4a8 / *_w8a8
# configs, or --cfg-options model.quant.w_bits=W model.quant.a_bits=A.
# Dense-task choices (synthesis prior, distillation terms): see mimiq_mm/tasks/ and mimiq_mm/synthesis/priors.py.
_base_ = ['mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py', '../_base_/mimiq_dfq.py']

globals().update(_base_.mimiq_recipe)  # the recipe's loop, optimizer, schedule and hooks replace the base's
model = dict(
    _base_.mimiq_model, _delete_=True, architecture=_base_.model,
    teacher_checkpoint='https://download.openmmlab.com/mmsegmentation/v0.5/vit/upernet_deit-s16_512x512_80k_ade20k/'
                       'upernet_deit-s16_512x512_80k_ade20k_20210624_095228-afc93ec2.pth',
    # per-pixel KL of the decode head (+ 0.4 x the auxiliary head's), see mimiq_mm/tasks/segmentation.py
    task=dict(type='segmentation', aux_weight=0.4))  # gamma 10 on the backbone's attention heads, the recipe's
# Synthetic images at the segmentor's training crop size. prior 'head': the decode head's per-pixel
# logits give L_CL (ADE20K classes); for an ImageNet classifier prior see upernet_swin-t_mimiq-cls-prior_w4a4.py.
train_cfg['synthesis'].update(image_size=(512, 512), prior=dict(type='head'))
