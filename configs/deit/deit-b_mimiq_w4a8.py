_base_ = ['./deit-b_mimiq_w4a4.py']

model = dict(quant=dict(w_bits=4, a_bits=8))
