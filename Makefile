# The README's commands.  Each target provisions what it needs first (cached).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps build demo test soak bench clean

deps:
	@bash scripts/provision.sh

build: deps

demo: deps
	@$(PY) -m fastckpt.demo

# the whole suite twice: as the host is, then as on a cgroup-v2-only host (a cgroup2 mount namespace)
test: deps
	@echo "make test: cgroups as this host has them"
	@$(PY) -m pytest $(PYTEST_ARGS)
	@echo "make test: a cgroup-v2-only (unified) host, simulated by scripts/cgroup2-ns.sh"
	@FASTCKPT_TEST_LAYOUT=unified sh scripts/cgroup2-ns.sh $(PY) -m pytest $(PYTEST_ARGS)

# 100 checkpoint/restore cycles of one container: nothing may pile up (the default suite runs 10)
soak: deps
	@FASTCKPT_SOAK=$${FASTCKPT_SOAK:-100} $(PY) -m pytest tests/test_robust_soak.py $(PYTEST_ARGS)

bench: deps
	@$(PY) benchmarks/side_by_side.py

clean:
	rm -rf build src/*.egg-info src/fastckpt/_criu*.so ext/_criu.c
