# Base synthesis row of the dense benchmark: task prior + TV images (no IHC), task KD without L_HAD.
_base_ = ['./upernet_swin-e48-w4_mimiq_w4a4.py']

model = dict(had=None)
train_cfg = dict(synthesis=dict(method='base'))
