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

# Coverage of the Python package, in the test process and in the Python processes the tests start (the
# CLI as `python -m fastckpt` and through its launcher, in other network and mount namespaces too): each
# writes a .coverage.* file beside COVERAGE_FILE, pytest-cov combines them at the end of each pass, and
# each pass must keep the floor (see [tool.coverage.run] in pyproject.toml). Measured: 83.4% as the host
# is, 84.1% unified (0%: demo.py, run by make demo; migrate_lazy.py, whose tests cannot run on this
# kernel); the floor leaves room for a skipped test or two. Measuring a CLI process costs ~70 ms (its
# start-up: 8 -> 76 ms for --version). A targeted run: make test PYTEST_ARGS=tests/test_x.py COV_ARGS=
COV_FLOOR ?= 80
COV_ARGS ?= --cov=fastckpt --cov-report=term --cov-fail-under=$(COV_FLOOR)

# the whole suite twice: as the host is, then as on a cgroup-v2-only host (a cgroup2 mount namespace)
test: export COVERAGE_FILE := $(CURDIR)/.coverage
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
