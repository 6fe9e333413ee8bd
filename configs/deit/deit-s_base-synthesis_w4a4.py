# Base synthesis (L_CL + L_TV only) + KL fine-tuning: the paper's first ablation row.
_base_ = ['./deit-s_mimiq_w4a4.py']

model = dict(had=None)
train_cfg = dict(synthesis=dict(method='base'))
