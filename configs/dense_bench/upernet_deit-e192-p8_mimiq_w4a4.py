# MimiQ W4/A4 of the dense-benchmark UPerNet DeiT teacher (benchmarks/dense/README.md):
# IHC + task-prior + TV synthesis, then per-pixel KL (+ 0.4 x auxiliary head) + L_HAD, sized for a
# 2-core CPU (_base_/cpu_recipe.py). Other bit-widths: --cfg-options model.quant.w_bits=W
# model.quant.a_bits=A; other rows: the *_noise-ptq / *_base-synthesis / *_real-data-ft configs.
#   python tools/train.py configs/dense_bench/upernet_deit-e192-p8_mimiq_w4a4.py
#   python tools/test.py configs/dense_bench/upernet_deit-e192-p8_mimiq_w4a4.py \
#       work_dirs/upernet_deit-e192-p8_mimiq_w4a4/student_w4a4.pth
_base_ = ['./upernet_deit-e192-p8_digits.py', './_base_/cpu_recipe.py']

globals().update(_base_.bench_recipe)  # the CPU-sized recipe's loop, optimizer, schedule and hooks
model = dict(_base_.mimiq_model, _delete_=True, architecture=_base_.model,
             teacher_checkpoint='work_dirs/dense_bench/upernet-deit/iter_500.pth',
             task=dict(type='segmentation', aux_weight=0.4),
             had=dict(metric='dssim', loss_weight=10.0))  # gamma of configs/upernet (DeiT)
