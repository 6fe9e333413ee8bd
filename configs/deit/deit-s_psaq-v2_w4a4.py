# PSAQ-ViT V2 (Li et al., "PSAQ-ViT V2: Toward Accurate and General Data-Free Quantization for Vision
# Transformers", TNNLS 2023): the adaptive teacher-student strategy. Samples start as PSAQ-ViT's synthetic
# images and, at every fine-tuning iteration, take a step that makes teacher and quantized student
# disagree (KL) under PSAQ-ViT's patch-similarity prior, without class guidance; the student then learns
# to agree on them (KL). The V2 code is not published (github.com/zkkli/PSAQ-ViT holds V1); the sample
# steps use PSAQ-ViT's Adam settings. Any model: the same lines on its mimiq config.
_base_ = ['./deit-s_mimiq_w4a4.py']

model = dict(had=None, augment=None)  # no L_HAD; the samples are used as updated
train_cfg = dict(
    synthesis=dict(method='psaq'),  # the initial samples: PSAQ-ViT's synthesis (the recipe's 10K images)
    generator=dict(
        type='mimiq_mm.PSAQV2SampleStep',
        steps=1,                    # sample updates per fine-tuning iteration
        lr=0.02, betas=(0.5, 0.9),  # PSAQ-ViT's Adam betas and cosine decay; lr: see PSAQV2SampleStep
        disagreement_weight=1.0,    # -KL(teacher || student): the samples make them disagree
        psaq_weight=1.0,            # PSAQ-ViT: patch-similarity entropy, weight 1
        tv_weight=2.5e-5,           # the synthesis' total variation weight
        class_weight=0.0))          # V2: no class guidance (task- and model-independent priors)
