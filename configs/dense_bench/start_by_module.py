# Which of the Mask R-CNN's quantizers cost its boxes when every LSQ quantizer starts from the
# least-squared-error range? The default recipe with the min-max start in one part of the detector
# only (each row names the part by module_lsq_init), at W4/A4, on the robustness recipe's synthetic
# set. Its answer, the box head, is the detection task's default (DetectorTask.activation_starts).
# Commands and results: benchmarks/dense/README.md ("Defaults that never lose").
_base_ = ['./robustness.py']

benchmark = 'dense-start-study'
checks = []  # a study: its figures are read against the robustness table's

rows = dict(
    box_minmax=dict(label='MimiQ, min-max start in the box head', data='mimiq', had=True,
                    cfg_options={'model.quant.module_lsq_init': {'bbox_head': 'minmax'}}),
    rpn_minmax=dict(label='MimiQ, min-max start in the RPN', data='mimiq', had=True,
                    cfg_options={'model.quant.module_lsq_init': {'rpn_head': 'minmax'}}),
    heads_minmax=dict(label='MimiQ, min-max start in RPN and RoI heads', data='mimiq', had=True,
                      cfg_options={'model.quant.module_lsq_init': {'rpn_head': 'minmax', 'roi_head': 'minmax'}}),
    body_minmax=dict(label='MimiQ, min-max start in backbone and neck', data='mimiq', had=True,
                     cfg_options={'model.quant.module_lsq_init': {'backbone': 'minmax', 'neck': 'minmax'}}),
)

scales = {'cpu-2core': dict(rows=['box_minmax', 'rpn_minmax', 'heads_minmax', 'body_minmax'], bits=['w4a4'])}
