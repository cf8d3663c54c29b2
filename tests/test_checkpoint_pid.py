"""Integration: `fastckpt checkpoint --pid` of plain process trees, and the flags they need."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile

import pytest

import ckpt_support as cs
import fastckpt

pytestmark = pytest.mark.integration


def checkpoint_cli(pid, *args):
    return cs.fastckpt("checkpoint", "--pid", str(pid), *args)


assert_ok = cs.assert_ok
assert_images = cs.assert_images


def test_pid_checkpoint_ends_the_tree(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    img = tmp_path / "img"
    assert_ok(checkpoint_cli(tree.pid, "--image-path", str(img)))
    assert_images(img)
    assert os.stat(img).st_mode & 0o777 == 0o700
    assert not os.path.exists(img / "descriptors.json")  # only containers have runc's stdio list
    rc = tree.wait_gone()
    assert rc != 0, "the checkpointed process exited normally instead of being ended by the dump"


def test_pid_checkpoint_leave_running(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    res = fastckpt.checkpoint(pid=tree.pid, image_path=str(tmp_path / "img"), leave_running=True)
    assert res.pid == tree.pid and res.container_id is None and res.leave_running
    assert_images(tmp_path / "img")
    assert tree.alive()
    tree.wait_advancing()


def test_pid_checkpoint_with_cli_leave_running(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    assert_ok(checkpoint_cli(tree.pid, "--image-path", str(tmp_path / "img"), "--leave-running"))
    assert_images(tmp_path / "img")
    assert tree.alive()
    tree.wait_advancing()


# --- --file-locks ------------------------------------------------------------------------

def lock_held(path) -> bool:
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return any(f":{ino} " in line for line in f)


def test_file_locks(proc_tree, tmp_path):
    lock = tmp_path / "lockfile"
    lock.write_text("")
    tree = proc_tree.counter(str(tmp_path / "count"), prefix=f"exec 3>{lock}; flock -x 3; ")
    cs.wait_until(lambda: lock_held(lock), "the flock to be taken")

    proc = checkpoint_cli(tree.pid, "--image-path", str(tmp_path / "without"))
    cs.assert_error(proc, 1, "--file-locks", criu_lines=True)
    err = proc.stderr
    assert "file locks" in err
    assert tree.alive()
    tree.wait_advancing()

    with_ = tmp_path / "with"
    assert_ok(checkpoint_cli(tree.pid, "--image-path", str(with_), "--file-locks"))
    assert_images(with_)
    assert (with_ / "filelocks.img").exists()
    tree.wait_gone()
    cs.wait_until(lambda: not lock_held(lock), "the lock to be released with the tree")


# --- --ext-unix-sk ---------------------------------------------------------------------------

UNIX_CLIENT = """\
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(sys.argv[1])
open(sys.argv[2], "w").close()
i = 0
while True:
    i += 1
    with open(sys.argv[3], "w") as f:
        f.write(str(i))
    time.sleep(0.1)
"""


@pytest.fixture
def short_dir(tmp_path):
    """A directory short enough for a unix socket path (108 bytes)."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="fct-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_ext_unix_sk(proc_tree, tmp_path, short_dir):
    path = os.path.join(str(short_dir), "sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # the test owns the peer
    server.bind(path)
    try:
        ready, count = tmp_path / "ready", tmp_path / "count"
        tree = proc_tree([sys.executable, "-S", "-c", UNIX_CLIENT, path, str(ready), str(count)],
                         ready_file=str(ready), count_file=str(count))

        proc = checkpoint_cli(tree.pid, "--image-path", str(tmp_path / "without"))
        cs.assert_error(proc, 1, "--ext-unix-sk", criu_lines=True)
        err = proc.stderr
        assert "external socket" in err.lower()
        assert tree.alive()
        tree.wait_advancing()

        assert_ok(checkpoint_cli(tree.pid, "--image-path", str(tmp_path / "with"), "--ext-unix-sk",
                                 "--leave-running"))
        assert_images(tmp_path / "with")
        assert tree.alive()
        tree.wait_advancing()
    finally:
        server.close()


# --- --shell-job ----------------------------------------------------------------------------

def test_shell_job(proc_tree, tmp_path):
    tree = proc_tree.shell_job(str(tmp_path / "count"))

    proc = checkpoint_cli(tree.pid, "--image-path", str(tmp_path / "without"))
    cs.assert_error(proc, 1, "--shell-job", criu_lines=True)
    err = proc.stderr
    assert "session" in err
    assert tree.alive()
    tree.wait_advancing()

    assert_ok(checkpoint_cli(tree.pid, "--image-path", str(tmp_path / "with"), "--shell-job", "--leave-running"))
    assert_images(tmp_path / "with")
    assert tree.alive()
    tree.wait_advancing()


def test_session_leader_in_an_outer_pid_namespace(proc_tree, tmp_path):
    """CRIU cannot dump a task whose session leader it cannot see; the error says what helps."""
    count = str(tmp_path / "count")
    outer = proc_tree(["unshare", "--pid", "--fork", "--kill-child", "busybox", "sh", "-c",
                       cs.COUNTER.format(path=count)], new_session=False, count_file=count)
    with open(f"/proc/{outer.pid}/task/{outer.pid}/children") as f:
        (inner,) = map(int, f.read().split())

    for flags in ((), ("--shell-job",)):
        proc = checkpoint_cli(inner, "--image-path", str(tmp_path / "img"), *flags)
        cs.assert_error(proc, 1, "outer pid namespace", "setsid", criu_lines=True)
        err = proc.stderr
        assert "--shell-job does not help" in err.splitlines()[0]
        assert not (tmp_path / "img").exists() or not any((tmp_path / "img").glob("*.img"))
        outer.wait_advancing()


def test_pages_followed_only_for_a_tree_that_fills_a_manifest_chunk(proc_tree, tmp_path, monkeypatch):
    """The pages images are checksummed while CRIU writes them (manifest.Follower) only for a tree whose
    memory fills at least one of the manifest's chunks: for a smaller one that thread could compute
    nothing. Either way the manifest is complete: both checkpoints verify."""
    from fastckpt import manifest

    followed = []

    class Counting(manifest.Follower):
        def __init__(self, image_path, *args, **kwargs):
            followed.append(image_path)
            super().__init__(image_path, *args, **kwargs)

    monkeypatch.setattr(manifest, "Follower", Counting)
    small = proc_tree.counter(str(tmp_path / "count"))
    size = 2 * manifest.CHUNK_SIZE
    big = proc_tree([sys.executable, "-c", f"import time; b = bytes(range(256)) * {size // 256}; time.sleep(600)"])
    page = os.sysconf("SC_PAGE_SIZE")

    def rss(pid):
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * page

    cs.wait_until(lambda: rss(big.pid) >= size, "the big process to fill its memory")
    for name, tree in (("small", small), ("big", big)):
        img = tmp_path / name
        fastckpt.checkpoint(pid=tree.pid, image_path=str(img), leave_running=True)
        manifest.verify(str(img))
    assert followed == [str(tmp_path / "big")]
