"""ONNX export of the quantized student (mimiq_mm.deploy): parity with PyTorch in ONNX Runtime,
integer kernels, INT4 weights, bad input. Tiny randomly initialised models, no downloads."""
import copy
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest
import torch

pytest.importorskip('onnx')
pytest.importorskip('onnxscript')
pytest.importorskip('onnxruntime')
timm = pytest.importorskip('timm')

from mimiq_mm.deploy import DeployError, act_qdq, export_onnx, qdq_export_mode  # noqa: E402
from mimiq_mm.deploy.parity import compare_outputs, compare_quantizers  # noqa: E402
from mimiq_mm.deploy.runtime import integer_ops, optimized_op_counts  # noqa: E402
from mimiq_mm.quant import (LSQActQuantizer, QuantConv2d, QuantLinear, calibration, quantize_model,  # noqa: E402
                            quantizers, set_quantization)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
INTEGER_MATMULS = ('MatMulIntegerToFloat', 'QLinearMatMul', 'QGemm', 'MatMulInteger')


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vit(seed=0):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    return VisionTransformer(img_size=(32, 48), patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.,
                             num_classes=10).eval(), (32, 48)


def tiny_swin(seed=0):
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(seed)
    model = SwinTransformer(img_size=(32, 32), patch_size=4, window_size=4, embed_dim=16, depths=(2, 2),
                            num_heads=(2, 4), mlp_ratio=2., num_classes=5).eval()
    with torch.no_grad():  # visible relative position bias (timm initialises it near zero)
        for m in model.modules():
            if hasattr(m, 'relative_position_bias_table'):
                m.relative_position_bias_table.normal_(0, 1)
    return model, (32, 32)


def images(size, n=4, seed=1):
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def student(make, bits=8, act_method='minmax', **quant):
    model, size = make()
    q = quantize_model(copy.deepcopy(model), w_bits=bits, a_bits=bits, act_method=act_method, **quant).eval()
    with torch.no_grad(), calibration(q):
        q(images(size, n=8, seed=0))
    return q, size


def assert_parity(model, path, size, bits=8):
    """Top-1 agreement and every quantizer within one step; the logits differ by float summation
    order, and at 4 bits also by a tie that rounds the other way and moves on through the net."""
    out = compare_outputs(model, path, [images(size, seed=s) for s in (2, 3)])
    assert out['images'] == 8 and out['top1_agreement'] == 1.0, out
    assert out['max_rel_diff'] < (1e-3 if bits == 8 else 0.1), out
    rows = compare_quantizers(model, path, images(size, seed=4))
    assert len(rows) == sum(1 for _ in quantizers(model)) - sum(1 for m in model.modules() if isinstance(
        m, (QuantLinear, QuantConv2d)))  # every activation quantizer is probed (weights are constants)
    assert max(r['max_step_diff'] for r in rows) <= 1.0 + 1e-3, rows
    return out, rows


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize('act_method', ['minmax', 'lsq'])
@pytest.mark.parametrize('bits', [8, 4])
def test_vit_export_equals_pytorch_within_one_step(tmp_path, bits, act_method):
    q, size = student(tiny_vit, bits, act_method)
    info = export_onnx(q, str(tmp_path / 'vit.onnx'), input_size=size, batch=2)
    assert info['outputs'] == ['logits'] and info['dynamic_batch']
    assert_parity(q, info['path'], size, bits)


@pytest.mark.slow
@pytest.mark.parametrize('act_method', ['minmax', 'lsq'])
@pytest.mark.parametrize('bits', [8, 4])
def test_swin_export_equals_pytorch_within_one_step(tmp_path, bits, act_method):
    """Shifted windows, relative position bias and shift masks go through the exported graph."""
    q, size = student(tiny_swin, bits, act_method)
    info = export_onnx(q, str(tmp_path / 'swin.onnx'), input_size=size, batch=2)
    assert_parity(q, info['path'], size, bits)


MMPRETRAIN_CLASSIFIERS = dict(
    vit=dict(backbone=dict(type='VisionTransformer', img_size=32, patch_size=8,
                           arch=dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)),
             neck=None, head=dict(type='VisionTransformerClsHead', num_classes=5, in_channels=32)),
    swin=dict(backbone=dict(type='SwinTransformer', img_size=32, window_size=4, out_indices=(1,),
                            arch=dict(embed_dims=16, depths=[2, 2], num_heads=[2, 4])),
              neck=dict(type='GlobalAveragePooling'), head=dict(type='LinearClsHead', num_classes=5, in_channels=32)))


@pytest.mark.slow
@pytest.mark.parametrize('backbone', list(MMPRETRAIN_CLASSIFIERS))
def test_mmpretrain_classifier_export(tmp_path, backbone):
    """mmpretrain's own ViT and Swin (ImageClassifier): logits of ``mode='tensor'``."""
    pytest.importorskip('mmpretrain')
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    q = quantize_model(MODELS.build(dict(type='ImageClassifier', **MMPRETRAIN_CLASSIFIERS[backbone])), w_bits=8,
                       a_bits=8).eval()
    with torch.no_grad(), calibration(q):
        q(images((32, 32), n=8, seed=0), mode='tensor')
    info = export_onnx(q, str(tmp_path / 'cls.onnx'), input_size=(32, 32), batch=2)
    assert info['outputs'] == ['logits']
    assert sum(integer_ops(optimized_op_counts(info['path'])).values()) >= 4 * 2  # 4 linears per block at least
    out = compare_outputs(q, info['path'], [images((32, 32), seed=s) for s in (2, 3)])
    assert out['top1_agreement'] == 1.0, out
    assert max(r['max_step_diff'] for r in compare_quantizers(q, info['path'], images((32, 32)))) <= 1.001


def test_w8a8_graph_runs_every_matmul_on_integer_kernels(tmp_path):
    q, size = student(tiny_vit, 8)
    path = export_onnx(q, str(tmp_path / 'vit.onnx'), input_size=size)['path']
    ops = integer_ops(optimized_op_counts(path))
    linears = sum(isinstance(m, QuantLinear) for m in q.modules())
    attention_matmuls = 2 * len(q.blocks)
    assert sum(ops.get(op, 0) for op in INTEGER_MATMULS) == linears + attention_matmuls, ops


def dequantized_weights(path):
    """{DequantizeLinear output: (codes - zero point) * scale} of every constant-coded node, and
    the codes' ONNX types."""
    import onnx
    from onnx import numpy_helper
    proto = onnx.load(path)
    inits = {t.name: t for t in proto.graph.initializer}
    values, types = {}, {}
    for node in proto.graph.node:
        if node.op_type == 'DequantizeLinear' and node.input[0] in inits:
            codes = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 else 0
            shape = [-1] + [1] * (codes.ndim - 1) if np.ndim(scale) == 1 else []
            values[node.output[0]] = (codes - np.reshape(zero, shape)) * np.reshape(scale, shape)
            types[node.output[0]] = inits[node.input[0]].data_type
    return values, types


@pytest.mark.parametrize('bits', [8, 7])
def test_8bit_weights_are_stored_so_that_no_cpu_saturates(tmp_path, bits):
    """8-bit weight codes go to uint8 + 128 (ONNX Runtime's uint8 x int8 kernels clip on x86 CPUs
    without VNNI); 7-bit ones cannot saturate and stay int8. The dequantized weights are the same."""
    import onnx
    q, size = student(tiny_vit, bits)
    default = export_onnx(q, str(tmp_path / 'default.onnx'), input_size=size)
    signed = export_onnx(q, str(tmp_path / 'signed.onnx'), input_size=size, signed_8bit_weights=True)
    weights = sum(isinstance(m, (QuantLinear, QuantConv2d)) for m in q.modules())
    assert default['uint8_weight_initializers'] == (weights if bits == 8 else 0)
    assert signed['uint8_weight_initializers'] == 0
    ours, our_types = dequantized_weights(default['path'])
    theirs, their_types = dequantized_weights(signed['path'])
    assert ours.keys() == theirs.keys() and len(ours) >= weights
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name])
    assert sum(t == onnx.TensorProto.UINT8 for t in our_types.values()) - sum(
        t == onnx.TensorProto.UINT8 for t in their_types.values()) == default['uint8_weight_initializers']
    ops = integer_ops(optimized_op_counts(default['path']))  # uint8 weights keep the integer kernels
    linears = sum(isinstance(m, QuantLinear) for m in q.modules())
    assert sum(ops.get(op, 0) for op in INTEGER_MATMULS) == linears + 2 * len(q.blocks), ops
    if bits == 8:
        assert_parity(q, default['path'], size, bits)


@pytest.mark.slow
def test_benchmark_tool_times_every_candidate_and_checks_both_weight_formats(tmp_path):
    sys.path.insert(0, osp.join(ROOT, 'tools', 'deploy'))
    try:
        import benchmark_onnx
    finally:
        sys.path.pop(0)
    out = tmp_path / 'bench.json'
    benchmark_onnx.main(['--timm-model', 'vit_tiny_patch16_224', '--input-size', '32', '32', '--batches', '1',
                         '--rounds', '1', '--warmup', '0', '--work-dir', str(tmp_path / 'files'), '--out', str(out)])
    result = json.loads(out.read_text())
    candidates = {'torch_fp32', 'torch_fakequant', 'ort_fp32', 'ort_mimiq', 'ort_static', 'ort_mimiq_s8w'}
    assert set(result['timings']['batch_1']) == candidates
    assert all(t['ms_median'] > 0 for t in result['timings']['batch_1'].values())
    for parity in (result['parity'], result['parity_s8w']):
        assert parity['images'] == 16 and 0 <= parity['top1_agreement'] <= 1
    assert result['parity']['max_rel_diff'] < 0.05  # uint8 weights: nothing saturates, on any CPU
    assert result['integer_ops']['ort_mimiq'] == result['integer_ops']['ort_mimiq_s8w']
    assert result['environment']['cpu_int8_dot'] in ('vnni', 'no vnni', None)


@pytest.mark.slow
def test_4bit_weights_as_int4_or_int8_codes(tmp_path):
    q, size = student(tiny_vit, 4)
    weights = sum(isinstance(m, (QuantLinear, QuantConv2d)) for m in q.modules())
    int4 = export_onnx(q, str(tmp_path / 'int4.onnx'), input_size=size, opset=21)
    int8 = export_onnx(q, str(tmp_path / 'int8.onnx'), input_size=size, opset=21, int4_weights=False)
    older = export_onnx(q, str(tmp_path / 'opset18.onnx'), input_size=size, opset=18)
    assert int4['int4_initializers'] == weights and int8['int4_initializers'] == older['int4_initializers'] == 0
    assert int4['bytes'] < int8['bytes']
    import onnx
    types = {t.name: t.data_type for t in onnx.load(int4['path']).graph.initializer}
    assert sum(t == onnx.TensorProto.INT4 for t in types.values()) >= weights
    # int8 containers keep ONNX Runtime's integer kernels for the 4-bit weights
    ops = integer_ops(optimized_op_counts(int8['path']))
    assert sum(ops.get(op, 0) for op in INTEGER_MATMULS) > 2 * len(q.blocks)
    assert_parity(q, int8['path'], size, bits=4)  # INT4: the 4-bit parity tests above


@pytest.mark.parametrize('bits', [8, 4])
def test_openvino_runs_the_exported_file_as_onnx_runtime_does(tmp_path, bits):
    """The second runtime reads the same Q/DQ file and computes the same student."""
    pytest.importorskip('openvino')
    from mimiq_mm.deploy.runtime import openvino_model, ort_session, run
    q, size = student(tiny_vit, bits)
    path = export_onnx(q, str(tmp_path / 'vit.onnx'), input_size=size, int4_weights=False)['path']
    x = images(size, n=8, seed=5)
    with torch.no_grad():
        ours = q(x).numpy()
    theirs = openvino_model(path)(x)[0]
    reference = run(ort_session(path), x)[0]
    assert theirs.shape == ours.shape
    assert (theirs.argmax(1) == ours.argmax(1)).all()
    # both runtimes land within a few quantization steps of the logits' range of each other
    tolerance = (1e-2 if bits == 8 else 0.15) * np.abs(ours).max()
    assert np.abs(theirs - reference).max() < tolerance
    assert np.abs(theirs - ours).max() < tolerance


def test_export_mode_changes_nothing_outside_the_context():
    q, size = student(tiny_vit, 4, 'lsq')
    x = images(size)
    keys = list(q.state_dict())
    with torch.no_grad():
        before = q(x)
        with qdq_export_mode(q):
            inside = q(x)
        after = q(x)
    assert torch.equal(before, after) and list(q.state_dict()) == keys
    assert (inside - before).abs().max() < 0.05 * before.abs().max()  # the same quantization, up to ties
    from mimiq_mm.attention import AttentionCore
    assert not any('forward' in m.__dict__ or '_qdq' in m.__dict__ for m in quantizers(q))
    assert not any('quantized_scores' in m.__dict__ for m in q.modules() if isinstance(m, AttentionCore))


# ----------------------------------------------------------------------------- uint8 codes of any range

def test_signed_and_narrow_ranges_map_onto_uint8_with_a_clip():
    q = LSQActQuantizer(4)
    q(torch.randn(1000))  # signed: levels -8..7
    with torch.no_grad():
        q.step.fill_(0.25)
        q.offset.fill_(2.0)
    p = act_qdq(q)
    assert p.zero_point == 2 + p.shift and 0 <= p.zero_point <= 255 and p.shift >= 8
    assert p.clip == pytest.approx(((-8 - 2) * 0.25, (7 - 2) * 0.25))
    with torch.no_grad():
        q.offset.fill_(400.0)  # LSQ's offset drifted far outside any uint8 zero point
    with pytest.raises(DeployError, match='offset'):
        act_qdq(q)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_gets_a_clear_error(tmp_path):
    fp, size = tiny_vit()
    with pytest.raises(DeployError, match='no quantizers'):
        export_onnx(fp, str(tmp_path / 'fp.onnx'), input_size=size)
    fresh = quantize_model(copy.deepcopy(fp), w_bits=8, a_bits=8)
    fresh.load_state_dict(fp.state_dict())  # a full-precision checkpoint: no quantizer state
    with pytest.raises(DeployError, match='full-precision checkpoint'):
        export_onnx(fresh, str(tmp_path / 'x.onnx'), input_size=size)
    q, _ = student(tiny_vit, 8)
    q.blocks[1].mlp.fc2.input_quantizer.initialized.fill_(False)
    with pytest.raises(DeployError, match='not calibrated'):
        export_onnx(q, str(tmp_path / 'x.onnx'), input_size=size)
    q, _ = student(tiny_vit, 8)
    for opset in (12, 30):
        with pytest.raises(DeployError, match='opset'):
            export_onnx(q, str(tmp_path / 'x.onnx'), input_size=size, opset=opset)
    with pytest.raises(DeployError, match='INT4'):
        export_onnx(q, str(tmp_path / 'x.onnx'), input_size=size, opset=18, int4_weights=True)
    set_quantization(q, True, False)
    with pytest.raises(DeployError, match='switched off'):
        export_onnx(q, str(tmp_path / 'x.onnx'), input_size=size)
    assert not (tmp_path / 'x.onnx').exists()


def test_missing_runtime_names_the_extra(monkeypatch):
    from mimiq_mm.deploy import require_deploy_packages
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(ImportError, match=r'pip install -e \.\[deploy\]'):
        require_deploy_packages()


# ----------------------------------------------------------------------------- the tool

@pytest.mark.slow
def test_export_tool_from_config_and_checkpoint_with_folder_check(tmp_path):
    """tools/deploy/export_onnx.py on the tiny test config: a student checkpoint, a random and an
    image-folder check (generated PNGs in class folders), the JSON report."""
    pytest.importorskip('mmpretrain')
    import mmcv
    from mimiq_mm.apis import init_model
    config = osp.join(ROOT, 'tests', 'configs', 'tiny_cls_mimiq.py')
    options = {'model.allow_random_teacher': True, 'model.teacher_checkpoint': None}
    distiller = init_model(config, None, part='model', cfg_options=options)
    with torch.no_grad(), calibration(distiller.student):
        distiller.student(images((16, 16), n=8), mode='tensor')
    checkpoint = tmp_path / 'student_w4a4.pth'
    torch.save(dict(state_dict=distiller.student.state_dict(), meta={}), checkpoint)
    rng = np.random.default_rng(0)
    for label in ('cat', 'dog'):
        os.makedirs(tmp_path / 'images' / label)
        for i in range(3):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            mmcv.imwrite(pixels, str(tmp_path / 'images' / label / f'{i}.png'))
    sys.path.insert(0, osp.join(ROOT, 'tools', 'deploy'))
    try:
        import export_onnx as tool
    finally:
        sys.path.pop(0)
    out = tmp_path / 'tiny.onnx'
    info = tool.main([config, str(checkpoint), '--out', str(out), '--batch', '4', '--check', '1',
                      '--check-data', str(tmp_path / 'images')])
    assert out.exists() and info['input_size'] == [16, 16] and info['integer_ops']
    report = json.loads((tmp_path / 'tiny.onnx.json').read_text())
    assert report['check_data']['images'] == 6 and report['check_random']['images'] == 4
    for check in ('check_data', 'check_random'):
        assert report[check]['top1_agreement'] == 1.0
        assert report[check]['max_quantizer_step_diff'] <= 1.0 + 1e-3
    fp = tmp_path / 'fp.pth'
    torch.save(dict(state_dict=distiller.teacher.state_dict()), fp)
    with pytest.raises(DeployError, match='full-precision'):
        tool.main([config, str(fp), '--out', str(tmp_path / 'fp.onnx')])


# ----------------------------------------------------------------------------- dense models

def _dense_student(cfg_name, arch):
    from mimiq_mm.apis import init_model
    from mimiq_mm.deploy import ExportWrapper
    torch.manual_seed(0)
    model = init_model(osp.join(ROOT, 'configs', cfg_name), None, part='student',
                       cfg_options={'model.architecture': arch, 'model.quant.w_bits': 8, 'model.quant.a_bits': 8})
    with torch.no_grad(), calibration(model):
        ExportWrapper(model)(images((64, 64), n=2))
    return model


@pytest.mark.slow
def test_upernet_deit_and_swin_whole_model_and_mask_rcnn_backbone_neck(tmp_path):
    pytest.importorskip('mmseg')
    pytest.importorskip('mmdet')
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    try:
        from test_dense import TINY_MASK_RCNN, TINY_UPERNET_DEIT, TINY_UPERNET_SWIN
    finally:
        sys.path.pop(0)
    for name, arch in (('upernet_deit-s', TINY_UPERNET_DEIT), ('upernet_swin-t', TINY_UPERNET_SWIN)):
        seg = _dense_student(f'upernet/{name}_mimiq_w4a4.py', arch)
        info = export_onnx(seg, str(tmp_path / f'{name}.onnx'), input_size=(64, 64), batch=2)
        assert info['outputs'] == ['seg_logits']
        steps = compare_quantizers(seg, info['path'], images((64, 64), n=2))
        assert max(r['max_step_diff'] for r in steps) <= 1.001, name
        out = compare_outputs(seg, info['path'], [images((64, 64), n=2)])
        # a random 150-class decode head (BatchNorm at its initial statistics) has near-tied logits,
        # so a rounding tie upstream flips a few pixels' argmax (Swin: ~2 %)
        assert out['pixel_agreement'] > 0.95 and out['max_rel_diff'] < 0.05, (name, out)

    det = _dense_student('mask_rcnn/mask-rcnn_swin-t_mimiq_w4a4.py', TINY_MASK_RCNN)
    info = export_onnx(det, str(tmp_path / 'backbone_fpn.onnx'), input_size=(64, 64), batch=2)
    assert info['outputs'] == [f'features_{i}' for i in range(5)]  # the FPN levels, heads stay in PyTorch
    out = compare_outputs(det, info['path'], [images((64, 64), n=2)])
    assert out['max_rel_diff'] < 0.05, out
    assert max(r['max_step_diff'] for r in compare_quantizers(det, info['path'], images((64, 64), n=2))) <= 1.001
