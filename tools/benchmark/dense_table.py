"""Data-free quantization of detectors and segmentors: the paper's Table 2 in miniature.

Mask R-CNN and UPerNet teachers trained on digits pasted on CIFAR-10 photos
(benchmarks/dense/README.md) are quantized by Gaussian-noise PTQ, base synthesis + task KD,
MimiQ and real-data fine-tuning at W8/A8, W4/A8 and W4/A4, and measured with the configs' own
evaluators (COCO box/mask mAP, mIoU) on the test split. The driver is mimiq_mm.benchmark.table
(resumable units, --time-budget, --only, --pack); this file names its recipe,
configs/dense_bench/benchmark.py.

Examples:
  python tools/benchmark/dense_table.py --scale cpu-2core --work-dir work_dirs/benchmark/dense_cpu-2core
  python tools/benchmark/dense_table.py --scale cpu-2core --teachers maskrcnn --only 'maskrcnn/*/w4a4/*'
  python tools/benchmark/dense_table.py --scale cpu-2core --stages report --out benchmarks/results/dense
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mimiq_mm.benchmark.table import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(default_recipe='configs/dense_bench/benchmark.py', tool='tools/benchmark/dense_table.py',
                  description=__doc__))
