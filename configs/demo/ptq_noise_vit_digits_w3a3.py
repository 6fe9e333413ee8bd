# Baseline for the demo: post-training quantization calibrated on Gaussian noise (no fine-tuning).
_base_ = ['./mimiq_vit_digits_w3a3.py']

model = dict(quant=dict(act_method='minmax', w_fit='minmax'), had=None)  # plain min-max PTQ
train_cfg = dict(synthesis=dict(method='noise', num_images=256), max_iters=0)
param_scheduler = None  # no fine-tuning, nothing to schedule
