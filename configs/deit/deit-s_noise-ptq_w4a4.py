# Gaussian-noise calibrated post-training quantization (no synthesis, no fine-tuning).
_base_ = ['./deit-s_mimiq_w4a4.py']

model = dict(had=None)
train_cfg = dict(synthesis=dict(method='noise', num_images=128), max_iters=0)
param_scheduler = None  # no fine-tuning, nothing to schedule
