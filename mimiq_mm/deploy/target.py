"""Which CPU an exported file is for: how its 8-bit weight codes are stored.

ONNX Runtime (and OpenVINO) multiply uint8 activations by int8 weights. On x86 CPUs with VNNI
(AVX512-VNNI, AVX-VNNI, AMX) and on ARM (dot-product instructions) the products are summed in 32
bits, exactly; x86 CPUs without VNNI add two products in 16 bits with saturation (VPMADDUBSW),
and 8-bit weights overflow it (2 · 255 · 127 > 2¹⁵). Targets:

* ``x86-vnni`` and ``arm``: 8-bit weight codes as int8, the fast kernels (u8 × s8);
* ``x86-no-vnni``: as uint8 codes + 128 with zero point 128, the same values, which ONNX
  Runtime runs on its u8 × u8 kernels: exact on every CPU, but no faster than float on VNNI CPUs;
* ``auto``: the CPU doing the export.

Weights of 7 bits or fewer cannot saturate and are stored the same way for every target. The
target is written into the file's metadata, so that :mod:`.runtime` can warn when a file made
for VNNI runs on a CPU that would saturate.
"""
import warnings

from ..utils.environment import cpu_features
from .qdq import DeployError

#: how each target stores 8-bit weight codes
WEIGHT_STORAGE = {'x86-vnni': 'int8', 'x86-no-vnni': 'uint8+128', 'arm': 'int8'}
TARGETS = tuple(WEIGHT_STORAGE)
#: the target that computes exactly everywhere: what ``auto`` picks where it cannot tell
SAFE_TARGET = 'x86-no-vnni'
#: metadata_props keys of an exported file
META_TARGET, META_SOURCE, META_WIDE_INT8 = 'mimiq_mm.target', 'mimiq_mm.target_source', 'mimiq_mm.wide_int8_weights'
ARM_MACHINES = ('aarch64', 'arm64', 'armv8l', 'armv7l')
_warned = set()


def detect_target(features=None):
    """(target, reason) for the CPU described by ``features`` (:func:`cpu_features`: this one)."""
    features = cpu_features() if features is None else features
    name = features.get('model') or features.get('arch') or 'unknown CPU'
    if features.get('arch') in ARM_MACHINES:
        return 'arm', f'{name} (ARM)'
    if features.get('vnni') is None:
        return SAFE_TARGET, f'{name}: CPU features unknown, so the format exact on every CPU'
    if features['vnni']:
        kinds = [k for k in ('amx', 'avx512') if features.get(k)]
        return 'x86-vnni', f'{name} has VNNI' + (f" ({', '.join(kinds)})" if kinds else '')
    return 'x86-no-vnni', f'{name} has no VNNI'


def resolve_target(target='auto'):
    """(target, how it was chosen) for a ``--target`` value."""
    if target == 'auto':
        found, reason = detect_target()
        return found, f'auto: {reason}'
    if target not in WEIGHT_STORAGE:
        raise DeployError(f'unknown target {target!r}: choose auto, {", ".join(TARGETS)}')
    return target, 'chosen'


def saturation_warning(metadata, features=None):
    """The warning for a file with these metadata_props on this CPU, or None: a file that holds
    int8 codes of 8-bit weights, run where u8 × s8 sums saturate (x86 without VNNI)."""
    if int(metadata.get(META_WIDE_INT8, 0) or 0) == 0:
        return None
    features = cpu_features() if features is None else features
    if features.get('arch') in ARM_MACHINES or features.get('vnni') is not False:
        return None
    return (f"this model was exported for {metadata.get(META_TARGET, 'x86-vnni')} (8-bit weights as int8), but "
            f"{features.get('model') or 'this CPU'} has no VNNI: ONNX Runtime's and OpenVINO's int8 kernels may "
            'saturate here and move the outputs by several percent. Re-export it with --target x86-no-vnni '
            "(export_onnx(..., target='x86-no-vnni'))")


def warn_if_saturating(path, metadata):
    """Warn once per file (see :func:`saturation_warning`)."""
    message = saturation_warning(metadata)
    if message and path not in _warned:
        _warned.add(path)
        warnings.warn(f'{path}: {message}', RuntimeWarning, stacklevel=3)
