"""The baselines' rows of the benchmark recipes run: the CIFAR-10 driver at its smoke scale (a
table with every new row and the 'MimiQ >= every baseline' checks), and the dense recipe's GDFQ and
PSAQ-ViT V2 rows on a tiny UPerNet and Mask R-CNN (what benchmarks.dense_table runs on the trained
teachers)."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config

pytest.importorskip('mmseg')
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NEW_ROWS = ['psaq_v2', 'gdfq', 'qimera', 'adadfq']


def test_cifar10_driver_tables_every_baseline_with_its_checks(tmp_path):
    from benchmarks.table import main
    from test_cifar_benchmark import make_image_folder
    data = make_image_folder(tmp_path / 'data')
    work = str(tmp_path / 'work')
    rc = main(['--data-root', data, '--work-dir', work, '--scale', 'smoke', '--teachers', 'vit', '--rows', 'mimiq',
               *NEW_ROWS, '--bits', 'w3a3', '--seeds', '0'])
    assert rc == 0
    with open(osp.join(work, 'results.json')) as f:
        results = json.load(f)
    assert results['complete'] and sorted(r['row'] for r in results['results']) == sorted(NEW_ROWS + ['mimiq'])
    # generator rows make no synthetic set; PSAQ-ViT V2 starts from PSAQ-ViT's
    assert set(results['synthetic_sets']) == {'vit/synth/mimiq', 'vit/synth/psaq_pool'}
    checks = [c for c in results['checks'] if 'at least 0 above' in c['check'] and c['bits'] == 'w3a3']
    assert len(checks) == len(NEW_ROWS) and {c['status'] for c in checks} <= {'pass', 'FAIL'}
    assert all(c.get('reason') for c in checks if c['status'] == 'FAIL')
    for row in ('gdfq', 'qimera', 'adadfq'):
        text = open(osp.join(work, 'vit', 'runs', f'{row}_w3a3_s0', 'config.py')).read()
        assert "data_source='generator'" in text and 'synthetic_set' not in text


@pytest.mark.parametrize('model', ['upernet', 'maskrcnn'])
@pytest.mark.parametrize('row', ['gdfq', 'psaq_v2'])
def test_dense_recipe_rows_run_on_tiny_dense_models(tmp_path, row, model):
    from dense_models import (MASK_RCNN_CFG, TINY_MASK_RCNN, TINY_TASK, TINY_UPERNET_SWIN, TRAIN, UPERNET_SWIN_CFG,
                              make_tiny, run_tool, train_scalars)
    if model == 'maskrcnn':
        pytest.importorskip('mmdet')
    recipe = Config.fromfile(osp.join(ROOT, 'configs', 'dense_bench', 'benchmark.py'))
    spec = recipe.rows[row]
    tiny = (make_tiny(tmp_path, MASK_RCNN_CFG, TINY_MASK_RCNN, 'coco', TINY_TASK['detection']) if model == 'maskrcnn'
            else make_tiny(tmp_path, UPERNET_SWIN_CFG, TINY_UPERNET_SWIN, 'ade20k'))
    cfg = Config.fromfile(tiny)
    cfg.merge_from_dict(dict(spec.cfg_options, **{'model.had': None}))
    if spec.data == 'generator':
        cfg.train_cfg.data_source = 'generator'
    else:
        cfg.train_cfg.synthesis.update(recipe.synthetic_sets[spec.data])
    path = str(tmp_path / f'tiny_{row}.py')
    cfg.dump(path)
    work = str(tmp_path / 'work')
    out = run_tool([TRAIN, path, '--work-dir', work], cwd=str(tmp_path))
    assert ('bbox_mAP' if model == 'maskrcnn' else 'mIoU') in out
    assert osp.isfile(osp.join(work, 'student_w4a4.pth'))
    records = train_scalars(work)
    logged = set().union(*[set(r) for r in records])
    assert any(k.startswith('loss_kd') for k in logged), logged
    steps = [k for k in logged if k.startswith(('generator_', 'samples_'))]
    assert steps and all(torch.isfinite(torch.tensor(float(r[k]))) for r in records for k in steps if k in r)
