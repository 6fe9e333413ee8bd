# GDFQ (Xu et al., "Generative Low-bitwidth Data Free Quantization", ECCV 2020), a CNN data-free method
# applied to a ViT with its components that apply (MimiQ paper, Table 1): a conditional generator
# G(z, y) trained against the teacher (its cross entropy towards y; the BatchNorm-statistics term has
# no BatchNorm to match in a ViT), alternating every iteration with the quantized student, which learns
# from the generated batches by KD + CE. Settings: GDFQ's released ImageNet ones (imagenet_resnet18.hocon,
# trainer.py, main.py). Any model: the same lines on its mimiq config.
_base_ = ['./deit-s_mimiq_w4a4.py']

gdfq_epoch = 200  # GDFQ: 400 epochs of 200 iterations at batch 16
model = dict(
    had=None,      # MimiQ's L_HAD is not part of GDFQ
    augment=None,  # GDFQ trains on its generated batches as they are
    # GDFQ: KL at T = 20, alpha = 1, times T²; its nn.KLDivLoss() also averages over the 1000 classes: T²/C
    kd=dict(temperature=20.0, loss_weight=1 / 1000),
    student_losses=[dict(type='mimiq_mm.LabelCrossEntropyLoss', loss_weight=1.0)])  # GDFQ: + CE towards y
train_cfg = dict(
    data_source='generator',  # the loop's batches are class labels; the generator makes the images
    generator=dict(
        type='mimiq_mm.GDFQGenerator',
        latent_dim=100,                   # GDFQ: latent_dim 100
        conditioning='conditional_bn',    # GDFQ's ImageNet generator (class-conditional BatchNorm)
        lr=1e-3, betas=(0.5, 0.999),      # GDFQ: Adam lr_G 1e-3, b1 0.5, b2 0.999
        lr_milestones=(0.25, 0.5, 0.75),  # GDFQ: x0.1 at epochs 100, 200, 300 of 400
        warmup_ratio=50 / 350),           # GDFQ: 50 warm-up epochs (generator only) before the student's 350
    batch_size=16,                        # GDFQ: batch 16
    max_iters=350 * gdfq_epoch,
    val_interval=50 * gdfq_epoch)
# GDFQ's student: SGD Nesterov, momentum 0.9, lr 1e-6, weight decay 1e-4, x0.1 at epochs 100, 200, 300
optim_wrapper = dict(optimizer=dict(lr=1e-6, weight_decay=1e-4))
param_scheduler = [dict(type='MultiStepLR', by_epoch=False, milestones=[50 * gdfq_epoch, 150 * gdfq_epoch,
                                                                        250 * gdfq_epoch], gamma=0.1)]
