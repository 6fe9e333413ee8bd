"""Writing the fake-quantized student as an ONNX model in Q/DQ form.

:func:`export_onnx` runs torch's ONNX exporter (``dynamo=True``) on the model in
:func:`~.qdq.qdq_export_mode`, with a dynamic batch dimension, then stores weight codes of 4
bits or fewer as INT4 initializers where the opset allows (21 and later), so a W4 model is an
eighth of its float size, and 8-bit weight codes as the target CPU computes them exactly and
fast (:mod:`.target`: int8, or uint8 + 128 for x86 CPUs without VNNI,
:func:`unsign_saturating_weights`). What is exported depends on the task (:class:`ExportWrapper`).
"""
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log

from .qdq import DeployError, check_exportable, qdq_export_mode
from .target import META_SOURCE, META_TARGET, META_WIDE_INT8, WEIGHT_STORAGE, resolve_target

#: opsets the exporter writes and ONNX Runtime runs; INT4 initializers need 21
MIN_OPSET, INT4_OPSET, MAX_OPSET = 17, 21, 23
DEFAULT_OPSET = 21
#: int8 weight codes within this range cannot saturate x86 integer kernels without VNNI: they sum
#: two uint8 activation x int8 weight products in 16 bits (VPMADDUBSW), 2 * 255 * 64 < 2 ** 15
SATURATION_FREE_CODES = (-64, 63)
DEPLOY_EXTRA = 'pip install -e .[deploy]'


def require_deploy_packages(runtime=True):
    """Import onnx (and onnxruntime), or fail with the install command."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter)
        if runtime:
            import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError(f'ONNX export and checks need onnx, onnxscript and onnxruntime ({err}); install them with '
                          f'`{DEPLOY_EXTRA}`') from err


def check_opset(opset):
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise DeployError(f'opset {opset!r} is not supported; choose an opset from {MIN_OPSET} to {MAX_OPSET} '
                          f'({INT4_OPSET}+ stores weights of 4 bits or fewer as INT4)')
    return opset


class ExportWrapper(nn.Module):
    """The exported function of a task model: images (B, 3, H, W), normalised, to

    * classification (mmpretrain ImageClassifier / TimmClassifier, plain timm models): logits (B, C);
    * segmentation (mmseg EncoderDecoder, e.g. UPerNet): decode-head logits (B, C, H/4, W/4),
      before the resize to the input size;
    * detection (mmdet two-stage detectors, e.g. Mask R-CNN): backbone + neck features, one map per
      FPN level; proposals, RoI heads and post-processing stay in PyTorch.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        from ..tasks import build_task
        self.model = model
        self.task = build_task(model).name

    def forward(self, images):
        m = self.model
        if self.task == 'detection':
            return tuple(m.extract_feat(images))
        if self.task == 'segmentation':
            return m(images, mode='tensor')
        out = m(images, mode='tensor') if hasattr(m, 'data_preprocessor') else m(images)
        return out[0] if isinstance(out, (tuple, list)) else out

    def output_names(self, outputs):
        if isinstance(outputs, (tuple, list)):
            return [f'features_{i}' for i in range(len(outputs))]
        return ['seg_logits' if self.task == 'segmentation' else 'logits']


def export_onnx(model: nn.Module, path: str, input_size: Sequence[int] = (224, 224), batch: int = 1,
                opset: int = DEFAULT_OPSET, int4_weights: Optional[bool] = None, dynamic_batch: bool = True,
                target: str = 'auto'):
    """Export the fake-quantized ``model`` (eval mode, CPU) to ``path`` in Q/DQ form.

    Args:
        input_size: (H, W) of the images.
        batch: batch of the example input (the exported batch dimension is dynamic unless
            ``dynamic_batch`` is False).
        opset: ONNX opset, 17 to 23.
        int4_weights: store weight codes of 4 bits or fewer as INT4 (default: when the opset
            allows). False keeps them in int8 (twice the size, but ONNX Runtime's integer matmul
            kernels take int8 weights; INT4 weights are dequantized at run time).
        target: the CPU the file is for (:mod:`.target`): 'x86-vnni' and 'arm' store 8-bit
            weight codes as int8 (ONNX Runtime's fast u8 x s8 kernels), 'x86-no-vnni' as uint8
            + 128 (exact on x86 CPUs without VNNI, whose u8 x s8 kernels saturate), 'auto' (default)
            the CPU doing the export. Written into the file's metadata_props.

    Returns:
        dict: what was written (path, opset, size in bytes, target, INT4 and uint8 weight
        initializers, output names).
    """
    require_deploy_packages(runtime=False)
    check_opset(opset)
    if int4_weights and opset < INT4_OPSET:
        raise DeployError(f'INT4 weights need opset {INT4_OPSET} or later (got {opset})')
    int4_weights = opset >= INT4_OPSET if int4_weights is None else int4_weights
    target, target_source = resolve_target(target)
    check_exportable(model)
    model = model.eval()
    wrapper = ExportWrapper(model).eval()
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    example = torch.randn(batch, 3, h, w)
    with torch.no_grad(), qdq_export_mode(model):
        names = wrapper.output_names(wrapper(example))
        dynamic = ({0: torch.export.Dim('batch', min=1, max=4096)},) if dynamic_batch else None
        program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
                                    input_names=['images'], output_names=names, verbose=False)
    proto = program.model_proto
    packed = pack_int4_weights(proto) if int4_weights else 0
    unsigned = unsign_saturating_weights(proto) if WEIGHT_STORAGE[target] == 'uint8+128' else 0
    wide = sum(1 for _ in _wide_int8_weights(proto))
    _set_metadata(proto, {META_TARGET: target, META_SOURCE: target_source, META_WIDE_INT8: str(wide)})
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    import onnx
    onnx.save(proto, path)
    print_log(f'ONNX export for {target} ({target_source}): 8-bit weight codes as {WEIGHT_STORAGE[target]}',
              logger='current')
    return dict(path=path, opset=opset, bytes=osp.getsize(path), target=target, target_source=target_source,
                int4_initializers=packed, uint8_weight_initializers=unsigned, int8_weights_beyond_64=wide,
                outputs=names, input_size=[h, w], dynamic_batch=dynamic_batch)


def pack_int4_weights(proto) -> int:
    """Store every int8 weight initializer read by a DequantizeLinear whose codes lie in -8..7
    (weights quantized to 4 bits or fewer) as INT4, its zero point too; returns how many."""
    from onnx import numpy_helper
    inits = {t.name: t for t in proto.graph.initializer}
    packed = 0
    for node, codes in _int8_weight_dequantizers(proto, inits):
        values = numpy_helper.to_array(codes)
        if values.size == 0 or values.min() < -8 or values.max() > 7:
            continue
        codes.CopyFrom(_int4_tensor(codes.name, values))
        if len(node.input) > 2 and node.input[2]:
            # a zero point of its own: the exporter may share one constant between many nodes
            zero = numpy_helper.to_array(inits[node.input[2]])
            name = f'{codes.name}_zero_point_int4'
            proto.graph.initializer.append(_int4_tensor(name, zero))
            node.input[2] = name
        packed += 1
    _drop_unused_initializers(proto)  # the int8 zero points the INT4 ones replaced
    return packed


def unsign_saturating_weights(proto) -> int:
    """Store every int8 weight initializer read by a DequantizeLinear with a code outside
    :data:`SATURATION_FREE_CODES` (8-bit weights) as uint8 codes + 128 with zero point 128: the
    same dequantized values, but ONNX Runtime then fuses the matmul into its uint8 x uint8
    kernels, which do not saturate; returns how many."""
    from onnx import numpy_helper
    unsigned = 0
    for node, codes, values, zero_shape in list(_wide_int8_weights(proto)):
        codes.CopyFrom(numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8), codes.name))
        name = f'{codes.name}_zero_point_uint8'
        proto.graph.initializer.append(numpy_helper.from_array(np.full(zero_shape, 128, np.uint8), name))
        while len(node.input) < 3:
            node.input.append('')
        node.input[2] = name
        unsigned += 1
    _drop_unused_initializers(proto)  # the int8 zero points the uint8 ones replaced
    return unsigned


def _wide_int8_weights(proto):
    """(DequantizeLinear, codes initializer, codes, zero point shape) of every symmetric int8
    weight with a code outside :data:`SATURATION_FREE_CODES`: those u8 x s8 kernels without
    VNNI can saturate on."""
    from onnx import numpy_helper
    inits = {t.name: t for t in proto.graph.initializer}
    low, high = SATURATION_FREE_CODES
    for node, codes in _int8_weight_dequantizers(proto, inits):
        values = numpy_helper.to_array(codes)
        if values.size == 0 or (values.min() >= low and values.max() <= high):
            continue
        has_zero = len(node.input) > 2 and node.input[2]
        zero = numpy_helper.to_array(inits[node.input[2]]) if has_zero else \
            np.zeros(numpy_helper.to_array(inits[node.input[1]]).shape, np.int8)
        if np.any(zero != 0):  # the exporter writes symmetric weights; anything else stays as it is
            continue
        yield node, codes, values, zero.shape


def _set_metadata(proto, entries):
    for key, value in entries.items():
        for prop in [p for p in proto.metadata_props if p.key == key]:
            proto.metadata_props.remove(prop)
        proto.metadata_props.add(key=key, value=value)


def _int8_weight_dequantizers(proto, inits):
    """(DequantizeLinear node, its int8 codes initializer) of every constant int8 weight."""
    import onnx
    for node in proto.graph.node:
        if node.op_type == 'DequantizeLinear' and node.input[0] in inits:
            codes = inits[node.input[0]]
            if codes.data_type == onnx.TensorProto.INT8:
                yield node, codes


def _drop_unused_initializers(proto):
    used = {name for node in proto.graph.node for name in node.input}
    for tensor in [t for t in proto.graph.initializer if t.name not in used]:
        proto.graph.initializer.remove(tensor)


def _int4_tensor(name, array):
    """An INT4 initializer, two values per byte (raw data)."""
    import ml_dtypes
    from onnx import numpy_helper
    return numpy_helper.from_array(np.asarray(array).astype(np.int8).astype(ml_dtypes.int4), name)
