# Real-data FT row of the dense benchmark (upper reference): the MimiQ fine-tuning recipe (task KD
# + L_HAD) on the teacher's train split (its train pipeline; labels unused).
_base_ = ['./upernet_swin-e48-w4_mimiq_w4a4.py']

train_cfg = dict(data_source='real')
