"""The Cython binding itself (fastckpt._criu): constants, options, notifications, operations."""
from __future__ import annotations

import errno
import os
import socket

import pytest

import fastckpt
from fastckpt import _criu, constants, criu, criu_proc


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
    opts = criu.new_opts()
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    try:
        opts.set_images_dir_fd(fd)
        opts.set_log_file("dump.log")
        opts.set_pid(tree.pid)
        opts.set_leave_running(True)
        opts.set_notify(lambda action, pid: seen.append((action, pid)) or 0)
        ret, err = criu.run_op(opts, "dump", log_path=str(tmp_path / "dump.log"))
    finally:
        os.close(fd)
    assert ret == 0, (ret, err)
    actions = [a for a, _ in seen]
    assert "pre-dump" in actions and "post-dump" in actions, actions
    assert actions.index("pre-dump") < actions.index("post-dump")
    assert tree.alive()


def test_notify_handler_failure_aborts_the_dump(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    opts = criu.new_opts()
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
        ret, _ = criu.run_op(opts, "dump", log_path=str(tmp_path / "dump.log"))
    finally:
        os.close(fd)
    assert ret < 0, "a handler that fails must abort CRIU's dump"
    assert isinstance(opts.notify_error, RuntimeError)
    assert tree.alive()


# --- the error boundary: what the binding refuses is a fastckpt.Error, said clearly -------------

@pytest.mark.parametrize("call, needle", [
    (lambda o: o.set_network_lock(99), "libcriu refused the network lock method 99"),
    (lambda o: o.set_pid("12"), "pid must be an integer, not str"),
    (lambda o: o.set_pid(0), "pid 0 is out of range"),
    (lambda o: o.set_log_level(7), "the log level 7 is out of range"),
    (lambda o: o.set_page_server("10.0.0.1", 70000), "the page server port 70000 is out of range"),
    (lambda o: o.add_external("net[1]\0:x"), "contains a NUL byte"),
    (lambda o: o.set_root(3), "the root must be a string, not int"),
    (lambda o: o.set_notify(42), "the notify handler must be callable"),
    (lambda o: o.run("dumpp"), "unknown CRIU operation 'dumpp'"),
])
def test_bad_values_are_usage_errors(call, needle):
    with pytest.raises(fastckpt.UsageError) as e:
        call(_criu.Opts())
    assert needle in str(e.value), str(e.value)
    assert isinstance(e.value, fastckpt.Error) and e.value.errno == errno.EINVAL


def test_paths_are_encoded_as_the_file_system_does(tmp_path):
    """A path that is not UTF-8 (surrogate-escaped, as os.fsdecode gives it) reaches libcriu as its bytes."""
    o = _criu.Opts()
    odd = os.fsdecode(b"/tmp/\xff\xfe-root")
    o.set_root(odd)  # str.encode() would raise UnicodeEncodeError (a ValueError) here
    o.set_root(b"/tmp/\xff\xfe-root")
    o.add_ext_mount(odd, odd)


def test_api_refuses_bad_externals_before_touching_anything(tmp_path):
    for bad, needle in (([1], "must be a string"), (["a\0b"], "NUL byte"), ("net[1]:x", "a list")):
        with pytest.raises(fastckpt.UsageError, match=needle):
            fastckpt.CheckpointOptions(image_path=str(tmp_path / "img"), extra_externals=bad)
    assert not (tmp_path / "img").exists()


def open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def test_service_socket_is_owned_by_opts(tmp_path):
    """The socket handed over belongs to the Opts: closed by libcriu after a request, by the Opts when
    none was made; a used-up socket is never used again (its number may be another file's by then)."""
    before = open_fds()
    for _ in range(20):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        o = _criu.Opts()
        o.set_service_fd(a.detach())
        del o  # no request made: the Opts closes it
        b.close()
    assert open_fds() == before

    opts = criu.new_opts()
    ret, _err, _stopped = criu_proc.run(opts, "version", criu.criu_binary())
    assert ret > 0
    with pytest.raises(fastckpt.CriuError, match="used up by an earlier operation"):
        opts.run("version")  # the fd number libcriu closed is not ours any more


def test_failing_setups_leak_no_descriptor():
    """criu_proc.run() whose set-up fails after the socket was handed over: nothing stays open, no
    criu is left running."""
    binary = criu.criu_binary()

    def refuse(pid):
        raise fastckpt.Error("set-up failed on purpose")

    run = lambda: criu_proc.run(criu.new_opts(), "check", binary, setup=refuse)  # noqa: E731
    with pytest.raises(fastckpt.Error):
        run()  # once first: modules, caches and the kdat cache are in place from here on
    before = open_fds()
    for _ in range(15):
        with pytest.raises(fastckpt.Error, match="on purpose"):
            run()
    assert open_fds() == before, "descriptors leaked by failing set-ups"
    assert not criu_proc.descendants(os.getpid()), "a criu outlived its failed set-up"


def test_feature_check_gives_a_dict_or_raises():
    features = criu.features()
    assert set(features) == {"mem_track", "lazy_pages", "pidfd_store"}
    assert all(isinstance(v, bool) for v in features.values())


def test_a_criu_path_that_is_not_utf8_works_through_the_command(tmp_path):
    """FASTCKPT_CRIU naming a criu in a directory whose name is not UTF-8: the path reaches libcriu as
    its bytes (str.encode() raised UnicodeEncodeError, a ValueError: a traceback from the command)."""
    import subprocess
    import sys

    odd_dir = os.path.join(os.fsencode(str(tmp_path)), b"criu-\xff")
    os.mkdir(odd_dir)
    os.symlink(os.fsencode(criu.criu_binary()), os.path.join(odd_dir, b"criu"))
    env = dict(os.environ)
    env["FASTCKPT_CRIU"] = os.fsdecode(os.path.join(odd_dir, b"criu"))
    env["FASTCKPT_KDAT_CACHE"] = "0"  # the host's kernel-probe cache is keyed to the criu path: not ours to touch
    env["PYTHONIOENCODING"] = "utf-8:strict"  # stdout strict about encoding, as under most users' locales
    r = subprocess.run([sys.executable, "-m", "fastckpt", "check"], env=env, capture_output=True, timeout=120)
    assert b"Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r
    assert b"criu: " + os.path.join(odd_dir, b"criu") in r.stdout, r.stdout


def test_the_kernel_probe_cache_stamp_may_hold_any_path(tmp_path):
    """The stamp beside /run/criu.kdat holds the criu path it was made with: bytes that are not UTF-8
    must read back as they were written (they made every later fastckpt fail with a traceback)."""
    from fastckpt import kdat
    from fastckpt.atomicfile import write_atomic

    stamp = tmp_path / "stamp"
    key = "boot-id " + os.fsdecode(b"/opt/criu-\xff/criu") + " 1795992593"
    write_atomic(str(stamp), os.fsencode(key))
    assert kdat._read(str(stamp)) == key


@pytest.mark.parametrize("call, needle", [
    (lambda: fastckpt.checkpoint(pid="1234"), "pid must be an integer, not str"),
    (lambda: fastckpt.checkpoint(pid=True), "pid must be an integer, not bool"),
    (lambda: fastckpt.CheckpointOptions(log_level="debug"), "Invalid log level 'debug'"),
    (lambda: fastckpt.RestoreOptions(log_level=2.5), "Invalid log level 2.5"),
])
def test_bad_values_through_the_api_are_usage_errors(call, needle):
    """(Were ValueError and TypeError from int() and a comparison.)"""
    with pytest.raises(fastckpt.UsageError, match=needle):
        call()


def test_watchdog_stops_nothing_once_the_operation_ended():
    """The operation ends (stop()) while the watchdog is deciding to stop CRIU: CRIU's process (and what
    it forked: a restored container) is left alone, and no reason is reported."""
    import subprocess
    import threading

    child = subprocess.Popen(["sleep", "60"])
    try:
        dog = None

        def watch():  # the operation ends right as the watch finds a reason to stop CRIU
            threading.Thread(target=dog.stop).start()
            assert dog._stop_event.wait(10)
            return "a reason found too late"

        dog = criu_proc.Watchdog(child.pid, None, None, 1 << 30, watch=watch)
        dog.start()
        dog.join(20)
        assert not dog.is_alive()
        assert child.poll() is None, "the watchdog killed a process after the operation ended"
        assert dog.reason is None
    finally:
        child.kill()
        child.wait()
