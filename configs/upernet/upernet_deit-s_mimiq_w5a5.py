_base_ = ['./upernet_deit-s_mimiq_w4a4.py']

model = dict(quant=dict(w_bits=5, a_bits=5))
