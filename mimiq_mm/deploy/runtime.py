"""Running exported models in ONNX Runtime (CPU): sessions, the optimised graph's operators."""
import os
import tempfile
from collections import Counter

from .onnx_export import require_deploy_packages

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
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


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


def openvino_model(path, threads=1):
    """``path`` compiled by OpenVINO for the CPU with ``threads`` inference threads: a callable
    that maps a (B, 3, H, W) float array to the list of outputs (numpy). OpenVINO reads the same
    Q/DQ file and runs the quantized matmuls on its own int8 kernels. Float parts run in f32:
    on CPUs with bf16 units OpenVINO would otherwise choose bf16 and move the outputs by ~1 %."""
    try:
        import openvino as ov
    except ImportError as err:
        raise ImportError(f'OpenVINO is not installed ({err}); install it with `pip install -e .[openvino]`') from err
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), 'CPU',
                                  {'INFERENCE_NUM_THREADS': threads, 'NUM_STREAMS': 1,
                                   'INFERENCE_PRECISION_HINT': 'f32'})
    request = compiled.create_infer_request()

    def call(images):
        array = images.numpy() if hasattr(images, 'numpy') else images
        request.infer({0: array})
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
    return call
