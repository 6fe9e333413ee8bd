"""A resumable benchmark table driver: recipe (rows, bit-widths, scales), plan (units), stages
(train a teacher, synthesise, quantize, evaluate), state on disk, report, parallel lanes
(``--jobs N``).

Used by ``benchmarks.cifar10_table`` and ``benchmarks.dense_table``; any other benchmark is a recipe
file and a small module calling :func:`main` with it.
"""
from .cli import main
from .driver import Benchmark
from .plan import STAGES, Unit, make_plan
from .recipe import Recipe, bits_label, load_teacher_config, parse_bits, quantization_config

__all__ = ['Benchmark', 'Recipe', 'STAGES', 'Unit', 'bits_label', 'load_teacher_config', 'main', 'make_plan',
           'parse_bits', 'quantization_config']
