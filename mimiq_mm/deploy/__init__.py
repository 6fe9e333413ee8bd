"""Deployment: the quantized student as a real integer model (ONNX Q/DQ, run by ONNX Runtime).

Needs the ``deploy`` extra (``pip install -e .[deploy]``: onnx, onnxscript, onnxruntime).
"""
from .onnx_export import (DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, SATURATION_FREE_CODES, ExportWrapper, export_onnx,
                          pack_int4_weights, require_deploy_packages, unsign_saturating_weights)
from .qdq import ActQDQ, DeployError, act_qdq, check_exportable, qdq_export_mode, weight_codes
from .target import TARGETS, WEIGHT_STORAGE, detect_target

__all__ = ['DEFAULT_OPSET', 'MAX_OPSET', 'MIN_OPSET', 'SATURATION_FREE_CODES', 'TARGETS', 'WEIGHT_STORAGE', 'ActQDQ',
           'DeployError', 'ExportWrapper', 'act_qdq', 'check_exportable', 'detect_target', 'export_onnx',
           'pack_int4_weights', 'qdq_export_mode', 'require_deploy_packages', 'unsign_saturating_weights',
           'weight_codes']
