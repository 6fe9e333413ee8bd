# Qimera (Choi et al., "Qimera: Data-free Quantization with Synthetic Boundary Supporting Samples",
# NeurIPS 2021), a CNN data-free method applied to a ViT with its components that apply (MimiQ paper,
# Table 1): GDFQ's generator and alternation plus boundary-supporting samples: superposed class
# embeddings in the generator's input, a disentanglement mapping, embeddings initialised from the
# teacher's classifier. Settings: Qimera's released ImageNet ones (imagenet_resnet18.hocon,
# run_imgnet_resnet18_4bit.sh, trainer.py), the full method of the paper (its scripts pass --randemb and
# leave the mapping off through an inverted flag). Any model: the same lines on its mimiq config.
_base_ = ['./deit-s_gdfq_w4a4.py']  # GDFQ's student losses, optimizer, schedule and warm-up (Qimera's are the same)

model = dict(student_losses=[dict(type='mimiq_mm.LabelCrossEntropyLoss', loss_weight=1.0)])  # CE towards soft targets
train_cfg = dict(
    generator=dict(
        _delete_=True,
        type='mimiq_mm.QimeraGenerator',
        superpose_prob=0.4,         # Qimera: --multi_label_prob 0.4
        superpose_classes=500,      # Qimera's ImageNet scripts: --multi_label_num 500 (CIFAR: 2)
        noise_scale=1.0,            # Qimera: --noise_scale 1.0
        embed_init='classifier',    # the teacher's classifier weights (DeiT-S: 1000 x 384)
        disentangle=True,           # the disentanglement mapping ...
        intermediate_dim=100,       # ... to 100 dimensions (Qimera: intermediate_dim 100)
        conditioning='conditional_bn',  # Qimera's ImageNet generator (class-conditional BatchNorm, mixed)
        lr=1e-3, betas=(0.5, 0.999), lr_milestones=(0.25, 0.5, 0.75), warmup_ratio=50 / 350))  # as GDFQ
