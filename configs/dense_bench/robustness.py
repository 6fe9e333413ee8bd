# Does the default recipe ever end below post-training quantization on a detector? The Mask R-CNN
# teacher of the dense table: the default recipe (its box head starts from min-max, the rest by the
# least-squared-error range: DetectorTask.activation_starts) against Gaussian-noise PTQ and against
# the two fixed LSQ starts, each in every module (on this detector LSQ's own start once collapsed
# the masks), at W4/A4 and W3/A3, box / mask mAP and fidelity to the teacher; run once with two
# one-thread lanes (--jobs 2) and once on two threads (--jobs 1).
# Commands and results: benchmarks/dense/README.md ("Defaults that never lose").
_base_ = ['./benchmark.py']

benchmark = 'dense-robustness'

synthetic_sets = dict(_delete_=True, noise=dict(method='noise', size='noise_images'), mimiq=dict(method='mimiq'))

rows = dict(
    _delete_=True,
    noise_ptq=dict(label='Gaussian-noise PTQ (min-max)', data='noise', finetune=False),
    mimiq=dict(label='MimiQ, default recipe', data='mimiq', had=True),
    mimiq_lsq=dict(label="MimiQ, LSQ's start (lsq_init='mean_abs')", data='mimiq', had=True,
                   cfg_options={'model.quant.lsq_init': 'mean_abs', 'model.quant.module_lsq_init': {}}),
    mimiq_lsqplus=dict(label="MimiQ, min-max start (lsq_init='minmax')", data='mimiq', had=True,
                       cfg_options={'model.quant.lsq_init': 'minmax', 'model.quant.module_lsq_init': {}}),
)

robust_bits = ['w4a4', 'w3a3']
checks = [
    dict(type=kind, row='mimiq', bits=robust_bits, metric=metric, **extra)
    for metric in ('coco/bbox_mAP', 'coco/segm_mAP', 'teacher/bbox_mAP', 'teacher/segm_mAP')
    for kind, extra in (('margin', dict(over='noise_ptq', at_least=0)), ('gap', dict(ref='mimiq_lsq', at_most=1)),
                        ('gap', dict(ref='mimiq_lsqplus', at_most=1)))
]
headline_bits = robust_bits

scales = {
    'cpu-2core': dict(teachers=['maskrcnn'], rows=['noise_ptq', 'mimiq', 'mimiq_lsq', 'mimiq_lsqplus'],
                      bits=robust_bits, seeds=[0], bits_seeds=dict(_delete_=True)),
}
