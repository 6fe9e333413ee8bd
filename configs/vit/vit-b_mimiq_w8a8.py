_base_ = ['./vit-b_mimiq_w4a4.py']

model = dict(quant=dict(w_bits=8, a_bits=8))
