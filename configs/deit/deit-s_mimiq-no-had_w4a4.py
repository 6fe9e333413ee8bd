# MimiQ without L_HAD (IHC synthesis + KL fine-tuning): the paper's ablation.
_base_ = ['./deit-s_mimiq_w4a4.py']

model = dict(had=None)
