# The README's commands.  Each target provisions what it needs first (cached).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps build demo test soak bench bench-quick bench-archive clean

deps:
	@bash scripts/provision.sh

build: deps

demo: deps
	@$(PY) -m fastckpt.demo

# Coverage of the Python package, measured in the test process (see [tool.coverage.run] in
# pyproject.toml: the CLI's subprocesses are not measured, so modules that only the command runs --
# migrate.py, migrate_lazy.py, pageserver.py, tcplock.py, whose tests drive two network namespaces through it -- count
# as 0% here: ~69% in all, ~78% without them); the suite must keep the floor.
# A targeted run: make test PYTEST_ARGS=tests/test_x.py COV_ARGS=
COV_FLOOR ?= 65
COV_ARGS ?= --cov=fastckpt --cov-report=term --cov-fail-under=$(COV_FLOOR)

# the whole suite twice: as the host is, then as on a cgroup-v2-only host (a cgroup2 mount namespace)
test: deps
	@echo "make test: cgroups as this host has them"
	@$(PY) -m pytest $(COV_ARGS) $(PYTEST_ARGS)
	@echo "make test: a cgroup-v2-only (unified) host, simulated by scripts/cgroup2-ns.sh"
	@FASTCKPT_TEST_LAYOUT=unified sh scripts/cgroup2-ns.sh $(PY) -m pytest $(COV_ARGS) $(PYTEST_ARGS)

# 100 checkpoint/restore cycles of one container: nothing may pile up (the default suite runs 10)
soak: deps
	@FASTCKPT_SOAK=$${FASTCKPT_SOAK:-100} $(PY) -m pytest tests/test_robust_soak.py $(PYTEST_ARGS)

# both cgroup layouts: as the host is (results/latest.*), then unified (results/latest-unified.*, runc's
# --root made inside the namespace).  BENCH_QUICK=1 (or make bench-quick): few rounds, a smoke run.
bench: deps
	@echo "make bench: cgroups as this host has them"
	@$(PY) benchmarks/side_by_side.py
	@echo "make bench: a cgroup-v2-only (unified) host, simulated by scripts/cgroup2-ns.sh"
	@sh scripts/cgroup2-ns.sh $(PY) benchmarks/side_by_side.py

bench-quick:
	@BENCH_QUICK=1 $(MAKE) --no-print-directory bench

# checkpoint archives: fastckpt vs podman (export, import) and vs tar | zstd (1 GiB)
bench-archive: deps
	@$(PY) benchmarks/archive_side_by_side.py

clean:
	rm -rf build src/*.egg-info src/fastckpt/_criu*.so ext/_criu.c
