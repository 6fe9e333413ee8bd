"""The benchmark laboratory of mimiq_mm: what made the tables of the README and of
``benchmarks/*/README.md``. It is not part of the installed package; run its commands from the
repository root, e.g. ``python -m benchmarks.cifar10_table --help``:

* ``benchmarks.cifar10_table`` / ``benchmarks.dense_table``: the resumable table drivers
  (:mod:`benchmarks.table`: recipe and scales, plan of units, stages, state on disk, report,
  parallel lanes), each naming its recipe (``configs/cifar10/benchmark.py``,
  ``configs/dense_bench/benchmark.py``);
* ``benchmarks.step_times``: the time of synthesis and fine-tuning steps (:mod:`benchmarks.speed`);
* ``benchmarks.make_dense_data``: the digits-on-CIFAR data of the dense table
  (:mod:`benchmarks.dense_digits`);
* ``benchmarks/device_run.sh``: one command of the CIFAR-10 table on a lent GPU machine.

Results and how each was made: ``benchmarks/results/README.md``.
"""
