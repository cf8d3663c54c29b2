"""The Cython binding itself (fastckpt._criu): constants, options, notifications, operations."""
from __future__ import annotations

import os

import pytest

from fastckpt import _criu, constants, engine


# the kernel's ABI (linux/sched.h)
CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWNS, CLONE_NEWTIME = 0x40000000, 0x20000000, 0x00020000, 0x00000080


def test_constants_are_the_kernels_and_crius():
    assert (_criu.CLONE_NEWNET, _criu.CLONE_NEWPID, _criu.CLONE_NEWNS, _criu.CLONE_NEWTIME) == (
        CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWNS, CLONE_NEWTIME)
    assert constants.Namespace.NEWNET | constants.Namespace.NEWPID == CLONE_NEWNET | CLONE_NEWPID
    # CRIU's enum criu_cg_mode and network lock methods, in CRIU's order
    assert [m.name for m in sorted(constants.CgroupMode)] == [
        "IGNORE", "NONE", "PROPS", "SOFT", "FULL", "STRICT", "DEFAULT"]
    assert (constants.NetworkLock.IPTABLES, constants.NetworkLock.NFTABLES, constants.NetworkLock.SKIP) == (1, 2, 3)
    assert _criu.LIBCRIU_VERSION >= (4, 1, 0)


def test_opts_reject_bad_values():
    o = _criu.Opts()
    with pytest.raises(ValueError):
        o.set_network_lock(99)  # libcriu refuses an unknown method


def test_notify_callback_sees_crius_actions(proc_tree, tmp_path):
    """A dump with a notify handler: the handler gets CRIU's actions with the dumped pid."""
    tree = proc_tree.counter(str(tmp_path / "count"))
    seen = []
    opts = engine.new_opts()
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    try:
        opts.set_images_dir_fd(fd)
        opts.set_log_file("dump.log")
        opts.set_pid(tree.pid)
        opts.set_leave_running(True)
        opts.set_notify(lambda action, pid: seen.append((action, pid)) or 0)
        ret, err = engine.run_op(opts, "dump", log_path=str(tmp_path / "dump.log"))
    finally:
        os.close(fd)
    assert ret == 0, (ret, err)
    actions = [a for a, _ in seen]
    assert "pre-dump" in actions and "post-dump" in actions, actions
    assert actions.index("pre-dump") < actions.index("post-dump")
    assert tree.alive()


def test_notify_handler_failure_aborts_the_dump(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    opts = engine.new_opts()
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)

    def refuse(action, pid):
        if action == "pre-dump":
            raise RuntimeError("no, thanks")
        return 0

    try:
        opts.set_images_dir_fd(fd)
        opts.set_log_file("dump.log")
        opts.set_pid(tree.pid)
        opts.set_leave_running(True)
        opts.set_notify(refuse)
        ret, _ = engine.run_op(opts, "dump", log_path=str(tmp_path / "dump.log"))
    finally:
        os.close(fd)
    assert ret < 0, "a handler that fails must abort CRIU's dump"
    assert isinstance(opts.notify_error, RuntimeError)
    assert tree.alive()
