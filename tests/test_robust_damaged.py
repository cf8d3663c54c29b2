"""Robustness: CRIU restoring a damaged checkpoint is stopped by fastckpt's watchdog.

test_manifest.py covers damaged checkpoints being refused before CRIU runs.
This is the defence behind it (README, "Bounds"): should CRIU get a damaged
image anyway -- here the manifest and structure checks are bypassed in this
process -- and loop (a cut-short pages-*.img makes CRIU 4.2's restore loop,
writing its log as fast as it can), the watchdog stops it with a clear
CriuError, and everything it started is killed: no criu, no half-restored
process, no containment cgroup, and the log no longer grows.
"""
from __future__ import annotations

import functools
import os
import time

import pytest

import restore_support as rs
import robust_support as rb

import fastckpt
from fastckpt import criu_proc, manifest

pytestmark = pytest.mark.integration

LOG_LIMIT = 4 << 20  # bytes: the watchdog's bound for this test (fastckpt's own is 256 MiB)
BOUND = 60.0  # seconds: CRIU's loop writes ~25 MB/s of log, the watchdog looks every 0.5 s at most
PAGE = 4096


def tree_pids(images: str) -> list:
    """The pids of the checkpointed tree (core-<pid>.img)."""
    return sorted(int(n[5:-4]) for n in os.listdir(images) if n.startswith("core-") and n.endswith(".img"))


def pids_alive(pids) -> list:
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


@pytest.fixture
def restored(tmp_path):
    """Pids (sessions) that a restore may have brought back: killed and reaped at the end, whatever happened."""
    pids: list = []
    yield pids
    for pid in pids:
        rs.kill_tree(pid)
        rs.reap_session(pid, timeout=10)
    for p in rs.criu_pids_in(str(tmp_path)):
        rs.kill_tree(p, group=False)


def test_watchdog_stops_criu_looping_on_a_cut_short_pages_image(proc_tree, tmp_path, monkeypatch, restored):
    tree = proc_tree.counter(str(tmp_path / "count"))
    tree.wait_advancing()
    images = str(tmp_path / "images")
    fastckpt.checkpoint(pid=tree.pid, image_path=images)  # the tree is killed once dumped
    assert tree.wait_gone() == -9
    pids = tree_pids(images)
    assert tree.pid in pids
    restored.extend(pids)
    # a restore needs the tree's pids free: its shell's `sleep` too
    rb.wait_for(lambda: not pids_alive(pids), f"pids {pids} to be free", interval=0.02)

    pages = os.path.join(images, "pages-1.img")
    size = os.path.getsize(pages)
    assert size >= 2 * PAGE
    with open(pages, "r+b") as f:
        f.truncate(size // PAGE // 2 * PAGE)

    # fastckpt would refuse this checkpoint before CRIU runs (test_manifest.py): let CRIU have it
    monkeypatch.setattr(manifest, "verify", lambda *a, **kw: None)
    monkeypatch.setattr(manifest, "check_structure", lambda *a, **kw: None)
    # a small log bound (criu_proc.run's log_limit is bound when the function is defined: pass it)
    monkeypatch.setattr(criu_proc, "LOG_LIMIT", LOG_LIMIT)
    monkeypatch.setattr(criu_proc, "run", functools.partial(criu_proc.run, log_limit=LOG_LIMIT))

    log = os.path.join(images, "restore.log")
    t0 = time.monotonic()
    with pytest.raises(fastckpt.CriuError) as ei:
        fastckpt.restore(image_path=images)
    elapsed = time.monotonic() - t0
    e = ei.value
    assert elapsed < BOUND, f"the watchdog took {elapsed:.0f}s to stop CRIU"
    assert e.op == "restore"
    assert "CRIU was stopped" in str(e) and f"grew past {LOG_LIMIT >> 20} MiB" in str(e), str(e)
    assert e.log_path == log and f"(log: {log})" in str(e)
    assert os.path.getsize(log) > LOG_LIMIT  # CRIU really looped

    # all CRIU started is gone
    assert not rb.criu_left(str(tmp_path)), f"criu left: {rs.criu_pids_in(str(tmp_path))}"
    rb.wait_for(lambda: not pids_alive(pids), "no restored process to be left", timeout=10, interval=0.02)
    assert not rb.restore_cgroups(os.getpid()), rb.restore_cgroups(os.getpid())
    # and nothing writes CRIU's log any more
    size = os.path.getsize(log)
    time.sleep(0.5)
    assert os.path.getsize(log) == size, "CRIU's log still grows after the watchdog stopped CRIU"
