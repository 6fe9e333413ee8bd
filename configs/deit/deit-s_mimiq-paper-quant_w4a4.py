# MimiQ with the paper's quantizers as the implementation notes read them (per-channel min-max
# weights, EMA min-max activations) instead of the library's defaults (LSQ started at the range of
# least quantization error, clipped weights): the paper's recipe, one config away.
_base_ = ['./deit-s_mimiq_w4a4.py']

model = dict(quant=dict(_delete_=True, w_bits=4, a_bits=4, act_method='minmax', w_fit='minmax'))
