"""Data-free quantization of detectors and segmentors: the paper's Table 2 in miniature.

Mask R-CNN and UPerNet teachers trained on digits pasted on CIFAR-10 photos
(benchmarks/dense/README.md) are quantized by Gaussian-noise PTQ, base synthesis + task KD,
MimiQ and real-data fine-tuning at W8/A8, W4/A8 and W4/A4, and measured with the configs' own
evaluators (COCO box/mask mAP, mIoU) on the test split. The driver is benchmarks.table
(resumable units, --time-budget, --only, --pack); this module names its recipe,
configs/dense_bench/benchmark.py.

Examples (from the repository root):
  python -m benchmarks.dense_table --scale cpu-2core --work-dir work_dirs/benchmark/dense_cpu-2core
  python -m benchmarks.dense_table --scale cpu-2core --teachers maskrcnn --only 'maskrcnn/*/w4a4/*'
  python -m benchmarks.dense_table --scale cpu-2core --stages report --out benchmarks/results/dense
"""
import sys

from .table import main


def run(argv=None):
    return main(argv, default_recipe='configs/dense_bench/benchmark.py', tool='benchmarks.dense_table',
                description=__doc__)


if __name__ == '__main__':
    sys.exit(run())
