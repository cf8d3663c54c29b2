"""fastckpt.Session: one warm `criu service` for repeated API checkpoints."""
from __future__ import annotations

import os

import fastckpt
from fastckpt import manifest


def _criu_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] not in "ZX"
    except OSError:
        return False


def test_session_checkpoints_through_one_warm_criu(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    with fastckpt.Session() as s:
        service_pid = s.pid
        assert _criu_alive(service_pid)
        for i in range(3):
            img = tmp_path / f"snap{i}"
            res = s.checkpoint(pid=tree.pid, image_path=str(img), leave_running=True)
            assert res.pid == tree.pid
            assert manifest.verify(str(img)) is not None  # complete, with its manifest
        assert _criu_alive(service_pid), "the service must stay up between operations"
        with open(s.log_path) as f:  # each operation was a connection to the session's CRIU
            assert f.read().count("Connected.") == 3
        assert tree.alive()
    assert not os.path.exists(s.address)
    assert not _criu_alive(service_pid), "closing the session must stop its criu service"
    assert tree.alive()


def test_session_restores_a_process_tree(proc_tree, tmp_path):
    import time

    count = tmp_path / "count"
    tree = proc_tree.counter(str(count))
    img = str(tmp_path / "img")
    with fastckpt.Session() as s:
        s.checkpoint(pid=tree.pid, image_path=img)
        tree.popen.wait(5)
        # the restore needs the tree's pids free again; pid 1 reaps the tree's other processes later
        pids = [int(n[5:-4]) for n in os.listdir(img) if n.startswith("core-") and n.endswith(".img")]
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        before = int(count.read_text())
        r = s.restore(image_path=img)
    try:
        assert r.pid == tree.pid
        deadline = time.monotonic() + 5
        while int(count.read_text() or 0) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(count.read_text()) > before, "the restored counter does not advance"
    finally:
        os.killpg(r.pid, 9)
