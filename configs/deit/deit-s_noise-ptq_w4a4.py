# Gaussian-noise calibrated post-training quantization (no synthesis, no fine-tuning).
_base_ = ['./deit-s_mimiq_w4a4.py']

model = dict(had=None, quant=dict(_base_.mimiq_paper_quant, w_bits=4, a_bits=4))  # min-max, as the baseline
train_cfg = dict(synthesis=dict(method='noise', num_images=128), max_iters=0)
param_scheduler = None  # no fine-tuning, nothing to schedule
