"""Does the exported model compute what the fake-quantized student computes?

A runtime rounds a value that lies within float32 rounding of a tie between two levels the
other way than PyTorch whenever its arithmetic differs by an ulp (``x / scale`` or
``x * (1 / scale)``, another summation order, FMA, another CPU's kernels), and one step at one
quantizer moves everything after it. How far the outputs may move that way depends on the model
and the images, so the tolerance is measured on them, not fixed (:func:`rounding_envelope`):

* the PyTorch student runs with the input of every activation quantizer moved at random by up
  to :data:`JITTER` of its magnitude (:func:`jittered_quantizers`), far more than float32
  arithmetic moves it, so that near-ties flip both ways, exact ties included; the tolerance is
  :data:`MARGIN` times the largest output deviation of those runs, plus float32 rounding outside
  the quantizers (:data:`FLOAT32_NOISE`);
* an image none of whose values comes that near a rounding boundary (:func:`images_near_ties`)
  may not change beyond float32 noise, and a top-1 (a pixel's class) may change only on an image
  with a near-tie, where its margin is within twice the tolerance or a jittered run changes it.

:func:`compare_outputs` judges a runtime (ONNX Runtime on a file, or any callable, e.g. OpenVINO)
by it; :func:`compare_quantizers` compares every activation quantizer of the file in ONNX Runtime
with PyTorch on the same input, in units of its step: a value may differ by one step, and only at
a near-tie; :func:`check_parity` does both on every batch, the verdict of
``tools/deploy/export_onnx.py``.
"""
import os
import tempfile
from contextlib import contextmanager

import numpy as np
import torch

from ..quant import ActQuantizer
from .onnx_export import ExportWrapper
from .runtime import ort_session, run

#: every value entering an activation quantizer moves by up to this fraction of max(|value|, rms
#: of its tensor): ~84 float32 ulps. The float32 error of a matmul output of 384 to 4096 terms
#: (against float64) stayed under a quarter of that; it scales with the terms, not the result,
#: hence the rms floor
JITTER = 1e-5
#: jittered runs of the student per batch, in antithetic pairs (the second run of a pair moves
#: every value by the opposite amount)
JITTER_RUNS = 8
#: the tolerance is this multiple of the largest deviation of the envelope's runs: a runtime flips
#: only the nearest of the ties they flip; runs with 10x less jitter stayed within 1x
MARGIN = 2.0
#: float32 rounding outside the quantizers (the last layer's float sums, residual adds, another
#: LayerNorm kernel), as a fraction of the largest output: 2^-14, 1024 unit roundoffs (a dot product
#: of K terms is off by ~sqrt(K), at most K, of them relative to its terms); bf16 moves ~2^-8
FLOAT32_NOISE = 2.0 ** -14


def _reach(x, jitter):
    """How far a value of ``x`` may move: ``jitter * max(|x|, rms(x))``."""
    return torch.maximum(x.abs(), x.square().mean().sqrt()).mul_(abs(jitter))


@contextmanager
def _hooked_quantizers(model, hook):
    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, ActQuantizer) and m.enabled]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def jittered_quantizers(model, jitter=JITTER, generator=None):
    """A context in which every enabled activation quantizer of ``model`` quantizes
    ``x + u * reach(x)`` (:func:`_reach`; ``u`` uniform in (-1, 1) per element, drawn from
    ``generator``; a negative ``jitter`` moves every value the other way) instead of ``x``."""
    def move(module, args):
        x = args[0]
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).mul_(2).sub_(1)
        return (x + noise.mul_(_reach(x, jitter)).mul_(1 if jitter >= 0 else -1),) + tuple(args[1:])
    return _hooked_quantizers(model, move)


def _near_tie(module, x, jitter):
    """Where a value of ``x`` lies within :func:`_reach` of a boundary between two levels of the
    activation quantizer ``module``."""
    step, offset = (float(v.detach()) for v in module.qparams())
    x = x.double()  # the level itself exact to far below the reach
    level = x / step + offset
    below = level.floor()
    inside = (below >= module.q_min) & (below < module.q_max)  # beyond the range both sides clamp alike
    return inside & ((level - below - 0.5).abs().mul_(step) <= _reach(x, jitter))


def _torch_outputs(wrapper, images):
    with torch.no_grad():
        out = wrapper(images)
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _per_image_diff(outputs, reference):
    """Largest absolute difference per image (B,) over all outputs."""
    return np.max([np.abs(a - b).reshape(len(a), -1).max(1) for a, b in zip(outputs, reference)], axis=0)


def images_near_ties(wrapper, images, jitter=JITTER):
    """bool (B,): whether some activation quantizer sees a value of the image within
    :func:`_reach` of a rounding boundary. One image at a time, so that every value belongs to
    it. An image without such a value is computed identically by any arithmetic that stays within
    the reach, and so is everything after it."""
    found = []

    def look(module, args):
        found[-1] = found[-1] or bool(_near_tie(module, args[0], jitter).any())
    with _hooked_quantizers(wrapper.model, look):
        for image in images:
            found.append(False)
            _torch_outputs(wrapper, image[None])
    return np.array(found)


def rounding_envelope(wrapper, images, reference, runs=JITTER_RUNS, jitter=JITTER, generator=None):
    """The student's own sensitivity to rounding on ``images``, against ``reference`` (its
    outputs): ``runs`` jittered runs (:func:`jittered_quantizers`, antithetic pairs).

    Returns:
        tuple: largest deviation per image (B,); :func:`images_near_ties`; bool mask (B, ...) of
        the argmax of the first output that some run changed (None unless classification or
        segmentation).
    """
    generator = generator or torch.Generator().manual_seed(0)
    deviation, moved = np.zeros(len(reference[0])), None
    for index in range(runs):
        if index % 2 == 0:
            state = generator.get_state()
        else:  # the same draws, the other way
            generator.set_state(state)
        with jittered_quantizers(wrapper.model, jitter if index % 2 == 0 else -jitter, generator):
            outputs = _torch_outputs(wrapper, images)
        deviation = np.maximum(deviation, _per_image_diff(outputs, reference))
        if wrapper.task in ('classification', 'segmentation'):
            changed = outputs[0].argmax(1) != reference[0].argmax(1)
            moved = changed if moved is None else moved | changed
    return deviation, images_near_ties(wrapper, images, jitter), moved


def _top2_margin(logits):
    """Top-1 minus top-2 along the class axis (1)."""
    top2 = np.partition(logits, -2, axis=1)
    return top2[:, -1] - top2[:, -2]


def compare_outputs(model, runtime, batches, threads=1, runs=JITTER_RUNS, jitter=JITTER, seed=0):
    """Compare a runtime with the PyTorch student on an iterable of image batches (B, 3, H, W),
    normalised as the model expects, judged by the student's :func:`rounding_envelope`.

    Args:
        runtime: an ONNX file (run by ONNX Runtime with ``threads`` threads) or a callable that
            maps a batch to the list of outputs (e.g. :func:`.runtime.openvino_model`).

    Returns:
        dict: ``images``; ``max_abs_diff`` and ``max_rel_diff`` (to the largest PyTorch output);
        ``envelope_max_abs_diff``, ``tolerance`` (:data:`MARGIN` times it plus
        :data:`FLOAT32_NOISE`) and ``tolerance_rel``; ``images_near_ties`` and
        ``images_changed_without_near_ties`` (moved beyond float32 noise by the runtime though no
        value of theirs is near a tie); for classification (segmentation) ``top1_agreement``
        (``pixel_agreement``), ``top1_unstable`` (images, or pixels, whose top-1 may change) and
        ``top1_mismatches_unexplained``; ``passed``: within the tolerance and none of either.
    """
    wrapper = ExportWrapper(model.eval()).eval()
    if not callable(runtime):
        session = ort_session(runtime, threads=threads)
        runtime = lambda images: run(session, images)  # noqa: E731
    generator = torch.Generator().manual_seed(seed)
    max_ref, diffs, deviations, near_ties, agree, margins, moved, per_image = 0.0, [], [], [], [], [], [], []
    for images in batches:
        ours = _torch_outputs(wrapper, images)
        theirs = runtime(images)
        max_ref = max([max_ref] + [float(np.abs(a).max()) for a in ours])
        diffs.append(_per_image_diff(theirs, ours))
        deviation, near, batch_moved = rounding_envelope(wrapper, images, ours, runs, jitter, generator)
        deviations.append(deviation)
        near_ties.append(near)
        if batch_moved is not None:
            agree.append((ours[0].argmax(1) == theirs[0].argmax(1)).reshape(-1))
            margins.append(_top2_margin(ours[0]).reshape(-1))
            moved.append(batch_moved.reshape(-1))
            per_image.append(batch_moved.reshape(len(images), -1).shape[1])
    diffs, deviations, near_ties = np.concatenate(diffs), np.concatenate(deviations), np.concatenate(near_ties)
    noise = FLOAT32_NOISE * max_ref
    tolerance = MARGIN * float(deviations.max()) + noise
    ref = max(max_ref, 1e-12)
    result = dict(images=len(diffs), max_abs_diff=float(diffs.max()), max_rel_diff=float(diffs.max()) / ref,
                  envelope_max_abs_diff=float(deviations.max()), tolerance=tolerance,
                  tolerance_rel=tolerance / ref, images_near_ties=int(near_ties.sum()),
                  images_changed_without_near_ties=int(((diffs > noise) & ~near_ties).sum()))
    passed = result['max_abs_diff'] <= tolerance and result['images_changed_without_near_ties'] == 0
    if agree:
        agree, margins, moved = np.concatenate(agree), np.concatenate(margins), np.concatenate(moved)
        tied = np.repeat(near_ties, per_image[0])  # per pixel for segmentation
        unstable = moved | (tied & (margins <= 2 * tolerance))
        key = 'top1' if wrapper.task == 'classification' else 'pixel'
        result.update({f'{key}_agreement': float(agree.mean()), f'{key}_unstable': int(unstable.sum()),
                       f'{key}_mismatches_unexplained': int((~agree & ~unstable).sum())})
        passed = passed and result[f'{key}_mismatches_unexplained'] == 0
    result['passed'] = bool(passed)
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


def compare_quantizers(model, onnx_path, batches, threads=1, jitter=JITTER):
    """Every activation quantizer of ``onnx_path`` in ONNX Runtime against PyTorch, in units of
    its step, over all ``batches``. Per quantizer:

    * ``max_step_diff``, ``differing`` (fraction of values) and ``beyond_near_ties`` (values):
      the PyTorch quantizer applied to the very tensor that entered the quantizer in ONNX
      Runtime, against ONNX Runtime's output: the rounding of that quantizer alone, which may
      differ by one step at a near-tie (:func:`_near_tie`) and nowhere else;
    * ``propagated_step_diff``: the two runs end to end, where earlier ties and summation order
      move the inputs of later quantizers too.

    ONNX Runtime runs the graph with basic optimisations only, so that the probed tensors exist;
    the integer kernels are covered by :func:`compare_outputs`.
    """
    serialized, probes = _probe_model(onnx_path)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'probe.onnx')
        with open(path, 'wb') as f:
            f.write(serialized)
        session = ort_session(path, threads=threads, optimization='basic')
    names = [o.name for o in session.get_outputs()]
    rows = None
    for images in batches:
        ours = _quantizer_calls(model, images)
        if len(probes) != len(ours):
            raise RuntimeError(f'{len(probes)} quantize/dequantize pairs in {onnx_path} but {len(ours)} quantizer '
                               'calls in PyTorch: the model and the exported file do not match')
        outputs = dict(zip(names, run(session, images)))
        rows = rows or [dict(name=name, step=float(q.qparams()[0].detach()), values=0, differing=0, beyond_near_ties=0,
                             max_step_diff=0.0, propagated_step_diff=0.0) for name, q, _ in ours]
        for row, (name, quantizer, out), (raw, dequantized, q_scale, dq_scale) in zip(rows, ours, probes):
            step = row['step']
            if not np.isclose(q_scale, step, rtol=1e-6, atol=0):
                raise RuntimeError(f'quantizer {name} (step {step}) does not match the exported quantization (scale '
                                   f'{q_scale}): the model and the exported file do not match')
            raw_values = outputs[raw].reshape(out.shape)
            theirs = outputs[dequantized].reshape(out.shape) / dq_scale
            with torch.no_grad():
                alone = quantizer(torch.from_numpy(raw_values)).numpy() / step
            differs = np.abs(theirs - alone) > 0.5
            row['values'] += differs.size
            row['differing'] += int(differs.sum())
            near = _near_tie(quantizer, torch.from_numpy(raw_values), jitter).numpy()
            row['beyond_near_ties'] += int((differs & ~near).sum())
            row['max_step_diff'] = max(row['max_step_diff'], float(np.abs(theirs - alone).max()))
            row['propagated_step_diff'] = max(row['propagated_step_diff'],
                                              float(np.abs(theirs - out.numpy() / step).max()))
    for row in rows or []:
        row['differing'] /= max(row['values'], 1)
    return rows or []


def check_parity(model, onnx_path, batches, threads=1, quantizer_batches=None):
    """:func:`compare_outputs` and :func:`compare_quantizers` on every batch (the quantizers on
    the first ``quantizer_batches`` if given); ``passed`` when the outputs lie within the
    envelope, the stable top-1 agree and no quantizer differs beyond a near-tie or by more than
    one step."""
    batches = list(batches)
    result = compare_outputs(model, onnx_path, batches, threads)
    probed = batches if quantizer_batches is None else batches[:quantizer_batches]
    rows = compare_quantizers(model, onnx_path, probed, threads)
    quantizers_passed = all(r['max_step_diff'] <= 1.0 + 1e-3 and r['beyond_near_ties'] == 0 for r in rows)
    result.update(outputs_passed=result['passed'], quantizers=len(rows), quantizer_batches=len(probed),
                  quantizer_images=sum(int(b.shape[0]) for b in probed),
                  max_quantizer_step_diff=max((r['max_step_diff'] for r in rows), default=0.0),
                  quantizers_with_differences=sum(r['differing'] > 0 for r in rows),
                  quantizer_values_beyond_near_ties=sum(r['beyond_near_ties'] for r in rows),
                  quantizers_passed=quantizers_passed, passed=result['passed'] and quantizers_passed)
    return result
