"""L_IHC's global-SSIM path as one C++ kernel on CPU (``csrc/ihc_cpu.cpp``).

On a small model the eager PyTorch path spends most of its time in many passes over the
(B', Q, H, K) maps and small ops on the (B', Q, H, H) statistics; the kernel takes one
(sequence, query) block at a time in cache and writes the value and the gradient in one pass
(benchmarks/results/README.md, "IHC kernel"). Same arithmetic, fp32, tested against the PyTorch
path. It is compiled on first use by torch's extension loader (about 30 s, cached in
``~/.cache/torch_extensions``); without a working compiler the PyTorch path runs, with one warning.
"""
import os.path as osp
import platform
import warnings

import torch

_SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'ihc_cpu.cpp')
_state = {}  # 'module' once built, 'error' once a build failed, 'variant' once tried


def build_variant():
    """(extension name, compiler flags): 8-float AVX2 + FMA vectors on x86 CPUs that have them
    (every x86 CPU since about 2015), 4-float SSE / NEON vectors elsewhere (the source picks the
    width from the target; a width wider than the target's is emulated and 10x slower)."""
    if platform.machine().lower() in ('x86_64', 'amd64') and \
            torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512'):
        return 'mimiq_ihc_cpu_avx2', ['-O3', '-mavx2', '-mfma']
    return 'mimiq_ihc_cpu', ['-O3']


def load_kernel(required=False):
    """The compiled extension, or None where it cannot be built (``required``: raise instead)."""
    if 'module' not in _state and 'error' not in _state:
        try:
            from mmengine.logging import print_log
            from torch.utils.cpp_extension import load
            print_log('loading the C++ kernel of L_IHC (compiled once, about 30 s, then cached in '
                      '~/.cache/torch_extensions)', logger='current')
            name, flags = _state['variant'] = build_variant()
            _state['module'] = load(name=name, sources=[_SOURCE], extra_cflags=flags)
        except Exception as err:  # noqa: BLE001  (no compiler, no headers: the PyTorch path works everywhere)
            _state['error'] = f'{type(err).__name__}: {err}'
            if not required:
                warnings.warn(f'the C++ kernel of L_IHC could not be built ({_state["error"][:300]}); using the '
                              "PyTorch path (set ihc=dict(kernel='torch') to skip the attempt)")
    if 'module' in _state:
        return _state['module']
    if required:
        raise RuntimeError(f"ihc kernel='cpp' needs the C++ kernel, which could not be built: {_state['error']}; "
                           "install a C++ compiler (g++) or use kernel='auto' / 'torch'")
    return None


def kernel_state() -> str:
    """'built (<extension>, <W> lanes)' (loaded in this process), 'unavailable' (its build failed) or 'not used'."""
    if 'module' in _state:
        return f"built ({_state['variant'][0]}, {_state['module'].lanes()} lanes)"
    return 'unavailable' if 'error' in _state else 'not used'


def kernel_applies(scores) -> bool:
    """The kernel takes float32 CPU scores (the PyTorch path does the rest: GPU, bf16/fp16)."""
    return scores.device.type == 'cpu' and scores.dtype == torch.float32


class IHCLayerCPU(torch.autograd.Function):
    """Mean over (sequence, spatial query) of 1 - D_q for one attention call's scores.

    Args (forward):
        scores (Tensor): (B', H, N, N) float32 CPU, pre-softmax.
        prefix (int): class/distillation tokens before the spatial ones (dropped as query and key).
        c1, c2, eps (float): SSIM constants and the min-max guard.
        squared (bool): f = SSIM² (else |SSIM|).

    The gradient is computed with the value (one pass) when ``scores`` requires it.
    """

    @staticmethod
    def forward(ctx, scores, prefix, c1, c2, eps, squared):
        losses, grad = load_kernel(required=True).ihc_layer(
            scores.detach().contiguous(), int(prefix), float(c1), float(c2), float(eps), bool(squared),
            bool(ctx.needs_input_grad[0]))
        ctx.count = losses.numel()
        ctx.save_for_backward(grad if ctx.needs_input_grad[0] else None)
        return losses.mean()

    @staticmethod
    def backward(ctx, grad_output):
        grad, = ctx.saved_tensors
        # Scaled in place: one pass less over the (B', H, N, N) gradient. A second backward through
        # the same graph (retain_graph) is refused by autograd's version check of saved tensors.
        return grad.mul_(grad_output / ctx.count), None, None, None, None, None
