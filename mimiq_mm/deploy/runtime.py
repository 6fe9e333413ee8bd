"""Running exported models in ONNX Runtime and OpenVINO (CPU): sessions, the optimised graph's
operators. Both warn once when a file exported for VNNI CPUs runs on one without (:mod:`.target`)."""
import os
import tempfile
from collections import Counter

from mmengine.logging import print_log

from .onnx_export import require_deploy_packages
from .target import warn_if_saturating

#: operators of ONNX Runtime's optimised graph that compute on integers
INTEGER_OPS = ('QLinearMatMul', 'MatMulInteger', 'MatMulIntegerToFloat', 'QGemm', 'QLinearConv', 'ConvInteger',
               'DynamicQuantizeMatMul', 'MatMulNBits', 'QAttention', 'QLinearAdd', 'QLinearMul', 'QLinearSoftmax')


def ort_session(path, threads=1, optimized_path=None, optimization='all'):
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads.

    ``optimization``: 'all' (ONNX Runtime's default, with the Q/DQ fusions into integer
    kernels) or 'basic'; ``optimized_path`` writes the optimised graph there.
    """
    require_deploy_packages()
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimization == 'all' else
                                        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    options.log_severity_level = 3  # no warnings about unused initializers
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    warn_if_saturating(path, session.get_modelmeta().custom_metadata_map)
    return session


def optimized_op_counts(path, threads=1):
    """Operator counts of the graph ONNX Runtime runs for ``path`` (after its optimisations)."""
    import onnx
    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, 'optimized.onnx')
        ort_session(path, threads=threads, optimized_path=optimized)
        return Counter(node.op_type for node in onnx.load(optimized).graph.node)


def integer_ops(counts):
    """The integer-kernel part of :func:`optimized_op_counts`."""
    return {op: n for op, n in sorted(counts.items()) if op in INTEGER_OPS}


def run(session, images):
    """Outputs of ``session`` on a (B, 3, H, W) float tensor or array, as numpy arrays."""
    array = images.numpy() if hasattr(images, 'numpy') else images
    return session.run(None, {session.get_inputs()[0].name: array})


#: OpenVINO CPU settings under which it computes the exported quantization and nothing else: float
#: parts in f32 (on CPUs with bf16 units, AVX512-BF16 or AMX, it picks bf16 by itself: 2.5 % of
#: the logits' range of a tiny W8/A8 ViT), and no dynamic quantization of activations (by itself
#: it re-quantizes, in groups of 32, the activations of matmuls whose weights have a zero point, as
#: the uint8 + 128 weights of ``--target x86-no-vnni`` have: 2 % there)
OPENVINO_EXACT = {'INFERENCE_PRECISION_HINT': 'f32', 'DYNAMIC_QUANTIZATION_GROUP_SIZE': 0}
_openvino_logged = set()


def openvino_model(path, threads=1):
    """``path`` compiled by OpenVINO for the CPU with ``threads`` inference threads and
    :data:`OPENVINO_EXACT`: a callable that maps a (B, 3, H, W) float array to the list of outputs
    (numpy). OpenVINO reads the same Q/DQ file and runs the quantized matmuls on its own int8
    kernels. ``call.settings`` holds what was set, what OpenVINO would have chosen on this CPU by
    itself, and what the compiled model reports; both are logged once."""
    try:
        import openvino as ov
    except ImportError as err:
        raise ImportError(f'OpenVINO is not installed ({err}); install it with `pip install -e .[openvino]`') from err
    import onnx
    core = ov.Core()
    own = {key: _property(core.get_property('CPU', key)) for key in OPENVINO_EXACT}
    compiled = core.compile_model(core.read_model(path), 'CPU',
                                  {'INFERENCE_NUM_THREADS': threads, 'NUM_STREAMS': 1, **OPENVINO_EXACT})
    used = {key: _property(compiled.get_property(key)) for key in OPENVINO_EXACT}
    if used != OPENVINO_EXACT:
        raise RuntimeError(f'OpenVINO ignored the settings {OPENVINO_EXACT} (compiled with {used}): its outputs '
                           'would not be the exported quantization')
    settings = dict(set=dict(OPENVINO_EXACT), its_own_choice=own, compiled=used)
    if str(own) not in _openvino_logged:
        _openvino_logged.add(str(own))
        print_log(f"OpenVINO CPU: on this CPU it would choose {own['INFERENCE_PRECISION_HINT']} and dynamic "
                  f"quantization of activations in groups of {own['DYNAMIC_QUANTIZATION_GROUP_SIZE']} (0: none) by "
                  'itself; set to f32 and none, so that it computes the exported quantization', logger='current')
    proto = onnx.load(path, load_external_data=False)
    warn_if_saturating(path, {p.key: p.value for p in proto.metadata_props})
    request = compiled.create_infer_request()

    def call(images):
        array = images.numpy() if hasattr(images, 'numpy') else images
        request.infer({0: array})
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
    call.settings = settings
    return call


def _property(value):
    """An OpenVINO property as set: element types by their short name ('f32', 'bf16')."""
    return value.to_string() if hasattr(value, 'to_string') else value
