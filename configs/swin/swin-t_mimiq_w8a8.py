_base_ = ['./swin-t_mimiq_w4a4.py']

model = dict(quant=dict(w_bits=8, a_bits=8))
