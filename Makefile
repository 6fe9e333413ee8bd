# Entry points; `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env test demo lint

# Builds the pinned stack once (mmcv from source, cached in ~/.cache/mimiq_mm/wheels); a no-op afterwards.
env:
	bash tools/setup_env.sh $(VENV)

test: env
	$(PY) -m pytest tests -q

# Progress per stage on the console, full logs under work_dirs/demo/ (e.g. DEMO_ARGS="--seed 1").
demo: env
	$(PY) tools/demo.py $(DEMO_ARGS)

# Syntax check only (no linter is part of the pinned stack).
lint: env
	$(PY) -m compileall -q mimiq_mm tools tests configs benchmarks
