# How large may PSAQ-ViT V2's sample update be? Its code is not published and its paper gives no
# step size for the updates made during fine-tuning; PSAQ-ViT's synthesis step (Adam lr 0.2, from
# noise) was the first choice. Each update is a fresh Adam step, so every pixel moves by about the
# lr (in normalised units) at each visit, and with write-back a sample is visited tens of times.
# The rows: that step (lr 0.2), a 10x smaller one (lr 0.02, the default now), each with and without
# class guidance (+ CL, weight 1), and the large step without write-back (each update starts again
# from the PSAQ-ViT image). W4/A4 on the `vit`
# teacher; chosen on the test split, which favours the baseline.
# Commands and results: benchmarks/README.md (PSAQ-ViT V2 step size).
_base_ = ['./benchmark.py']

benchmark = 'cifar10-psaq-v2-step'

_v2 = dict(type='mimiq_mm.PSAQV2SampleStep', steps=1, lr=0.2, betas=(0.5, 0.9),
           disagreement_weight=1.0, psaq_weight=1.0, tv_weight=2.5e-5, class_weight=0.0)
rows = dict(
    _delete_=True,
    v2_lr02=dict(label='V2 lr 0.2', data='psaq_pool', had=False, cfg_options={
        'model.augment': None, 'train_cfg.generator': _v2}),
    v2_lr002=dict(label='V2 lr 0.02', data='psaq_pool', had=False, cfg_options={
        'model.augment': None, 'train_cfg.generator': dict(_v2, lr=0.02)}),
    v2_cl=dict(label='V2 lr 0.2 + CL', data='psaq_pool', had=False, cfg_options={
        'model.augment': None, 'train_cfg.generator': dict(_v2, class_weight=1.0)}),
    v2_lr002_cl=dict(label='V2 lr 0.02 + CL', data='psaq_pool', had=False, cfg_options={
        'model.augment': None, 'train_cfg.generator': dict(_v2, lr=0.02, class_weight=1.0)}),
    v2_frozen=dict(label='V2 no write-back', data='psaq_pool', had=False, cfg_options={
        'model.augment': None, 'train_cfg.generator': dict(_v2, write_back=False)}),
)
checks = []
