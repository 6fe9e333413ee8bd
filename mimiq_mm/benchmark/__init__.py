"""Timing the synthesis and fine-tuning steps (``tools/benchmark_synthesis.py``)."""
from .runner import (STEP_KINDS, BenchmarkSetup, default_out_path, format_table, make_step, run_benchmark,
                     setup_from_config, setup_from_timm, write_result)
from .steps import DistillStep, SynthesisStep
from .timing import environment, peak_memory, reset_peak_memory, synchronize, time_step

__all__ = ['STEP_KINDS', 'BenchmarkSetup', 'DistillStep', 'SynthesisStep', 'default_out_path',
           'environment', 'format_table', 'make_step', 'peak_memory', 'reset_peak_memory', 'run_benchmark',
           'setup_from_config', 'setup_from_timm', 'synchronize', 'time_step', 'write_result']
