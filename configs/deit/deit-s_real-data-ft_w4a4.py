# "Real-Data FT" reference: the same QAT recipe (KL + HAD) on the ImageNet training set.
_base_ = ['./deit-s_mimiq_w4a4.py']

train_cfg = dict(data_source='real', max_iters=200 * 625)
