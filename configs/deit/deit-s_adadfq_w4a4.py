# AdaDFQ (Qian et al., "Adaptive Data-Free Quantization", CVPR 2023), a CNN data-free method applied to a
# ViT with its components that apply (MimiQ paper, Table 1): GDFQ's generator, whose samples adapt their
# difficulty to the quantized student in a zero-sum game (disagreement / agreement cross entropies),
# bounded by margins on the samples' normalised adaptability; the student maximises the entropy of the
# teacher-student logit difference. Settings: AdaDFQ's released ImageNet ones (imagenet_res18.hocon,
# ImageNet/trainer.py). Any model: the same lines on its mimiq config.
_base_ = ['./deit-s_gdfq_w4a4.py']

gdfq_epoch = 200  # AdaDFQ: 400 epochs of 200 iterations at batch 16
model = dict(
    kd=dict(loss_weight=0.0),  # AdaDFQ's student has no KL term ...
    student_losses=[dict(type='mimiq_mm.DifferenceEntropyLoss', temperature=5.0)])  # ... but -T²·H((t - s)/T), T = 5
train_cfg = dict(
    generator=dict(
        _delete_=True,
        type='mimiq_mm.AdaDFQGenerator',
        lower=0.3, upper=0.8,       # AdaDFQ: lambda_l 0.3 (4 and 5 bits), lambda_u 0.8
        disagreement_weight=0.2,    # AdaDFQ: alpha_ds 0.2
        agreement_weight=0.1,       # AdaDFQ: alpha_as 0.1
        class_weight=1.0,           # AdaDFQ: beta 1
        latent_dim=100, conditioning='conditional_bn',  # GDFQ's ImageNet generator
        lr=1e-3, betas=(0.5, 0.999),
        lr_milestones=(0.875,),     # AdaDFQ: x0.1 at epoch 350 of 400
        warmup_ratio=50 / 350))     # AdaDFQ: 50 warm-up epochs
# AdaDFQ's student: SGD Nesterov, lr 1e-5, weight decay 1e-4, x0.1 at epoch 350 of 400 (300 after the warm-up)
optim_wrapper = dict(optimizer=dict(lr=1e-5, weight_decay=1e-4))
param_scheduler = [dict(type='MultiStepLR', by_epoch=False, milestones=[300 * gdfq_epoch], gamma=0.1)]
