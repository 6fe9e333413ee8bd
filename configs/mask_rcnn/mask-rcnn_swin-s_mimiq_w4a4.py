# MimiQ data-free W4/A4 quantization of mmdet's Mask R-CNN with a Swin-S backbone (COCO; paper
# Table 2). Usage:
#   python tools/train.py configs/mask_rcnn/mask-rcnn_swin-s_mimiq_w4a4.py [--cfg-options model.teacher_checkpoint=CKPT]
#   python tools/test.py  configs/mask_rcnn/mask-rcnn_swin-s_mimiq_w4a4.py work_dirs/<name>/student_w4a4.pth
# The teacher is the official mmdet checkpoint (downloaded on first use); COCO is needed only for
# evaluation (`data_root` of the base config, data/coco/). Box and mask AP come from the base
# config's CocoMetric. Other bit-widths: the *_w5a5 / *_w4a8 / *_w8a8 configs, or
# --cfg-options model.quant.w_bits=W model.quant.a_bits=A.
# Dense-task choices (synthesis prior, distillation terms): see mimiq_mm/tasks/ and mimiq_mm/synthesis/priors.py.
_base_ = ['mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py', '../_base_/mimiq_dfq.py']

globals().update(_base_.mimiq_recipe)  # the recipe's loop, optimizer, schedule and hooks replace the base's
model = dict(
    _base_.mimiq_model, _delete_=True, architecture=_base_.model,
    # The official weights of the base config (full precision: 48.2 box / 43.2 mask AP; trained
    # with AMP, evaluated here in fp32).
    teacher_checkpoint='https://download.openmmlab.com/mmdetection/v2.0/swin/mask_rcnn_swin-s-p4-w7_fpn_fp16_ms-crop-3x_coco/'
                       'mask_rcnn_swin-s-p4-w7_fpn_fp16_ms-crop-3x_coco_20210903_104808-b92c91f1.pth',
    # detection distillation: FPN, RPN and RoI outputs on the teacher's proposals
    # (mimiq_mm/tasks/detection.py)
    task=dict(type='detection', num_rois=512, num_mask_rois=64, prior_rois=16),
    had=dict(metric='dssim', loss_weight=1.0))  # gamma on the backbone's attention heads
# Synthetic images: 512x512 (a multiple of the 32-pixel FPN stride; COCO tests at 800x1333, which
# costs ~2.4x more per step). prior 'head': the detector's own RoI classifier gives L_CL (COCO
# classes); for an ImageNet classifier prior see mask-rcnn_swin-t_mimiq-cls-prior_w4a4.py.
train_cfg['synthesis'].update(image_size=(512, 512), prior=dict(type='head'))
