"""The generators of the figure blocks of README.md and docs/ (see :mod:`benchmarks.readme_figures`),
each a function of result file names (and options) returning the block's markdown lines."""
from .robustness import digits_robustness, robustness_summary, robustness_table
from .speed import iteration_costs, onnx_speed, synthesis_steps
from .tables import cifar10_table, demo_runs, dense_table, row_costs, synthesis_precision

GENERATORS = dict(demo_runs=demo_runs, digits_robustness=digits_robustness, cifar10_table=cifar10_table,
                  dense_table=dense_table, onnx_speed=onnx_speed, synthesis_steps=synthesis_steps,
                  robustness_table=robustness_table, synthesis_precision=synthesis_precision,
                  robustness_summary=robustness_summary, row_costs=row_costs, iteration_costs=iteration_costs)
