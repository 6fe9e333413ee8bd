# Does the default recipe ever end below post-training quantization? The robustness table of the
# CIFAR-10 teachers: the default recipe (LSQ activations started where their quantization error on
# the calibration batches is smallest, weight ranges clipped the same way) against Gaussian-noise PTQ
# and against the two fixed LSQ starts it replaced as default, at W4/A4, W3/A3 and W2/A4, run once
# with two one-thread lanes (--jobs 2) and once on two threads (--jobs 1). Commands and result files:
# benchmarks/README.md ("defaults robustness, CIFAR-10"); every cell: docs/benchmarks.md.
_base_ = ['./benchmark.py']

benchmark = 'cifar10-robustness'

synthetic_sets = dict(_delete_=True, noise=dict(method='noise', size='noise_images'), mimiq=dict(method='mimiq'))

rows = dict(
    _delete_=True,
    noise_ptq=dict(label='Gaussian-noise PTQ (min-max)', data='noise', finetune=False),
    mimiq=dict(label='MimiQ, default recipe', data='mimiq', had=True),
    mimiq_lsq=dict(label="MimiQ, LSQ's start (lsq_init='mean_abs')", data='mimiq', had=True,
                   cfg_options={'model.quant.lsq_init': 'mean_abs'}),
    mimiq_lsqplus=dict(label="MimiQ, min-max start (lsq_init='minmax')", data='mimiq', had=True,
                       cfg_options={'model.quant.lsq_init': 'minmax'}),
)

robust_bits = ['w4a4', 'w3a3', 'w2a4']
checks = [
    dict(type='margin', row='mimiq', over='noise_ptq', at_least=0, bits=robust_bits),
    dict(type='gap', row='mimiq', ref='mimiq_lsq', at_most=1, bits=robust_bits),
    dict(type='gap', row='mimiq', ref='mimiq_lsqplus', at_most=1, bits=robust_bits),
]
headline_bits = robust_bits

scales = {
    # the library's defaults for the start and the weight ranges (the benchmark scale names LSQ's start)
    'cpu-2core': dict(bits=robust_bits, seeds=[0], finetune=dict(lsq_init=None)),
}
