"""The warm-up thread that keeps cgroup migrations from waiting a grace period (ext/warm.h).

It is opt-in (--fast-migrations, the options' fast_migrations, FASTCKPT_WARM=1; never with
FASTCKPT_NO_WARM=1). It must run exactly while an operation needs it, nest, end by itself
when only primed, never move this process anywhere, and be a no-op when it cannot work.
"""
from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from fastckpt import _libc, cgroups

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


@pytest.fixture(autouse=True)
def _no_warm_environment(monkeypatch):
    monkeypatch.delenv("FASTCKPT_NO_WARM", raising=False)
    monkeypatch.delenv("FASTCKPT_WARM", raising=False)


def assert_no_warm_up(requested: bool) -> None:
    """Neither FastMigrations(REQUESTED) nor the command line's priming start a thread."""
    before = tasks()
    with cgroups.FastMigrations(requested) as fm:
        assert not fm.started
        assert tasks() == before
    cgroups.prime_fast_migrations(requested)
    assert tasks() == before


def test_off_unless_asked_for(procs_file):
    assert_no_warm_up(False)


def test_on_by_environment(procs_file, monkeypatch):
    monkeypatch.setenv("FASTCKPT_WARM", "1")
    before = tasks()
    with cgroups.FastMigrations(False) as fm:
        assert fm.started and len(tasks() - before) == 1
    assert tasks() == before


def test_runs_while_open_and_ends_with_it(procs_file):
    before, where = tasks(), own_cgroups()
    with cgroups.FastMigrations(True) as fm:
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


def test_nests(procs_file):
    before = tasks()
    with cgroups.FastMigrations(True):
        with cgroups.FastMigrations(True):
            assert len(tasks() - before) == 1  # one thread for both
        assert len(tasks() - before) == 1, "the inner exit stopped the outer's thread"
    assert tasks() == before


def test_a_primed_thread_ends_at_its_deadline_or_with_the_operation(procs_file):
    before = tasks()
    assert _libc.warm_start(procs_file, 3000, 150, user=False) == 0
    assert len(tasks() - before) == 1
    wait_until(lambda: tasks() == before, "the primed thread to reach its deadline", timeout=5)

    # primed, then used: the operation's end ends it, long before the primer's deadline
    assert _libc.warm_start(procs_file, 3000, 60_000, user=False) == 0
    assert _libc.warm_start(procs_file) == 0
    assert len(tasks() - before) == 1
    _libc.warm_stop()
    assert tasks() == before


def test_an_unusable_file_means_no_thread_and_no_error(procs_file, tmp_path):
    before = tasks()
    assert _libc.warm_start(str(tmp_path / "missing" / "cgroup.procs")) == -errno.ENOENT
    assert tasks() == before
    _libc.warm_stop()  # balanced, harmless

    # a file that refuses the write (ENOSPC): the thread gives up at its first write
    assert _libc.warm_start("/dev/full") == 0
    try:
        wait_until(lambda: tasks() == before, "the thread to stop after a failed write")
    finally:
        _libc.warm_stop()


def test_off_by_environment_whatever_was_asked(procs_file, monkeypatch):
    monkeypatch.setenv("FASTCKPT_NO_WARM", "1")
    monkeypatch.setenv("FASTCKPT_WARM", "1")
    assert_no_warm_up(True)


def test_bad_periods_and_limits_are_refused(procs_file):
    before = tasks()
    for period_us, limit_ms in ((0, 100), (-2_000_000, 100), (3000, -1)):
        assert _libc.warm_start(procs_file, period_us, limit_ms) == -errno.EINVAL
        _libc.warm_stop()
    assert tasks() == before
    assert _libc.warm_start(procs_file) == 0  # still usable afterwards
    _libc.warm_stop()
    assert tasks() == before


@pytest.mark.parametrize("flag, env, threads", [
    ((), {}, 1),                                              # the default: no warm-up
    (("--fast-migrations",), {}, 2),                          # asked for on the command line
    ((), {"FASTCKPT_WARM": "1"}, 2),                          # or in the environment
    (("--fast-migrations",), {"FASTCKPT_NO_WARM": "1"}, 1),   # never with FASTCKPT_NO_WARM=1
])
def test_the_command_warms_up_only_when_asked(procs_file, tmp_path, flag, env, threads):
    """The real command, held while it builds its parser (after it would have primed the warm-up):
    its threads are counted, then it is interrupted."""
    import robust_support as rb

    mark = str(tmp_path / "parsing")
    cli = rb.Cli(["--root", str(tmp_path / "runc"), "checkpoint", *flag, "--image-path", str(tmp_path / "img"),
                  "no-such-container"], str(tmp_path), env=env, slow={"cli.build_parser": mark})
    try:
        wait_until(lambda: os.path.exists(mark) or not cli.running(), "the command to build its parser")
        assert cli.running(), "the command ended before it built its parser"
        seen = len(os.listdir(f"/proc/{cli.pid}/task"))
    finally:
        if cli.running():
            cli.signal_group(signal.SIGINT)
        res = cli.wait()
    assert seen == threads, f"{seen} threads in `fastckpt checkpoint {' '.join(flag)}` with {env}"
    assert res.returncode == 130, res
