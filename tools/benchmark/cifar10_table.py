"""Data-free quantization benchmark: a results table of MimiQ against its baselines on an
ImageFolder classification dataset (by default CIFAR-10, /work/shared/datasets/cifar10-jpeg.tar.gz).

For each teacher of the scale (configs/cifar10/benchmark.py), the driver

  1. trains the full-precision teacher on the train split only           (stage `teacher`)
  2. makes each synthetic set the rows need, never reading a train image  (stage `synth`)
  3. quantizes the teacher for every row, bit-width and seed: PTQ or QAT
     on a synthetic set, or the same QAT on the real train split          (stage `quant`)
  4. evaluates on the test split                                          (stage `eval`)
  5. writes results.md and results.json (every figure, seeds, checks,
     command lines, wall times, device)                                   (stage `report`)

Every unit saves its result in the work directory and is skipped when it exists with the same
settings, so a run can be split over many short commands: --stages / --only select units,
--time-budget stops starting new ones (and stops running ones cleanly, resumable) before a
deadline, --pack / --restore move the compact state between machines. The driver is the package
mimiq_mm.benchmark.table; this file only names its recipe.

Examples:
  python tools/benchmark/cifar10_table.py --data-root /tmp/cifar10 --scale cpu-2core
  python tools/benchmark/cifar10_table.py --data-root /tmp/cifar10 --stages teacher synth
  python tools/benchmark/cifar10_table.py --data-root /tmp/cifar10 --only 'vit/*/w3a3/*' --seeds 0
  python tools/benchmark/cifar10_table.py --stages report            # table from what is done
  python tools/benchmark/cifar10_table.py --dry-run --data-root ...  # the plan and its status
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mimiq_mm.benchmark.table import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(description=__doc__))
