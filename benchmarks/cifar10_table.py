"""Data-free quantization benchmark: a results table of MimiQ against its baselines on an
ImageFolder classification dataset (by default CIFAR-10, /work/shared/datasets/cifar10-jpeg.tar.gz).

For each teacher of the scale (configs/cifar10/benchmark.py), the driver

  1. trains the full-precision teacher on the train split only           (stage `teacher`)
  2. makes each synthetic set the rows need, one per seed, never reading
     a train image                                                        (stage `synth`)
  3. quantizes the teacher for every row, bit-width and seed: PTQ or QAT
     on a synthetic set, or the same QAT on the real train split          (stage `quant`)
  4. evaluates on the test split                                          (stage `eval`)
  5. writes results.md and results.json (every figure, seeds, checks,
     command lines, wall times, device)                                   (stage `report`)

Every unit saves its result in the work directory and is skipped when it exists with the same
settings, so a run can be split over many short commands: --stages / --only select units,
--time-budget stops starting new ones (and stops running ones cleanly, resumable) before a
deadline, --pack / --restore move the compact state between machines. The driver is the package
benchmarks.table; this module only names its recipe.

Examples (from the repository root):
  python -m benchmarks.cifar10_table --data-root /tmp/cifar10 --scale cpu-2core
  python -m benchmarks.cifar10_table --data-root /tmp/cifar10 --stages teacher synth
  python -m benchmarks.cifar10_table --data-root /tmp/cifar10 --only 'vit/*/w3a3/*' --seeds 0
  python -m benchmarks.cifar10_table --stages report            # table from what is done
  python -m benchmarks.cifar10_table --dry-run --data-root ...  # the plan and its status
"""
import sys

from .table import main



def run(argv=None):
    return main(argv, default_recipe='configs/cifar10/benchmark.py', tool='benchmarks.cifar10_table',
                description=__doc__)


if __name__ == '__main__':
    sys.exit(run())
