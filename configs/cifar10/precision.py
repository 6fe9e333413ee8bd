# Does bf16 synthesis keep the results? The benchmark's base and MimiQ rows with float32 and with
# bf16 synthesis (`--scale-options synthesis.amp_dtype=bf16`), one synthetic set shared by the
# fine-tuning seeds so that the two runs differ only in the precision the set was made in.
# Commands and results: benchmarks/README.md (synthesis precision).
_base_ = ['./benchmark.py']

benchmark = 'cifar10-precision'
synthetic_set_per_seed = False
