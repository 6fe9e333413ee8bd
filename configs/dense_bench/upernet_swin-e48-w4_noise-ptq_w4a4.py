# Gaussian-noise PTQ row of the dense benchmark: min-max calibration on noise, no fine-tuning.
_base_ = ['./upernet_swin-e48-w4_mimiq_w4a4.py']

model = dict(had=None)
train_cfg = dict(synthesis=dict(method='noise', num_images=32), max_iters=0)
param_scheduler = None  # no fine-tuning, nothing to schedule
