# The README's commands.  Each target provisions what it needs first (cached).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps build demo test bench clean

deps:
	@bash scripts/provision.sh

build: deps

demo: deps
	@$(PY) -m fastckpt.demo

test: deps
	@$(PY) -m pytest $(PYTEST_ARGS)

bench: deps
	@$(PY) benchmarks/side_by_side.py

clean:
	rm -rf build src/*.egg-info src/fastckpt/_criu*.so ext/_criu.c
