"""The shared fixture layer itself (tests/fastckpt_testing): its error asserter, its runner, its tear-down."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from fastckpt_testing import cli
from fastckpt_testing.containers import cgroup_dirs, runc, teardown
from fastckpt_testing.waiting import proc_alive, wait_until


def _res(code: int, stderr: str, stdout: str = "") -> cli.Result:
    return cli.Result(["fastckpt"], code, stdout, stderr)


def test_assert_error_takes_one_clear_line():
    assert cli.assert_error(_res(2, "fastckpt: no such flag --x\n"), 2, "--x") == ["fastckpt: no such flag --x"]
    err = "fastckpt: criu dump failed: X (log: l)\n  Error (criu/a.c:1): X\n"
    assert cli.assert_error(_res(1, err), 1, "X", criu_lines=True)[1] == "  Error (criu/a.c:1): X"
    assert len(cli.assert_error(_res(1, err), 1, criu_lines=None)) == 2
    assert cli.assert_error(_res(1, "fastckpt: x\n", "listening\n"), 1, stdout=None)


@pytest.mark.parametrize("res, code, needles, kw", [
    (_res(1, "fastckpt: x\n"), 2, (), {}),  # another exit code
    (_res(1, "Traceback (most recent call last):\nfastckpt: x\n"), 1, (), {}),
    (_res(1, "fastckpt: x\nTraceback (most recent call last):\n"), 1, (), {"criu_lines": None}),
    (_res(1, "x\n"), 1, (), {}),  # not fastckpt's line
    (_res(1, ""), 1, (), {}),  # nothing said
    (_res(1, "fastckpt: x\nfastckpt: y\n"), 1, (), {}),  # two messages
    (_res(1, "fastckpt: x\n  Error: y\n"), 1, (), {}),  # CRIU's lines where none were expected
    (_res(1, "fastckpt: x\n"), 1, (), {"criu_lines": True}),  # none where they were
    (_res(1, "fastckpt: x\n  Error: why\n"), 1, ("why",), {"criu_lines": True}),  # the why is not in fastckpt's line
    (_res(1, "fastckpt: x\n", "out\n"), 1, (), {}),  # something on stdout
])
def test_assert_error_refuses(res, code, needles, kw):
    with pytest.raises(AssertionError):
        cli.assert_error(res, code, *needles, **kw)


def test_run_returns_when_the_command_ends_though_a_child_keeps_its_output():
    # stdout/stderr are files: a child still holding them (a container, a straggling criu) does not block
    t0 = time.monotonic()
    r = cli.run(["sh", "-c", "sleep 60 & echo $!; echo oops >&2"], timeout=30)
    try:
        assert time.monotonic() - t0 < 30
        assert r.returncode == 0 and r.stderr == "oops\n" and r.pid
    finally:
        os.kill(int(r.stdout), signal.SIGKILL)


def test_run_gives_input_and_the_environment():
    r = cli.run([sys.executable, "-c", "import os, sys; print(sys.stdin.read() + os.environ['FC_X'])"],
                input="in-", env={"FC_X": "env"})
    assert r.stdout == "in-env\n"
    assert cli.run(["cat"]).stdout == ""  # stdin: /dev/null


@pytest.mark.integration
def test_teardown_takes_down_a_paused_container(container):
    ct = container()
    pid = ct.pid
    assert runc(ct.root, "pause", ct.id).returncode == 0
    assert ct.freezer_state() == "FROZEN"
    assert teardown(ct.root, ct.id, ct.cgroup_paths.values()) == []
    assert ct.state() is None
    wait_until(lambda: not proc_alive(pid), f"pid {pid} to die")
    assert not os.path.exists(ct.state_dir)
    assert cgroup_dirs(ct.id) == []


@pytest.mark.integration
def test_teardown_removes_what_runc_no_longer_knows(container):
    """A container whose state directory is gone (runc knows nothing of it): its processes are killed and
    its cgroups removed, in either layout."""
    ct = container()
    pid = ct.pid
    paths = list(ct.cgroup_paths.values())
    assert paths and all(os.path.isdir(p) for p in paths)
    os.rename(ct.state_dir, ct.state_dir + ".hidden")
    try:
        assert ct.state() is None
        assert teardown(ct.root, ct.id, paths) == []
        wait_until(lambda: not proc_alive(pid), f"pid {pid} to die")
        assert not any(os.path.isdir(p) for p in paths)
        assert cgroup_dirs(ct.id) == []
    finally:
        os.rename(ct.state_dir + ".hidden", ct.state_dir)


@pytest.mark.integration
def test_teardown_without_force_leaves_what_runc_left(container):
    """force=False (the restore tests' Env): runc kill and delete only; what they leave stays, to be reported."""
    ct = container()
    pid = ct.pid
    paths = list(ct.cgroup_paths.values())
    os.rename(ct.state_dir, ct.state_dir + ".hidden")
    try:
        assert teardown(ct.root, ct.id, paths, force=False) == []
        assert all(os.path.isdir(p) for p in paths)
        assert proc_alive(pid)
    finally:
        os.rename(ct.state_dir + ".hidden", ct.state_dir)


def test_cgroup2_ns_runs_the_command_in_v1_cgroups_of_its_own():
    """scripts/cgroup2-ns.sh: the command sees a cgroup2 /sys/fs/cgroup and sits, in every v1 hierarchy this
    host has mounted, in a cgroup of its own (removed afterwards), never at a root: a dump of a task at a v1
    root records every cgroup of the host, and runc's restore ("soft" cgroup mode) made them all again
    (other suites' containers, removed meanwhile, came back empty). Its exit status is the command's."""
    import subprocess

    from fastckpt_testing.containers import LAYOUT

    if LAYOUT == "unified":  # this suite runs in it (not nestable: cgroup2 is mounted there already)
        with open("/proc/self/cgroup") as f:
            v1_lines = [line.strip() for line in f if not line.startswith("0::")]
        assert all(line.rsplit("/", 1)[-1].startswith("fastckpt-ns-") for line in v1_lines), v1_lines
        return
    if os.geteuid() != 0:
        pytest.skip("needs root (a mount namespace)")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "cgroup2-ns.sh")
    with open("/proc/mounts") as f:
        v1 = [line.split()[1] for line in f if line.split()[2] == "cgroup"]
    p = subprocess.run(["sh", script, "sh", "-c", "cat /proc/self/cgroup; stat -f -c %T /sys/fs/cgroup; exit 3"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 3, p
    lines = p.stdout.splitlines()
    assert lines[-1] == "cgroup2fs", p.stdout
    own = {line.split(":", 2)[2].rsplit("/", 1)[-1] for line in lines[:-1] if not line.startswith("0::")}
    if v1:  # a hybrid host: the v1 hierarchies are still there, unseen in the namespace
        name = own.pop() if len(own) == 1 else ""
        assert name.startswith("fastckpt-ns-"), p.stdout
        left = [d for mnt in v1 for d, _, _ in os.walk(mnt) if os.path.basename(d) == name]
        assert not left, f"cgroup2-ns.sh left its cgroups: {left}"
