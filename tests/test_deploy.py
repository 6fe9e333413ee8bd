"""ONNX export of the quantized student (mimiq_mm.deploy): parity with PyTorch in ONNX Runtime
(within the student's own rounding envelope, mimiq_mm.deploy.parity), integer kernels, INT4
weights, export targets, bad input. Tiny randomly initialised models, no downloads; trained
models, OpenVINO and the dense models in test_deploy_parity.py."""
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
from mimiq_mm.deploy import target as deploy_target  # noqa: E402
from mimiq_mm.deploy.parity import check_parity  # noqa: E402
from mimiq_mm.deploy.runtime import integer_ops, optimized_op_counts, ort_session  # noqa: E402
from mimiq_mm.quant import (LSQActQuantizer, QuantConv2d, QuantLinear, calibration, quantize_model,  # noqa: E402
                            quantizers, set_quantization)

from tool_loader import load_tool  # noqa: E402

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


def assert_parity(model, path, size):
    """The outputs within the student's rounding envelope (top-1 agreement where the student's
    own top-1 is stable), every quantizer within one step and only at near-ties."""
    out = check_parity(model, path, [images(size, seed=s) for s in (2, 3)])
    assert out['passed'] and out['images'] == 8, out
    assert out['quantizers'] == sum(1 for _ in quantizers(model)) - sum(1 for m in model.modules() if isinstance(
        m, (QuantLinear, QuantConv2d)))  # every activation quantizer is probed (weights are constants)
    return out


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize('act_method', ['minmax', 'lsq'])
@pytest.mark.parametrize('bits', [8, 4])
def test_vit_export_equals_pytorch_within_one_step(tmp_path, bits, act_method):
    q, size = student(tiny_vit, bits, act_method)
    info = export_onnx(q, str(tmp_path / 'vit.onnx'), input_size=size, batch=2)
    assert info['outputs'] == ['logits'] and info['dynamic_batch']
    assert_parity(q, info['path'], size)


@pytest.mark.slow
@pytest.mark.parametrize('act_method', ['minmax', 'lsq'])
@pytest.mark.parametrize('bits', [8, 4])
def test_swin_export_equals_pytorch_within_one_step(tmp_path, bits, act_method):
    """Shifted windows, relative position bias and shift masks go through the exported graph."""
    q, size = student(tiny_swin, bits, act_method)
    info = export_onnx(q, str(tmp_path / 'swin.onnx'), input_size=size, batch=2)
    assert_parity(q, info['path'], size)


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
    assert_parity(q, info['path'], (32, 32))


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
def test_the_target_picks_how_8bit_weights_are_stored(tmp_path, bits):
    """x86-no-vnni: 8-bit weight codes as uint8 + 128 (ONNX Runtime's u8 x s8 kernels clip on x86
    CPUs without VNNI); x86-vnni and arm: int8. 7-bit codes cannot saturate and stay int8. The
    dequantized weights are the same, every matmul runs on integer kernels."""
    import onnx
    q, size = student(tiny_vit, bits)
    files = {t: export_onnx(q, str(tmp_path / f'{t}.onnx'), input_size=size, target=t)
             for t in ('x86-no-vnni', 'x86-vnni', 'arm')}
    weights = sum(isinstance(m, (QuantLinear, QuantConv2d)) for m in q.modules())
    assert files['x86-no-vnni']['uint8_weight_initializers'] == (weights if bits == 8 else 0)
    assert files['x86-vnni']['uint8_weight_initializers'] == files['arm']['uint8_weight_initializers'] == 0
    assert files['x86-vnni']['int8_weights_beyond_64'] == (weights if bits == 8 else 0)
    ours, our_types = dequantized_weights(files['x86-no-vnni']['path'])
    theirs, their_types = dequantized_weights(files['x86-vnni']['path'])
    assert ours.keys() == theirs.keys() and len(ours) >= weights
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name])
    assert sum(t == onnx.TensorProto.UINT8 for t in our_types.values()) - sum(
        t == onnx.TensorProto.UINT8 for t in their_types.values()) == files['x86-no-vnni']['uint8_weight_initializers']
    linears = sum(isinstance(m, QuantLinear) for m in q.modules())
    for info in files.values():
        ops = integer_ops(optimized_op_counts(info['path']))
        assert sum(ops.get(op, 0) for op in INTEGER_MATMULS) == linears + 2 * len(q.blocks), ops
        metadata = {p.key: p.value for p in onnx.load(info['path']).metadata_props}
        assert metadata[deploy_target.META_TARGET] == info['target']
        assert metadata[deploy_target.META_SOURCE] == 'chosen'
    if bits == 8:
        assert_parity(q, files['x86-no-vnni']['path'], size)  # on this CPU int8 is exact too if it has VNNI


X86 = dict(model='Some x86 CPU', arch='x86_64', avx2=True, avx512=False, amx=False, bf16=False)


@pytest.mark.parametrize('cpu, expected', [(dict(X86, vnni=True), 'x86-vnni'), (dict(X86, vnni=False), 'x86-no-vnni'),
                                           (dict(X86, vnni=None), 'x86-no-vnni'),
                                           (dict(model=None, arch='aarch64', vnni=None), 'arm')])
def test_auto_target_follows_the_cpu_doing_the_export(tmp_path, monkeypatch, cpu, expected):
    import onnx
    monkeypatch.setattr(deploy_target, 'cpu_features', lambda: cpu)
    q, size = student(tiny_vit, 8)
    info = export_onnx(q, str(tmp_path / 'auto.onnx'), input_size=size)
    assert info['target'] == expected and info['target_source'].startswith('auto: ')
    assert (info['uint8_weight_initializers'] > 0) == (expected == 'x86-no-vnni')
    metadata = {p.key: p.value for p in onnx.load(info['path']).metadata_props}
    assert metadata[deploy_target.META_TARGET] == expected
    assert metadata[deploy_target.META_SOURCE] == info['target_source']
    with pytest.raises(DeployError, match='x86-no-vnni'):
        export_onnx(q, str(tmp_path / 'x.onnx'), input_size=size, target='x86')


def test_the_former_flag_is_an_alias_of_the_vnni_target():
    tool = load_tool('deploy/export_onnx')
    assert tool.parse_args(['c.py', 'c.pth', '--out', 'x.onnx']).target == 'auto'
    assert tool.parse_args(['c.py', 'c.pth', '--out', 'x.onnx', '--signed-int8-weights']).target == 'x86-vnni'
    with pytest.raises(SystemExit):
        tool.parse_args(['c.py', 'c.pth', '--out', 'x.onnx', '--signed-int8-weights', '--target', 'x86-no-vnni'])


def test_a_file_for_vnni_warns_once_on_a_cpu_without_vnni(tmp_path, monkeypatch):
    import warnings
    q, size = student(tiny_vit, 8)
    vnni = export_onnx(q, str(tmp_path / 'vnni.onnx'), input_size=size, target='x86-vnni')['path']
    exact = export_onnx(q, str(tmp_path / 'exact.onnx'), input_size=size, target='x86-no-vnni')['path']
    monkeypatch.setattr(deploy_target, '_warned', set())
    monkeypatch.setattr(deploy_target, 'cpu_features', lambda: dict(X86, vnni=False))
    with pytest.warns(RuntimeWarning, match='Re-export it with --target x86-no-vnni'):
        ort_session(vnni)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once per file; a file for this CPU never
        ort_session(vnni)
        ort_session(exact)
    monkeypatch.setattr(deploy_target, '_warned', set())
    monkeypatch.setattr(deploy_target, 'cpu_features', lambda: dict(X86, vnni=True))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ort_session(vnni)


@pytest.mark.slow
def test_benchmark_tool_times_every_candidate_and_checks_both_weight_formats(tmp_path):
    benchmark_onnx = load_tool('deploy/benchmark_onnx')
    out = tmp_path / 'bench.json'
    benchmark_onnx.main(['--timm-model', 'vit_tiny_patch16_224', '--input-size', '32', '32', '--batches', '1',
                         '--rounds', '1', '--warmup', '0', '--work-dir', str(tmp_path / 'files'), '--out', str(out)])
    result = json.loads(out.read_text())
    other = 'ort_mimiq_u8w' if deploy_target.WEIGHT_STORAGE[result['target']] == 'int8' else 'ort_mimiq_s8w'
    assert result['target'] == deploy_target.detect_target()[0]  # auto: this CPU
    candidates = {'torch_fp32', 'torch_fakequant', 'ort_fp32', 'ort_mimiq', 'ort_static', other}
    assert set(result['timings']['batch_1']) == candidates
    assert all(t['ms_median'] > 0 for t in result['timings']['batch_1'].values())
    assert result['parity']['images'] == 16 and result['parity']['passed'], result['parity']  # right here
    assert result[f'parity_{other[-3:]}']['images'] == 16
    assert result['integer_ops']['ort_mimiq'] == result['integer_ops'][other]
    env = result['environment']
    assert set(env['cpu']) >= {'model', 'avx2', 'avx512', 'vnni', 'amx', 'bf16'} and env['threads']['onnxruntime'] == 1
    assert env['torch'] and env['onnxruntime'] and 'openvino' in env and env['git'] != ''
    assert str(tmp_path) not in out.read_text()  # no paths of this machine
    speed_table = load_tool('deploy/speed_table')
    table = speed_table.main([str(out)])
    assert table.count('\n| ') == len(candidates) and env['cpu']['model'] in table


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
    assert_parity(q, int8['path'], size)  # INT4: the 4-bit parity tests above


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
    q = LSQActQuantizer(4, init='mean_abs')
    q(torch.randn(1000))  # signed (a negative minimum): levels -8..7
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
    tool = load_tool('deploy/export_onnx')
    out = tmp_path / 'tiny.onnx'
    info = tool.main([config, str(checkpoint), '--out', str(out), '--batch', '4', '--check', '1',
                      '--check-data', str(tmp_path / 'images')])
    assert out.exists() and info['input_size'] == [16, 16] and info['integer_ops']
    report = json.loads((tmp_path / 'tiny.onnx.json').read_text())
    assert report['check_data']['images'] == 6 and report['check_random']['images'] == 4
    assert report['target'] == deploy_target.detect_target()[0]
    # the quantizers are compared on every batch the check evaluates, not the first one only
    assert report['check_data']['quantizer_images'] == 6 and report['check_data']['quantizer_batches'] == 2
    for check in ('check_data', 'check_random'):
        assert report[check]['passed'], report[check]
    fp = tmp_path / 'fp.pth'
    torch.save(dict(state_dict=distiller.teacher.state_dict()), fp)
    with pytest.raises(DeployError, match='full-precision'):
        tool.main([config, str(fp), '--out', str(tmp_path / 'fp.onnx')])
