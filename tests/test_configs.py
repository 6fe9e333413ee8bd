"""Every shipped config parses, wraps its OpenMMLab base in the distiller and runs the data-free
loop with the paper's recipe; small ones build into a quantized, attention-captured model."""
import glob
import os.path as osp

import pytest

pytest.importorskip('mmpretrain')

import mimiq_mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*', '*.py')))
CLS_CONFIGS = [c for c in CLS_CONFIGS if '/_base_/' not in c and '/demo/vit_digits_teacher' not in c
               and osp.basename(osp.dirname(c)) in ('deit', 'vit', 'swin', 'timm', 'demo')]


@pytest.mark.parametrize('path', CLS_CONFIGS, ids=lambda p: osp.relpath(p, ROOT))
def test_config_parses_into_a_data_free_run(path):
    cfg = Config.fromfile(path)
    assert cfg.model.type == 'mimiq_mm.QuantDistiller'
    assert cfg.train_cfg.type == 'mimiq_mm.DataFreeQATLoop'
    assert 'mimiq_mm' in cfg.custom_imports['imports']
    quant = cfg.model.quant
    assert 2 <= quant.w_bits <= 8 and 2 <= quant.a_bits <= 8
    name = osp.basename(path)
    if '_w' in name:
        bits = name.rsplit('_w', 1)[1][:-3]  # e.g. '4a8'
        assert f'w{quant.w_bits}a{quant.a_bits}' == f'w{bits}'
    if 'mimiq_w' in name and 'demo' not in path:
        s = cfg.train_cfg.synthesis  # the paper's recipe
        assert (s.method, s.num_images, s.batch_size, s.steps, s.lr, s.alpha, s.beta) == \
            ('mimiq', 10000, 32, 2000, 0.1, 1.0, 2.5e-5)
        assert cfg.train_cfg.batch_size == 16
        assert cfg.optim_wrapper.optimizer.type == 'SGD' and cfg.optim_wrapper.optimizer.nesterov
        assert cfg.model.had.metric == 'dssim'


@pytest.mark.parametrize('name', ['deit/deit-t_mimiq_w4a4.py', 'swin/swin-t_mimiq_w4a4.py'])
def test_small_configs_build_quantized_captured_models(name):
    import torch
    from mmengine.registry import MODELS, init_default_scope
    from mimiq_mm.attention import AttentionRecorder
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    init_default_scope(cfg.default_scope)
    cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(cfg.model).eval()
    x = torch.randn(1, 3, 224, 224)
    model.calibrate([x])
    with torch.no_grad(), AttentionRecorder(model.student, fields=('scores',), detach=True) as rec:
        logits = model(x, mode='tensor')
    assert logits.shape == (1, 1000)
    assert len(rec.records) == 12  # DeiT-T: 12 blocks; Swin-T: 2 + 2 + 6 + 2
    assert model.student.backbone is not model.teacher.backbone
