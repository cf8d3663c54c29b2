"""The warm-up thread that keeps cgroup migrations from waiting a grace period (ext/warm.h).

It must run exactly while an operation needs it, nest, end by itself when
only primed, never move this process anywhere, and be a no-op when it cannot work.
"""
from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from fastckpt import _criu, cgroups

from ckpt_support import wait_until


def tasks() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def own_cgroups() -> str:
    with open("/proc/self/cgroup") as f:
        return f.read()


@pytest.fixture
def procs_file():
    path = cgroups._own_procs_file()
    if path is None:
        pytest.skip("no cgroup.procs of our own to write")
    before = tasks()
    yield path
    # whatever a test did, no warm-up thread outlives it
    wait_until(lambda: tasks() <= before, "the warm-up thread to end")


def test_runs_while_open_and_ends_with_it(procs_file, monkeypatch):
    monkeypatch.delenv("FASTCKPT_NO_WARM", raising=False)
    before, where = tasks(), own_cgroups()
    with cgroups.FastMigrations() as fm:
        assert fm.started
        (extra,) = tasks() - before  # one thread, ours
        # it takes no signal: Ctrl-C must go to the thread that holds it back (fastckpt.signals)
        with open(f"/proc/self/task/{extra}/status") as f:
            blocked = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            assert blocked & (1 << (sig - 1)), f"the warm-up thread takes {sig!r}"
        time.sleep(0.02)  # several rewrites of cgroup.procs
        assert own_cgroups() == where, "the warm-up moved this process"
    assert tasks() == before, "the thread outlived the operation"


def test_nests(procs_file, monkeypatch):
    monkeypatch.delenv("FASTCKPT_NO_WARM", raising=False)
    before = tasks()
    with cgroups.FastMigrations():
        with cgroups.FastMigrations():
            assert len(tasks() - before) == 1  # one thread for both
        assert len(tasks() - before) == 1, "the inner exit stopped the outer's thread"
    assert tasks() == before


def test_a_primed_thread_ends_at_its_deadline_or_with_the_operation(procs_file):
    before = tasks()
    assert _criu.warm_start(procs_file, 3000, 150, user=False) == 0
    assert len(tasks() - before) == 1
    wait_until(lambda: tasks() == before, "the primed thread to reach its deadline", timeout=5)

    # primed, then used: the operation's end ends it, long before the primer's deadline
    assert _criu.warm_start(procs_file, 3000, 60_000, user=False) == 0
    assert _criu.warm_start(procs_file) == 0
    assert len(tasks() - before) == 1
    _criu.warm_stop()
    assert tasks() == before


def test_an_unusable_file_means_no_thread_and_no_error(procs_file, tmp_path):
    before = tasks()
    assert _criu.warm_start(str(tmp_path / "missing" / "cgroup.procs")) == -errno.ENOENT
    assert tasks() == before
    _criu.warm_stop()  # balanced, harmless

    # a file that refuses the write (ENOSPC): the thread gives up at its first write
    assert _criu.warm_start("/dev/full") == 0
    try:
        wait_until(lambda: tasks() == before, "the thread to stop after a failed write")
    finally:
        _criu.warm_stop()


def test_off_by_environment(procs_file, monkeypatch):
    monkeypatch.setenv("FASTCKPT_NO_WARM", "1")
    before = tasks()
    with cgroups.FastMigrations() as fm:
        assert not fm.started
        assert tasks() == before
    cgroups.prime_fast_migrations()
    assert tasks() == before


def test_bad_periods_and_limits_are_refused(procs_file):
    before = tasks()
    for period_us, limit_ms in ((0, 100), (-2_000_000, 100), (3000, -1)):
        assert _criu.warm_start(procs_file, period_us, limit_ms) == -errno.EINVAL
        _criu.warm_stop()
    assert tasks() == before
    assert _criu.warm_start(procs_file) == 0  # still usable afterwards
    _criu.warm_stop()
    assert tasks() == before
