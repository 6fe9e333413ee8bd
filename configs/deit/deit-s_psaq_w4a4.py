# PSAQ-ViT baseline: patch-similarity-entropy synthesis, min-max PTQ calibrated on 32 images, no fine-tuning.
_base_ = ['./deit-s_mimiq_w4a4.py']

model = dict(had=None, quant=dict(_base_.mimiq_paper_quant, w_bits=4, a_bits=4))  # min-max, as the baseline
train_cfg = dict(synthesis=dict(method='psaq', num_images=32), calibration_batches=2, max_iters=0)
param_scheduler = None  # no fine-tuning, nothing to schedule
