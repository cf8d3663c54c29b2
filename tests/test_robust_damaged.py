"""Robustness: CRIU restoring a damaged checkpoint is stopped by fastckpt's watchdog.

test_manifest.py covers damaged checkpoints being refused before CRIU runs.
This is the defence behind it (README, "Bounds"): should CRIU get a damaged
image anyway -- here the manifest and structure checks are bypassed in this
process -- and loop (a cut-short pages-*.img makes CRIU 4.2's restore loop,
writing its log as fast as it can), the watchdog stops it with a clear
CriuError, and everything it started is killed: no criu, no half-restored
process, no containment cgroup, and the log no longer grows.

The real CRIU's tasks may also outlive the stop (they hold CRIU's socket and
keep logging): a stand-in criu that forks such a task makes that certain, for a
process tree and for a container.  Should a restore hang, the tests end it
and what it started themselves, and fail.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import ckpt_support as cs
import restore_support as rs
import robust_support as rb

import fastckpt
from fastckpt import cgroups as fcg, criu_proc, manifest

pytestmark = pytest.mark.integration

LOG_LIMIT = 4 << 20  # bytes: the watchdog's bound for this test (fastckpt's own is 256 MiB)
BOUND = 60.0  # seconds: CRIU's loop writes ~25 MB/s of log, the watchdog looks every 0.5 s at most
PAGE = 4096


def tree_pids(images: str) -> list:
    """The pids of the checkpointed tree (core-<pid>.img)."""
    return sorted(int(n[5:-4]) for n in os.listdir(images) if n.startswith("core-") and n.endswith(".img"))


def pids_alive(pids) -> list:
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def _cut_pages(images: str) -> None:
    """Cut pages-1.img to half its pages: CRIU 4.2's restore then loops."""
    pages = os.path.join(images, "pages-1.img")
    size = os.path.getsize(pages)
    assert size >= 2 * PAGE
    with open(pages, "r+b") as f:
        f.truncate(size // PAGE // 2 * PAGE)


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

    _cut_pages(images)

    # fastckpt would refuse this checkpoint before CRIU runs (test_manifest.py): let CRIU have it
    monkeypatch.setattr(manifest, "verify", lambda *a, **kw: None)
    monkeypatch.setattr(manifest, "verify_overlapped", lambda *a, **kw: None)
    monkeypatch.setattr(manifest, "check_structure", lambda *a, **kw: None)
    # a small log bound (criu_proc.run's log_limit is bound when the function is defined: pass it)
    monkeypatch.setattr(criu_proc, "LOG_LIMIT", LOG_LIMIT)
    monkeypatch.setattr(criu_proc, "run", functools.partial(criu_proc.run, log_limit=LOG_LIMIT))

    log = os.path.join(images, "restore.log")
    t0 = time.monotonic()
    outcome: dict = {}

    def work():  # in a thread: should the restore hang (see STOP_BUG), the test can still end it
        try:
            fastckpt.restore(image_path=images)
        except BaseException as e:  # noqa: B902 -- checked below
            outcome["error"] = e

    worker = threading.Thread(target=work, name="restore")
    worker.start()
    worker.join(BOUND)
    elapsed = time.monotonic() - t0
    if worker.is_alive():
        for d in rb.restore_cgroups(os.getpid()):
            fcg.kill_all(d)
        worker.join(30)
        pytest.fail(f"the restore did not end within {BOUND:g} s: {STOP_BUG}")
    e = outcome.get("error")
    assert isinstance(e, fastckpt.CriuError), f"expected a CriuError, got {e!r}"
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


# --- a CRIU whose forked task goes on after the watchdog stopped CRIU -------------------------------------

# Seen with the real CRIU (the test above's set-up, a container, 4 MiB bound: ~1 run in 3): the watchdog
# kills criu, but a task criu forked for the restore goes on looping, holding CRIU's socket and writing its
# log; fastckpt then waits for ever in libcriu's recv, and the log grows by ~50 MB/s (30 GB in 10 minutes).
# Made certain here with a stand-in for criu that does just that: once it is in the cgroup fastckpt puts
# CRIU in, it forks a task that appends 64 KiB to CRIU's log every 10 ms, and sleeps.
LOOPING_CRIU = """#!/bin/sh
start=$(grep {freezer_line} /proc/$PPID/cgroup); i=0  # fastckpt's: it may have moved us before we look
while [ "$(grep {freezer_line} /proc/self/cgroup)" = "$start" ] && [ $i -lt 300 ]; do sleep 0.01; i=$((i+1)); done
( while :; do head -c 65536 /dev/zero | tr '\\0' x >> "{log}"; sleep 0.01; done ) &
exec sleep 1000
"""

# `fastckpt` with the watchdog's 4 MiB log bound (criu_proc.run's log_limit is bound at definition: passed)
SMALL_LOG_BOUND = """
import functools, sys
from fastckpt import criu_proc
from fastckpt.cli import main
criu_proc.run = functools.partial(criu_proc.run, log_limit=4 << 20)
sys.exit(main(sys.argv[1:]))
"""
HANG = 5.0  # seconds: after the watchdog's stop, fastckpt's clean-up takes well under one


def restore_with_looping_criu(args, workdir: str, log: str, clean) -> rs.Result:
    """Run `fastckpt ARGS` with LOOPING_CRIU as its criu and a 4 MiB log bound; if it has not ended HANG s
    after the log passed the bound, kill it and what it started (CLEAN(cli_pid)) and fail."""
    criu = os.path.join(workdir, "looping-criu")
    with open(criu, "w") as f:
        f.write(LOOPING_CRIU.format(log=log, freezer_line=cs.FREEZER_LINE))
    os.chmod(criu, 0o755)
    env = dict(os.environ, FASTCKPT_CRIU=criu, FASTCKPT_KDAT_CACHE="0")
    out, err = os.path.join(workdir, ".looping-out"), os.path.join(workdir, ".looping-err")
    with open(os.devnull, "rb") as null, open(out, "w") as o, open(err, "w") as e:
        p = subprocess.Popen([sys.executable, "-c", SMALL_LOG_BOUND, *args], stdin=null, stdout=o, stderr=e,
                             env=env, start_new_session=True)
    try:
        rb.wait_for(lambda: p.poll() is not None or os.path.exists(log) and os.path.getsize(log) > 4 << 20,
                    "CRIU's log to pass the watchdog's bound", timeout=60, interval=0.05)
        rc = p.wait(HANG)
    except (subprocess.TimeoutExpired, AssertionError):
        size = os.path.getsize(log) if os.path.exists(log) else 0
        try:
            with open(f"/proc/{p.pid}/task/{p.pid}/wchan") as f:
                wchan = f.read()
        except OSError:
            wchan = "?"
        p.kill()
        p.wait()
        clean(p.pid)
        raise AssertionError(f"fastckpt restore did not end within {HANG:g} s after CRIU's log passed the "
                             f"watchdog's bound (waiting in {wchan}); the log grew to {size >> 20} MiB") from None
    with open(out) as o, open(err) as e:
        res = rs.Result(list(args), rc, o.read(), e.read())
    res.pid = p.pid  # the command's: its CRIU containment cgroup is named after it
    return res


def assert_stopped(r: rs.Result, log: str) -> None:
    rb.assert_error(r, 1, "criu restore failed: CRIU's log grew past 4 MiB (CRIU looping?) and CRIU was stopped",
                    f"(log: {log})", criu_lines=None)
    size = os.path.getsize(log)
    time.sleep(0.5)
    assert os.path.getsize(log) == size, "CRIU's log still grows after the watchdog stopped CRIU"


STOP_BUG = ("when the watchdog stops CRIU after CRIU forked the tasks it restores, fastckpt can hang for "
            "ever in libcriu's recv -- the forked tasks hold CRIU's socket -- while they go on writing CRIU's "
            "log (real CRIU, container, 4 MiB bound: ~1 run in 3, the log at 30 GB after 10 minutes): "
            "Watchdog._kill kills criu's pid only, and the cgroup that holds all CRIU started is killed only "
            "once libcriu returns")


def test_watchdog_stop_ends_a_process_tree_restore_whatever_criu_forked(proc_tree, tmp_path, restored):
    """(Was a bug, fixed in da1cf23: see STOP_BUG.)"""
    tree = proc_tree.counter(str(tmp_path / "count"))
    tree.wait_advancing()
    images = str(tmp_path / "images")
    fastckpt.checkpoint(pid=tree.pid, image_path=images)
    assert tree.wait_gone() == -9
    log = os.path.join(images, "restore.log")

    def clean(cli_pid):
        for d in rb.restore_cgroups(cli_pid):
            fcg.kill_all(d)
            rb.wait_for(lambda: not rs.cgroup_procs(d), f"{d} to empty", timeout=10)
            os.rmdir(d)

    r = restore_with_looping_criu(["restore", "--image-path", images], str(tmp_path), log, clean)
    assert_stopped(r, log)
    # its own containment cgroup (the host's other restores, by other tests, have theirs)
    assert not rb.restore_cgroups(r.pid), rb.restore_cgroups(r.pid)


def test_watchdog_stop_ends_a_container_restore_whatever_criu_forked(containers, tmp_path):
    """(Was a bug, fixed in da1cf23: see STOP_BUG.)"""
    ct = containers(0)
    images = str(tmp_path / "images")
    r = rb.run_cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path))
    assert r.returncode == 0, str(r)
    log = os.path.join(images, "restore.log")

    def clean(cli_pid):
        rs.force_clean(ct.id, ct.root, str(tmp_path))

    r = restore_with_looping_criu(["--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle,
                                   ct.id], str(tmp_path), log, clean)
    assert_stopped(r, log)
    rs.assert_nothing_left(ct.id, ct.root, str(tmp_path))


SMALL_LOG_BOUND_UNCHECKED = SMALL_LOG_BOUND.replace("from fastckpt.cli import main", """from fastckpt.cli import main
from fastckpt import manifest
manifest.verify = manifest.verify_overlapped = lambda *a, **kw: None
manifest.check_structure = lambda *a, **kw: None""")


def test_watchdog_stop_says_it_in_one_line(proc_tree, tmp_path, restored):
    """The real CRIU looping on a cut-short pages image, stopped by the watchdog: the command prints its one
    `fastckpt: ...` line (CRIU's own error lines may follow it, indented), nothing else."""
    tree = proc_tree.counter(str(tmp_path / "count"))
    tree.wait_advancing()
    images = str(tmp_path / "images")
    fastckpt.checkpoint(pid=tree.pid, image_path=images)
    assert tree.wait_gone() == -9
    pids = tree_pids(images)
    restored.extend(pids)
    rb.wait_for(lambda: not pids_alive(pids), f"pids {pids} to be free", interval=0.02)
    _cut_pages(images)
    r = rs.run([sys.executable, "-c", SMALL_LOG_BOUND_UNCHECKED, "restore", "--image-path", images], str(tmp_path))
    rb.assert_error(r, 1, "CRIU was stopped", criu_lines=None)


# --- CRIU dies half-way through a restore ---------------------------------------------------------------

# A criu that dies (crashes, is OOM-killed) after it forked a task of the restore: the task goes on (here it
# let go of CRIU's socket, so libcriu sees CRIU go at once).  README: a failed restore removes all it made.
DYING_CRIU = """#!/bin/sh
start=$(grep {freezer_line} /proc/$PPID/cgroup); i=0  # fastckpt's: it may have moved us before we look
while [ "$(grep {freezer_line} /proc/self/cgroup)" = "$start" ]; do
    i=$((i+1)); [ $i -gt 100 ] && exit 1  # not a restore fastckpt contains (its version query): just fail
    sleep 0.01
done
( eval "exec $2>&-"; exec sleep 1000 ) &
echo $! > "{pid_file}"
exit 1
"""


def _left_alive(pid_file: str) -> list:
    try:
        with open(pid_file) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return []
    return [pid] if pids_alive([pid]) and (rs.proc_stat(pid) or ["Z"])[0] != "Z" else []


@pytest.mark.parametrize("kind", ["process-tree", "container"])
def test_criu_dying_half_way_leaves_nothing(kind, proc_tree, containers, tmp_path, restored):
    pid_file = str(tmp_path / "forked.pid")
    criu = tmp_path / "dying-criu"
    criu.write_text(DYING_CRIU.format(pid_file=pid_file, freezer_line=cs.FREEZER_LINE))
    criu.chmod(0o755)
    env = {"FASTCKPT_CRIU": str(criu), "FASTCKPT_KDAT_CACHE": "0"}
    images = str(tmp_path / "images")
    if kind == "process-tree":
        tree = proc_tree(["sleep", "1000"])
        fastckpt.checkpoint(pid=tree.pid, image_path=images)
        assert tree.wait_gone() == -9
        args = ["restore", "--image-path", images]
    else:
        ct = containers(0)
        r = rb.run_cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path))
        assert r.returncode == 0, str(r)
        args = ["--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id]
    cli = rb.Cli(args, str(tmp_path), env=env)
    try:
        r = cli.wait(60)
        assert os.path.exists(pid_file), "the stand-in criu forked nothing: not contained by fastckpt?"
        rb.assert_error(r, 1, "criu restore failed", criu_lines=None)
        rb.wait_for(lambda: not _left_alive(pid_file), "the task the dead criu forked to be killed", timeout=10,
                    interval=0.02)
        assert not rb.restore_cgroups(cli.pid), rb.restore_cgroups(cli.pid)
        if kind == "container":
            rs.assert_nothing_left(ct.id, ct.root, str(tmp_path))
    finally:
        for pid in _left_alive(pid_file):
            os.kill(pid, signal.SIGKILL)
        for d in rb.restore_cgroups(cli.pid):
            rb.wait_for(lambda: not rs.cgroup_procs(d), f"{d} to empty", timeout=10)
            os.rmdir(d)
