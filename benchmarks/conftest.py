"""Fixtures of the pytest-benchmark suites (benchmarks/test_bench_*.py).

They run only when asked, outside `make test` (pyproject's testpaths is
["tests"]):

    .venv/bin/python -m pytest benchmarks -p no:cacheprovider --benchmark-enable

Without --benchmark-enable (pyproject's addopts disable benchmarks) each
benchmark runs once, as a smoke test.  BENCH_ROUNDS sets the rounds (15).
Every container lives in a private runc root and every process is ours:
the janitor kills and deletes them by id and pid after each test.
"""
from __future__ import annotations

import os
import shutil

import pytest

import benchlib as bl
from fastckpt_testing.plugin import torn_down



def _require():
    why = bl.why_not_runnable()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session")
def session_janitor():
    jan = bl.Janitor()
    yield from torn_down(jan, jan.close, "benchmark cleanup failed")


@pytest.fixture
def janitor():
    jan = bl.Janitor()
    yield from torn_down(jan, jan.close, "benchmark cleanup failed")


@pytest.fixture(scope="session")
def tiny_bundle(session_janitor):
    """One busybox bundle (fastckpt's counter) for every container of the session."""
    _require()
    d = session_janitor.mkdtemp("fcb-bundle-")
    return bl.make_bundle(os.path.join(d, "bundle"))


@pytest.fixture
def runc_root(janitor):
    """A private runc state root."""
    _require()
    return janitor.mkdtemp("fcb-runc-root-")


@pytest.fixture
def container(janitor, runc_root, tiny_bundle):
    """A running tiny container in ``runc_root``: its id (killed and deleted after the test)."""
    return bl.start_container(janitor, runc_root, tiny_bundle)


@pytest.fixture
def sleeper(janitor):
    """The pid of a running `sleep infinity` (new session, stdio /dev/null), killed after the test."""
    _require()
    sleep = shutil.which("sleep") or "/bin/sleep"
    proc = janitor.spawn([sleep, "infinity"])
    exe = os.path.realpath(sleep)
    bl.wait_until(lambda: os.path.realpath(f"/proc/{proc.pid}/exe") == exe, "sleep to exec")
    return proc.pid


@pytest.fixture
def fresh_dir(janitor):
    """fresh_dir() -> a new empty image directory; the previous one is removed first."""
    base = janitor.mkdtemp("fcb-images-")
    last = []

    def make() -> str:
        while last:
            shutil.rmtree(last.pop(), ignore_errors=True)
        d = janitor.mkdtemp("img-", base)
        last.append(d)
        return d

    return make
