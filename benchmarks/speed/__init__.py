"""Timing the synthesis and fine-tuning steps (``python -m benchmarks.step_times``)."""
from .runner import (STEP_KINDS, BenchmarkSetup, default_out_path, format_table, make_step, run_benchmark,
                     setup_from_config, setup_from_timm, write_result)
from .steps import DistillStep, SynthesisStep

__all__ = ['STEP_KINDS', 'BenchmarkSetup', 'DistillStep', 'SynthesisStep', 'default_out_path', 'format_table',
           'make_step', 'run_benchmark', 'setup_from_config', 'setup_from_timm', 'write_result']
