"""Does the exported model compute what the fake-quantized student computes?

* :func:`compare_outputs`: ONNX Runtime (optimised graph, integer kernels) against the PyTorch
  student on the same images: top-1 agreement, largest output difference.
* :func:`compare_quantizers`: every activation quantizer's output in ONNX Runtime against
  PyTorch, in units of that quantizer's step: rounding ties (ONNX rounds ``x / step`` before
  adding the zero point) and summation order may move a value by one step, never more.
"""
import numpy as np
import torch

from ..quant import ActQuantizer
from .onnx_export import ExportWrapper
from .runtime import ort_session, run


def _torch_outputs(wrapper, images):
    with torch.no_grad():
        out = wrapper(images)
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def compare_outputs(model, onnx_path, batches, threads=1):
    """Compare on an iterable of image batches (B, 3, H, W), normalised as the model expects.

    Returns:
        dict: ``images``, ``max_abs_diff`` and ``max_rel_diff`` (to the largest PyTorch output)
        over all outputs, and ``top1_agreement`` (classification logits) or ``pixel_agreement``
        (segmentation logits, the argmax over classes per pixel).
    """
    wrapper = ExportWrapper(model.eval()).eval()
    session = ort_session(onnx_path, threads=threads)
    count, max_abs, max_ref, agree = 0, 0.0, 0.0, []
    for images in batches:
        ours = _torch_outputs(wrapper, images)
        theirs = run(session, images)
        for a, b in zip(ours, theirs):
            max_abs = max(max_abs, float(np.abs(a - b).max()))
            max_ref = max(max_ref, float(np.abs(a).max()))
        if wrapper.task in ('classification', 'segmentation'):
            agree.append((ours[0].argmax(1) == theirs[0].argmax(1)).reshape(-1))
        count += images.shape[0]
    result = dict(images=count, max_abs_diff=max_abs, max_rel_diff=max_abs / max(max_ref, 1e-12))
    if agree:
        key = 'top1_agreement' if wrapper.task == 'classification' else 'pixel_agreement'
        result[key] = float(np.concatenate(agree).mean())
    return result


def _quantizer_calls(model, images):
    """(name, module, output) of every activation quantizer call, in call order; a quantizer
    called again on the same input (mmseg's packed q/k/v projection) counts once, as the
    exporter writes one QuantizeLinear for it."""
    calls, handles = [], []
    for name, m in model.named_modules():
        if isinstance(m, ActQuantizer):
            handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: calls.append((name, mod, out.clone()))))
    try:
        _torch_outputs(ExportWrapper(model.eval()).eval(), images)
    finally:
        for h in handles:
            h.remove()
    unique = []
    for call in calls:
        if unique and unique[-1][1] is call[1] and torch.equal(unique[-1][2], call[2]):
            continue
        unique.append(call)
    return unique


def _probe_model(onnx_path):
    """The model with, for every activation quantizer (QuantizeLinear → DequantizeLinear), the
    dequantized output and the float input (before our Clip) as extra graph outputs; returns
    (serialized model, [(input name, output name, Q scale, DQ scale)])."""
    import onnx
    from onnx import numpy_helper
    proto = onnx.load(onnx_path)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    probes, exposed = [], set()
    for node in proto.graph.node:
        quantize = producers.get(node.input[0])
        if node.op_type != 'DequantizeLinear' or quantize is None or quantize.op_type != 'QuantizeLinear':
            continue
        raw = quantize.input[0]
        clip = producers.get(raw)
        if clip is not None and clip.op_type == 'Clip':
            raw = clip.input[0]
        probes.append((raw, node.output[0], float(inits[quantize.input[1]]), float(inits[node.input[1]])))
        for name in (raw, node.output[0]):
            if name not in exposed:
                exposed.add(name)
                proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return proto.SerializeToString(), probes


def compare_quantizers(model, onnx_path, images, threads=1):
    """Every activation quantizer, in ONNX Runtime against PyTorch, in units of its step.

    * ``max_step_diff``/``differing``: the PyTorch quantizer applied to the very tensor that
      entered the quantizer in ONNX Runtime, against ONNX Runtime's output: the rounding of that
      quantizer alone (at most one step, at ties);
    * ``propagated_step_diff``: the two runs end to end, where earlier ties and summation order
      move the inputs of later quantizers too.

    ONNX Runtime runs the graph with basic optimisations only, so that the probed tensors exist;
    the integer kernels are covered by :func:`compare_outputs`.
    """
    import os
    import tempfile
    ours = _quantizer_calls(model, images)
    serialized, probes = _probe_model(onnx_path)
    if len(probes) != len(ours):
        raise RuntimeError(f'{len(probes)} quantize/dequantize pairs in {onnx_path} but {len(ours)} quantizer calls '
                           'in PyTorch: the model and the exported file do not match')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'probe.onnx')
        with open(path, 'wb') as f:
            f.write(serialized)
        session = ort_session(path, threads=threads, optimization='basic')
        outputs = dict(zip([o.name for o in session.get_outputs()], run(session, images)))
    rows = []
    for (name, quantizer, out), (raw, dequantized, q_scale, dq_scale) in zip(ours, probes):
        step = float(quantizer.qparams()[0].detach())
        if not np.isclose(q_scale, step, rtol=1e-6, atol=0):
            raise RuntimeError(f'quantizer {name} (step {step}) does not match the exported quantization (scale '
                               f'{q_scale}): the model and the exported file do not match')
        theirs = outputs[dequantized].reshape(out.shape) / dq_scale
        with torch.no_grad():
            alone = quantizer(torch.from_numpy(outputs[raw]).reshape(out.shape)).numpy() / step
        diff = np.abs(theirs - alone)
        rows.append(dict(name=name, step=step, max_step_diff=float(diff.max()),
                         differing=float((diff > 0.5).mean()),
                         propagated_step_diff=float(np.abs(theirs - out.numpy() / step).max())))
    return rows
