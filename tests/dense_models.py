"""The tiny dense models of the dense-task tests (test_dense.py, test_deploy_parity.py): small Mask
R-CNN / UPerNet architectures for the project's real configs, test configs that shrink those
configs, and the helpers that run the tools on them and read their results."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import torch

from dense_data import make_ade20k, make_coco

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(REPO_ROOT, 'tools', 'train.py')
TEST = osp.join(REPO_ROOT, 'tools', 'test.py')

MASK_RCNN_CFG = osp.join(REPO_ROOT, 'configs', 'mask_rcnn', 'mask-rcnn_swin-t_mimiq_w4a4.py')
UPERNET_SWIN_CFG = osp.join(REPO_ROOT, 'configs', 'upernet', 'upernet_swin-t_mimiq_w4a4.py')
UPERNET_DEIT_CFG = osp.join(REPO_ROOT, 'configs', 'upernet', 'upernet_deit-s_mimiq_w4a4.py')

SIZE = 64


# ---------------------------------------------------------------------------- tiny architectures
TINY_MASK_RCNN = dict(
    backbone=dict(embed_dims=24, depths=[2, 2], num_heads=[1, 2], window_size=4, out_indices=(0, 1),
                  drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[24, 48], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                  bbox_head=dict(in_channels=32, fc_out_channels=64),
                  mask_roi_extractor=dict(out_channels=32),
                  mask_head=dict(in_channels=32, conv_out_channels=32, num_convs=1)),
    # a random teacher scores every class near 1/81: keep its boxes so that the metrics see some
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(score_thr=0.0, max_per_img=20)))
TINY_UPERNET_SWIN = dict(
    data_preprocessor=dict(size=(SIZE, SIZE)),
    backbone=dict(embed_dims=24, depths=[2, 2], num_heads=[1, 2], window_size=4, strides=(4, 2),
                  out_indices=(0, 1), drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(in_channels=[24, 48], in_index=[0, 1], channels=32, pool_scales=(1, 2)),
    auxiliary_head=dict(in_channels=48, in_index=1, channels=16))
TINY_UPERNET_DEIT = dict(
    pretrained=None,
    data_preprocessor=dict(size=(SIZE, SIZE)),
    backbone=dict(img_size=(SIZE, SIZE), patch_size=16, embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2,
                  out_indices=(0, 1, 2, 3), drop_path_rate=0.1),
    decode_head=dict(in_channels=[32] * 4, channels=32, pool_scales=(1, 2)),
    auxiliary_head=dict(in_channels=32, channels=16))
TINY_TASK = dict(detection=dict(num_rois=32, num_mask_rois=8, prior_rois=4))

TINY_LOOP = dict(
    synthesis=dict(num_images=4, batch_size=2, steps=2, image_size=(SIZE, SIZE), log_interval=1),
    batch_size=2, max_iters=2, calibration_batches=1, val_interval=2)

DET_DATA = '''
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({size}, {size}), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, ann_file='annotations/instances_val2017.json',
                                   data_prefix=dict(img='val2017/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
'''
SEG_DATA = '''
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({size}, {size}), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline,
                                   data_prefix=dict(img_path='images/validation',
                                                    seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
'''


def write_tiny_config(path, base, data_root, teacher, architecture, task=None, data=DET_DATA):
    model = dict(teacher_checkpoint=teacher, architecture=architecture)
    if task:
        model['task'] = task
    text = (f'_base_ = [{base!r}]\n'
            f'data_root = {data_root!r}\n'
            f'model = {model!r}\n'
            f'train_cfg = {TINY_LOOP!r}\n'
            "default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))\n"
            'randomness = dict(seed=0)\n' + data.format(size=SIZE))
    with open(path, 'w') as f:
        f.write(text)
    return path


def build_architecture(cfg_path, seed=0):
    """The config's ``model.architecture``, built and initialised (no pretrained weights)."""
    import mimiq_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    cfg = Config.fromfile(cfg_path)
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model.architecture)
    model.init_weights()
    return model.eval()


def build_distiller(cfg_path, **overrides):
    import mimiq_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    cfg = Config.fromfile(cfg_path)
    cfg.merge_from_dict(overrides)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    return model


def save_teacher(cfg_path, out):
    torch.save(dict(state_dict=build_architecture(cfg_path).state_dict()), out)
    return out


def run_tool(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.run([sys.executable] + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args[0]} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


def read_test_metrics(work_dir):
    """The metrics dict that mmengine's LoggerHook dumped after ``runner.test()``."""
    files = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    assert files, f'no metrics json in {work_dir}'
    with open(files[-1]) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def train_scalars(work_dir):
    files = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    assert files, f'no scalars.json in {work_dir}'
    with open(files[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def val_metrics(work_dir):
    """The last validation metrics logged during training."""
    records = [r for r in train_scalars(work_dir) if 'mIoU' in r or 'coco/bbox_mAP' in r]
    assert records, 'no validation ran at the end of training'
    return records[-1]


def mm_tools(package):
    """[(path, name)] of the package's own tools/test.py, as pip installs it (empty if absent)."""
    import importlib
    path = osp.join(osp.dirname(importlib.import_module(package).__file__), '.mim', 'tools', 'test.py')
    return [(path, package)] if osp.isfile(path) else []


def make_tiny(tmp_path, base, architecture, dataset, task=None):
    data_root = str(tmp_path / 'data') + '/'
    if dataset == 'coco':
        make_coco(data_root, num_images=4, size=SIZE)
        data = DET_DATA
    else:
        make_ade20k(data_root, num_images=4, size=SIZE)
        data = SEG_DATA
    cfg = str(tmp_path / 'tiny.py')
    # first with a placeholder teacher, to build the architecture the teacher checkpoint is made of
    write_tiny_config(cfg, base, data_root, None, architecture, task, data)
    teacher = save_teacher(cfg, str(tmp_path / 'teacher.pth'))
    return write_tiny_config(cfg, base, data_root, teacher, architecture, task, data)


def check_training(work_dir, expected_losses):
    assert osp.isfile(osp.join(work_dir, 'student_w4a4.pth'))
    manifest = glob.glob(osp.join(work_dir, 'synthetic_mimiq', '*.json'))
    assert manifest, 'no synthetic set was written'
    logged = set().union(*[set(r) for r in train_scalars(work_dir)])
    missing = set(expected_losses) - logged
    assert not missing, f'losses {missing} were not logged (logged: {sorted(logged)})'
    for record in train_scalars(work_dir):
        for key in expected_losses:
            if key in record:
                assert torch.isfinite(torch.tensor(float(record[key]))), (key, record[key])


def check_metric(metrics, key):
    assert key in metrics, f'{key} missing from {metrics}'
    value = float(metrics[key])
    assert value == -1 or 0.0 <= value <= 100.0, (key, value)
