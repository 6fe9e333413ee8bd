"""Dense tasks: Mask R-CNN (Swin) via mmdet and UPerNet (Swin, DeiT) via mmseg.

The end-to-end tests run the project's real configs (configs/mask_rcnn, configs/upernet), shrunk by
a test config that inherits them, through ``tools/train.py`` (synthesis -> calibration -> a few
fine-tuning iterations -> validation) and then ``tools/test.py`` and mmdet's / mmseg's own
``tools/test.py`` on the exported quantized student, on tiny COCO- and ADE20K-format datasets
drawn by :mod:`dense_data`. Teachers are randomly initialised and saved by the tests; nothing is
downloaded.
"""
import copy
import os.path as osp

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from dense_models import (DET_DATA, MASK_RCNN_CFG, SEG_DATA, SIZE, TEST, TINY_MASK_RCNN, TINY_TASK, TINY_UPERNET_DEIT,
                          TINY_UPERNET_SWIN, TRAIN, UPERNET_DEIT_CFG, UPERNET_SWIN_CFG, build_architecture,
                          build_distiller, check_metric, check_training, make_tiny, mm_tools, read_test_metrics,
                          run_tool, val_metrics, write_tiny_config)  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models run fastest on one thread; two threads on a busy two-core machine can be
    a hundred times slower (the OpenMP threads wait for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_mask_rcnn_swin_train_and_test(tmp_path):
    cfg = make_tiny(tmp_path, MASK_RCNN_CFG, TINY_MASK_RCNN, 'coco', TINY_TASK['detection'])
    work = str(tmp_path / 'work')
    out = run_tool([TRAIN, cfg, '--work-dir', work], cwd=str(tmp_path))
    assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out  # validation at the end of training
    check_training(work, ['loss_kd_fpn', 'loss_kd_rpn_cls', 'loss_kd_rpn_bbox', 'loss_kd_roi_cls',
                          'loss_kd_roi_bbox', 'loss_kd_mask', 'loss_had'])
    student = osp.join(work, 'student_w4a4.pth')
    validated = val_metrics(work)
    for tool, name in [(TEST, 'ours')] + mm_tools('mmdet'):
        test_dir = str(tmp_path / f'test_{name}')
        run_tool([tool, cfg, student, '--work-dir', test_dir], cwd=str(tmp_path))
        metrics = read_test_metrics(test_dir)
        for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
            check_metric(metrics, key)
            # the exported student is the trained one, under either tool
            assert metrics[key] == pytest.approx(validated[key], abs=1e-3), (name, key)
    # fidelity to a reference detector (tools/test.py --save-detections, --agreement): the student's
    # own detections (all of them: the tiny model is untrained) as ground truth give its boxes 100
    detections = str(tmp_path / 'student_detections.json')
    run_tool([TEST, cfg, student, '--work-dir', str(tmp_path / 'dets'), '--save-detections', detections,
              '--score-thr', '0'], cwd=str(tmp_path))
    agreement_dir = str(tmp_path / 'agreement')
    run_tool([TEST, cfg, student, '--work-dir', agreement_dir, '--agreement', detections], cwd=str(tmp_path))
    metrics = read_test_metrics(agreement_dir)
    assert metrics['teacher/bbox_mAP'] == 1.0 and 'teacher/segm_mAP' in metrics, metrics
    assert metrics['coco/bbox_mAP'] == pytest.approx(validated['coco/bbox_mAP'], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize('base,arch,mm_test', [
    (UPERNET_SWIN_CFG, TINY_UPERNET_SWIN, True),
    (UPERNET_DEIT_CFG, TINY_UPERNET_DEIT, False),
], ids=['swin', 'deit'])
def test_upernet_train_and_test(tmp_path, base, arch, mm_test):
    cfg = make_tiny(tmp_path, base, arch, 'ade20k')
    work = str(tmp_path / 'work')
    out = run_tool([TRAIN, cfg, '--work-dir', work], cwd=str(tmp_path))
    assert 'mIoU' in out
    check_training(work, ['loss_kd', 'loss_kd_aux', 'loss_had'])
    student = osp.join(work, 'student_w4a4.pth')
    tools = [(TEST, 'ours')] + (mm_tools('mmseg') if mm_test else [])
    validated = val_metrics(work)
    for tool, name in tools:
        test_dir = str(tmp_path / f'test_{name}')
        run_tool([tool, cfg, student, '--work-dir', test_dir], cwd=str(tmp_path))
        metrics = read_test_metrics(test_dir)
        check_metric(metrics, 'mIoU')
        # the exported student is the trained one, under either tool
        assert metrics['mIoU'] == pytest.approx(validated['mIoU'], abs=1e-2), name
    # fidelity to a reference model (tools/test.py --save-label-maps, --agreement): the student's own
    # maps as the reference agree with it on every pixel, and the annotation metrics are unchanged
    maps = str(tmp_path / 'student_maps.npz')
    run_tool([TEST, cfg, student, '--work-dir', str(tmp_path / 'maps'), '--save-label-maps', maps], cwd=str(tmp_path))
    agreement_dir = str(tmp_path / 'agreement')
    run_tool([TEST, cfg, student, '--work-dir', agreement_dir, '--agreement', maps], cwd=str(tmp_path))
    metrics = read_test_metrics(agreement_dir)
    assert (metrics['teacher/aAcc'], metrics['teacher/mIoU']) == (100.0, 100.0)
    assert metrics['mIoU'] == pytest.approx(validated['mIoU'], abs=1e-2)


# ---------------------------------------------------------------------------- in-process checks
def _tiny_cfg_file(tmp_path, base, architecture, task=None):
    data = DET_DATA if base == MASK_RCNN_CFG else SEG_DATA
    return write_tiny_config(str(tmp_path / 'tiny.py'), base, str(tmp_path) + '/', None, architecture, task, data)


@pytest.mark.parametrize('base,arch', [(MASK_RCNN_CFG, TINY_MASK_RCNN), (UPERNET_SWIN_CFG, TINY_UPERNET_SWIN)],
                         ids=['mmdet', 'mmseg'])
def test_capture_sees_every_swin_block(tmp_path, base, arch):
    from mimiq_mm.attention import AttentionRecorder, attention_cores, install_attention_capture
    model = build_architecture(_tiny_cfg_file(tmp_path, base, arch))
    install_attention_capture(model)
    depths = arch['backbone']['depths']
    cores = attention_cores(model)
    assert len(cores) == sum(depths)
    shifts = [core.shift_size for core in cores]
    assert shifts == [(0, 0), (2, 2)] * (sum(depths) // 2)  # every second block is shifted
    with torch.no_grad(), AttentionRecorder(model, fields=('scores',)) as rec:
        model.extract_feat(torch.randn(2, 3, SIZE, SIZE))
    assert [r.name for r in rec.records] == [c.attn_name for c in cores]
    grid = SIZE // 4
    for record, stage in zip(rec.records, [i for i, d in enumerate(depths) for _ in range(d)]):
        side = grid >> stage
        windows = max(1, -(-side // 4)) ** 2
        assert record.layout.window_size == (4, 4)
        assert record.layout.windows_per_image == windows
        assert record.scores.shape[0] == 2 * windows
    assert any(r.layout.shift_size == (2, 2) for r in rec.records)


def test_deit_segmentor_attention_at_its_input_size(tmp_path):
    from mimiq_mm.attention import AttentionRecorder, install_attention_capture
    from mimiq_mm.losses import InterHeadCoherencyLoss
    model = build_architecture(_tiny_cfg_file(tmp_path, UPERNET_DEIT_CFG, TINY_UPERNET_DEIT))
    install_attention_capture(model)
    x = torch.randn(2, 3, SIZE, SIZE, requires_grad=True)
    with AttentionRecorder(model, fields=('scores',)) as rec:
        model.extract_feat(x)
    assert len(rec.records) == TINY_UPERNET_DEIT['backbone']['num_layers']
    for r in rec.records:
        assert r.layout.grid == (SIZE // 16, SIZE // 16) and r.layout.num_prefix_tokens == 1
    InterHeadCoherencyLoss()(rec.records).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('base,arch,task', [
    (MASK_RCNN_CFG, TINY_MASK_RCNN, TINY_TASK['detection']),
    (UPERNET_SWIN_CFG, TINY_UPERNET_SWIN, None),
], ids=['detection', 'segmentation'])
def test_unquantized_student_reproduces_teacher(tmp_path, base, arch, task):
    """With quantization switched off the student is the teacher: every distillation term is 0
    (the drop-path of the tiny backbones, 0.1, has to stay off in the training student). Quantized,
    the losses are positive, reach the student's parameters only, and the detector student runs on
    the teacher's proposals."""
    from mimiq_mm.quant import set_quantization
    cfg = _tiny_cfg_file(tmp_path, base, arch, task)
    model = build_distiller(cfg, **{'model.allow_random_teacher': True, 'model.teacher_checkpoint': None})
    torch.manual_seed(0)
    model.teacher.init_weights()
    model.init_weights()  # copies the teacher into the student
    set_quantization(model.student, weights=False, activations=False)
    model.train()
    losses = model(torch.randn(2, 3, SIZE, SIZE), mode='loss')
    assert losses and 'loss_had' in losses
    for name, value in losses.items():
        assert abs(float(value)) < 1e-4, (name, float(value))
    set_quantization(model.student, weights=True, activations=True)
    model.calibrate([torch.randn(2, 3, SIZE, SIZE)])
    assert model.quantizers_initialized()
    losses = model(torch.randn(2, 3, SIZE, SIZE), mode='loss')
    total = sum(losses.values())
    assert float(total) > 1e-4
    total.backward()
    grads = [p.grad for p in model.student.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.teacher.parameters())
    if task:  # detection: box and mask outputs are compared RoI by RoI on the teacher's RoIs
        x = torch.randn(2, 3, SIZE, SIZE)
        with torch.no_grad():
            t_out = model.task.forward_tensor(model.teacher, x)
            s_out = model.task.forward_student(model.student, x, t_out)
            own = model.task.forward_tensor(model.student, x)
        assert s_out['rois'] is t_out['rois'] and torch.equal(s_out['mask_rois'], t_out['mask_rois'])
        assert s_out['cls_score'].shape == t_out['cls_score'].shape
        assert s_out['mask_pred'].shape[0] == t_out['mask_labels'].shape[0] > 0
        assert own['rois'].shape[1] == 5



def test_detector_box_head_starts_from_min_max_unless_told(tmp_path):
    """The detection task's activation starts: by default the RoI box head's LSQ quantizers start
    from min-max and every other one by lsq_init, and the calibration log names it;
    ``module_lsq_init={}`` puts every quantizer on lsq_init, an explicit dict replaces the task's."""
    from mimiq_mm.quant import LSQActQuantizer, describe_calibration

    def starts(**overrides):
        model = build_distiller(_tiny_cfg_file(tmp_path, MASK_RCNN_CFG, TINY_MASK_RCNN, TINY_TASK['detection']),
                                **{'model.allow_random_teacher': True, 'model.teacher_checkpoint': None, **overrides})
        found = {n: q.init for n, q in model.student.named_modules() if isinstance(q, LSQActQuantizer)}
        return model, found

    model, default = starts()
    box = {n: i for n, i in default.items() if n.startswith('roi_head.bbox_head.')}
    assert box and set(box.values()) == {'minmax'}
    assert {i for n, i in default.items() if n not in box} == {'mse'}
    assert "started by module" in describe_calibration(model.student)
    _, uniform = starts(**{'model.quant.module_lsq_init': {}})
    assert set(uniform.values()) == {'mse'}
    _, told = starts(**{'model.quant.module_lsq_init': {'rpn_head': 'mean_abs'}})
    assert {i for n, i in told.items() if n.startswith('rpn_head')} == {'mean_abs'}
    assert {i for n, i in told.items() if not n.startswith('rpn_head')} == {'mse'}

def test_real_segmentation_batches_calibrate_at_one_size(tmp_path):
    """Real-data fine-tuning of a segmentor: the train pipeline's random crops differ in size and
    only the training preprocessor pads them to one; calibration prepares real batches that way."""
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    from mimiq_mm.engine.calibration import calibration_inputs
    cfg = _tiny_cfg_file(tmp_path, UPERNET_SWIN_CFG, TINY_UPERNET_SWIN)
    model = build_distiller(cfg, **{'model.allow_random_teacher': True, 'model.teacher_checkpoint': None})
    samples = []
    for h, w in ((SIZE, SIZE), (SIZE // 2, SIZE - 8)):
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.zeros(1, h, w, dtype=torch.long)))
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w)))
        samples.append(sample)
    batch = dict(inputs=[torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8),
                         torch.randint(0, 256, (3, SIZE // 2, SIZE - 8), dtype=torch.uint8)], data_samples=samples)
    with pytest.raises(AssertionError, match='same'):
        model.data_preprocessor(batch, False)  # what calibration used to do
    inputs = calibration_inputs(model, batch)
    assert inputs.shape == (2, 3, SIZE, SIZE)
    synthetic = calibration_inputs(model, dict(pixels=torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8)))
    assert synthetic.shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize('base,arch,task', [
    (MASK_RCNN_CFG, TINY_MASK_RCNN, TINY_TASK['detection']),
    (UPERNET_SWIN_CFG, TINY_UPERNET_SWIN, None),
], ids=['detection', 'segmentation'])
def test_head_prior_synthesis(tmp_path, base, arch, task):
    from mimiq_mm.synthesis import ImageSynthesizer
    model = build_distiller(_tiny_cfg_file(tmp_path, base, arch, task),
                            **{'model.allow_random_teacher': True, 'model.teacher_checkpoint': None})
    model.teacher.init_weights()
    pre = model.data_preprocessor
    synth = ImageSynthesizer(model.teacher, model.task, (SIZE, SIZE), pre.pixel_mean.flatten().tolist(),
                             pre.pixel_std.flatten().tolist(), steps=2, log_interval=0)
    num_classes = model.task.num_classes(model.teacher)
    assert num_classes == (80 if task else 150)
    targets = torch.tensor([1, num_classes - 1])
    terms = synth.loss_terms(torch.zeros(2, 3, SIZE, SIZE, requires_grad=True), targets)
    assert set(terms) == {'ihc', 'cl', 'tv'}
    images, final = synth.synthesize(targets, seed=0)
    assert images.shape == (2, 3, SIZE, SIZE) and all(map(lambda v: v == v, final.values()))


def test_classifier_prior(tmp_path):
    """The other prior: an ImageNet-style classifier (here a tiny mmpretrain Swin) gives L_CL at its own
    input size; the segmentor then runs only its backbone, for L_IHC."""
    from mimiq_mm.synthesis import ClassifierPrior, build_prior
    from mimiq_mm.synthesis import ImageSynthesizer
    model = build_distiller(_tiny_cfg_file(tmp_path, UPERNET_SWIN_CFG, TINY_UPERNET_SWIN),
                            **{'model.allow_random_teacher': True, 'model.teacher_checkpoint': None})
    classifier = dict(type='ImageClassifier',
                      backbone=dict(type='SwinTransformer', arch=dict(embed_dims=16, depths=[2], num_heads=[1]),
                                    img_size=32, window_size=4, out_indices=(0,)),
                      neck=dict(type='GlobalAveragePooling'),
                      head=dict(type='LinearClsHead', num_classes=7, in_channels=16))
    torch.manual_seed(0)
    ckpt = str(tmp_path / 'cls.pth')
    built = ClassifierPrior(copy.deepcopy(classifier)).model
    torch.save(dict(state_dict=built.state_dict()), ckpt)
    pre = model.data_preprocessor
    mean, std = pre.pixel_mean.flatten().tolist(), pre.pixel_std.flatten().tolist()
    assert build_prior(None, mean, std) is None and build_prior({'type': 'head'}, mean, std) is None
    with pytest.raises(ValueError):
        build_prior(dict(type='nope'), mean, std)
    prior = build_prior(dict(type='classifier', model=classifier, checkpoint=ckpt, image_size=32), mean, std)
    assert isinstance(prior, ClassifierPrior) and prior.num_classes() == 7
    assert torch.equal(prior.model.head.fc.weight, built.head.fc.weight)  # the checkpoint was loaded
    calls = []
    original = model.task.forward_backbone
    model.task.forward_backbone = lambda m, x: calls.append(x.shape) or original(m, x)
    synth = ImageSynthesizer(model.teacher, model.task, (SIZE, SIZE), mean, std, steps=1, log_interval=0, prior=prior)
    images = torch.zeros(2, 3, SIZE, SIZE, requires_grad=True)
    terms = synth.loss_terms(images, torch.tensor([0, 6]))
    assert calls and set(terms) == {'ihc', 'cl', 'tv'}
    sum(terms.values()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())


def test_build_task_options_and_unsupported_detector():
    import torch.nn as nn
    from mimiq_mm.tasks import DetectorTask, SegmentorTask
    from mimiq_mm.tasks import build_task
    task = build_task(nn.Identity(), dict(type='detection', num_rois=7, loss_weights=dict(mask=0.0)))
    assert isinstance(task, DetectorTask) and task.num_rois == 7 and task.loss_weights['mask'] == 0.0
    assert isinstance(build_task(nn.Identity(), dict(type='segmentation', aux_weight=0)), SegmentorTask)
    with pytest.raises(ValueError):
        DetectorTask(loss_weights=dict(nope=1.0))

    class OneStage(nn.Module):
        bbox_head = nn.Identity()

    with pytest.raises(NotImplementedError):
        DetectorTask().num_classes(OneStage())
