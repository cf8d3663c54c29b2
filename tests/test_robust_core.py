"""Robustness of the core, as reviewed in issue 12: a pause from outside during a dump, a process tree
restored right after its checkpoint, a read-only image directory, the lock of a process-tree restore.

Real CRIU, real runc containers (private runc roots, uuid ids), real process trees; everything a test
starts is cleaned up by the fixtures.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

import ckpt_support as cs
import restore_support as rs
import robust_support as rb

import fastckpt
from fastckpt import locks, proctree

pytestmark = pytest.mark.integration


# --- a pause by someone else while CRIU dumps ---------------------------------------------------------

@pytest.mark.parametrize("leave_running", [False, True], ids=["checkpoint", "leave-running"])
def test_pause_from_outside_during_the_dump(containers, tmp_path, leave_running):
    """`runc pause` while CRIU writes the pages: CRIU would wait for ever (runc's own checkpoint hangs the
    same way), and Ctrl-C was held back. fastckpt stops CRIU within seconds, says why, leaves nothing that
    looks like a checkpoint, and leaves the container paused as its user asked; resumed, it runs on."""
    mib = 512
    ct = containers(mib)
    images = str(tmp_path / "images")
    args = ["--root", ct.root, "checkpoint", "--image-path", images] + (["--leave-running"] if leave_running else [])
    cli = rb.Cli(args + [ct.id], str(tmp_path))
    pages = os.path.join(images, "pages-1.img")
    rb.wait_for(lambda: (os.path.exists(pages) and os.path.getsize(pages) > (64 << 20)) or not cli.running(),
                "CRIU to write pages", timeout=60)
    assert cli.running(), "the dump ended before it could be paused (too small a container?)"
    t0 = time.monotonic()
    r = cs.runc(ct.root, "pause", ct.id)
    assert r.returncode == 0, r.stderr
    res = cli.wait(timeout=90)
    took = time.monotonic() - t0
    rb.assert_error(res, 1, "paused (frozen) by someone else while CRIU dumped it", "the container stays paused",
                    criu_lines=None)
    assert took < 45, f"fastckpt took {took:.1f} s to give up on a paused container"
    assert not rb.checkpoint_files(images), rb.checkpoint_files(images)
    assert not rb.criu_left(str(tmp_path))
    # the pause is respected: runc says paused, the freezer says FROZEN, the counter stands still
    assert ct.status() == "paused", ct.status()
    assert ct.freezer_state() == "FROZEN"
    before = ct.counter.last()
    time.sleep(0.5)
    assert ct.counter.last() == before
    # resumed by its user, it runs on, memory intact
    assert cs.runc(ct.root, "resume", ct.id).returncode == 0
    ct.assert_running_thawed_advancing()
    ct.assert_memory_intact()


def test_ctrl_c_during_a_dump_hung_by_a_pause(containers, tmp_path):
    """A Ctrl-C while CRIU is stuck on the paused container: (was: no effect, for ever) fastckpt stops CRIU,
    exits 130 and says that nothing was checkpointed and that the container is paused by someone else."""
    import signal

    ct = containers(512)
    images = str(tmp_path / "images")
    cli = rb.Cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path))
    pages = os.path.join(images, "pages-1.img")
    rb.wait_for(lambda: (os.path.exists(pages) and os.path.getsize(pages) > (64 << 20)) or not cli.running(),
                "CRIU to write pages", timeout=60)
    assert cli.running(), "the dump ended before it could be paused"
    assert cs.runc(ct.root, "pause", ct.id).returncode == 0
    cli.signal_group(signal.SIGINT)
    res = cli.wait(timeout=90)
    rb.assert_error(res, 130, f"interrupted: nothing was checkpointed; container {ct.id!r} is paused "
                    "(by someone else, while the checkpoint ran)", criu_lines=None)
    assert not rb.checkpoint_files(images), rb.checkpoint_files(images)
    assert not rb.criu_left(str(tmp_path))
    assert ct.status() == "paused"
    assert cs.runc(ct.root, "resume", ct.id).returncode == 0
    ct.assert_running_thawed_advancing()
    ct.assert_memory_intact()


def test_pause_that_comes_before_the_watchdogs_first_look(tmp_path, monkeypatch):
    """CRIU seized the tasks, thawed the cgroup and wrote images, and someone paused the container again
    before the watchdog first looked (a thawed spell of a few ms; seen under load, when CRIU then hung until
    the dump's bound): the images CRIU wrote tell, and the pause is found."""
    from fastckpt import criu_proc

    monkeypatch.setattr(criu_proc.OutsidePause, "GRACE", 0.05)
    watch = criu_proc.OutsidePause(lambda: True, str(tmp_path))
    assert watch() is None and not watch.paused  # fastckpt's own freeze: CRIU has written nothing yet
    (tmp_path / "pages-1.img").write_bytes(b"x")
    assert watch() is None
    time.sleep(0.1)
    assert "paused (frozen) by someone else" in (watch() or ""), "the pause was not found"
    assert watch.paused


def test_dump_has_a_bound():
    """A dump is bounded like a restore: a minute plus 20 s a GB of the tree's resident memory."""
    from fastckpt import criu_proc

    bound = criu_proc.dump_bound(os.getpid())
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert 60 + rss / 50e6 <= bound < 60 + (rss + (1 << 30)) / 50e6


def test_watchdog_works_out_a_bound_given_as_a_function_off_the_callers_thread():
    """checkpoint gives the watchdog dump_bound as a function (a walk over the tree's processes, ~10 ms for
    200 of them): called on the watchdog's thread once CRIU runs, and its bound holds."""
    import subprocess
    import threading

    from fastckpt import criu_proc

    child = subprocess.Popen(["sleep", "60"])
    called = []

    def bound():
        called.append(threading.get_ident())
        return 0.2

    try:
        dog = criu_proc.Watchdog(child.pid, None, bound, 1 << 30)
        dog.start()
        assert child.wait(30) == -9, "the watchdog did not stop the process past its bound"
        dog.join(10)
        assert called == [dog.ident]
        assert dog.reason == "CRIU did not finish within 0.2 s and was stopped"
    finally:
        child.kill()
        child.wait()


# --- a process tree restored right after its checkpoint --------------------------------------------------

TREE = ("sleep 1000 & sleep 1000 & busybox sh -c 'sleep 1000; true' & "  # children, and a grandchild
        "i=0; while true; do i=$((i+1)); echo $i > {count}; sleep 0.1; done")


def _checkpoint_then_restore_at_once(tree, count: str, tmp_path, rounds: int, check=None) -> None:
    """ROUNDS of `checkpoint --pid` of TREE then its restore at once (no waiting in between), the rounds after
    the first of the restored (detached) tree; CHECK(round) after each restore. The restored tree is killed
    at the end, whatever happened."""
    pid, restored = tree.pid, None
    try:
        for round in range(rounds):
            images = str(tmp_path / f"images-{round}")
            r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(pid), "--image-path", images), str(tmp_path))
            assert r.returncode == 0, f"round {round}: {r}"
            if round == 0:
                tree.wait_gone()  # the first tree's root is the test's child
            pid_file = str(tmp_path / f"pid-{round}")
            r = rs.run(rs.fastckpt_cmd("restore", "--image-path", images, "--pid-file", pid_file), str(tmp_path))
            assert r.returncode == 0, f"round {round}: {r}"
            restored = int(open(pid_file).read())
            assert restored == pid
            if check:
                check(round)
            cs.wait_advancing(lambda: cs.read_int(count), f"the counter restored in round {round}")
    finally:
        if restored:
            rs.kill_tree(restored)


def test_tree_restored_right_after_its_checkpoint(proc_tree, tmp_path):
    """(Was: "Can't fork for PID: File exists": the ended tree's children stayed zombies until PID 1 reaped
    them, ~1.5 s here, holding their pids.) Five rounds of checkpoint then restore at once, each of a tree
    with children and a grandchild, the rounds after the first of a restored (detached) tree."""
    count = str(tmp_path / "count")
    tree = proc_tree(["busybox", "sh", "-c", TREE.format(count=count)], count_file=count)
    pid = tree.pid
    lasting: set = set()
    deadline = time.monotonic() + 30  # a loaded host may take a while to start the shell's children
    while len(lasting) < 4 and time.monotonic() < deadline:
        first = {p for p, _ in proctree.tree_members(pid)}
        time.sleep(0.3)
        lasting = first & {p for p, _ in proctree.tree_members(pid)}  # the counter's `sleep 0.1`s come and go
    assert len(lasting) >= 4, f"the tree has too few processes: {lasting}"

    def all_restored(round: int) -> None:
        now = {p for p, _ in proctree.tree_members(pid)}
        assert lasting <= now, f"round {round}: {sorted(lasting - now)} were not restored"

    _checkpoint_then_restore_at_once(tree, count, tmp_path, 5, all_restored)


def test_tree_whose_children_come_and_go_restores_right_after_its_checkpoint(proc_tree, tmp_path):
    """(Was, in CI: "Can't fork for PID: File exists ... was taken and is free now".) A child the tree forks
    between the checkpoint's start and CRIU's seizing it is dumped too; its zombie, reparented when the tree
    ends, keeps the tree's session id (the root's pid) until its new parent reaps it, and the checkpoint only
    waited for the processes it had seen before the dump. Here the test is that new parent (a subreaper),
    and a slow one, as PID 1 is on some hosts: it reaps the tree's orphans half a second after they died. A
    child of 10 ms lives at every moment; three rounds, each restored at once."""
    import threading

    count = str(tmp_path / "count")
    tree = proc_tree(["busybox", "sh", "-c", f"i=0; while true; do i=$((i+1)); echo $i > {count}; sleep 0.01; done"],
                     count_file=count)
    pid, me = tree.pid, os.getpid()
    stop = threading.Event()
    reaped: list = []

    def slow_reaper():
        dead_since: dict = {}
        while not stop.wait(0.02):
            for p in rs.pids_using(pid):
                st = rs.proc_stat(p)
                if p == pid and not tree.reaped or not st or st[0] != "Z" or int(st[1]) != me:
                    continue
                if time.monotonic() - dead_since.setdefault(p, time.monotonic()) >= 0.5:
                    try:
                        os.waitpid(p, 0)
                        reaped.append(p)
                    except ChildProcessError:
                        pass

    rs.set_subreaper(True)
    reaper = threading.Thread(target=slow_reaper, daemon=True)
    reaper.start()
    try:
        _checkpoint_then_restore_at_once(tree, count, tmp_path, 3)
        assert reaped, "no orphan of the tree came to the slow reaper: the test tested nothing"
    finally:
        rs.reap_session(pid, timeout=10)
        stop.set()
        reaper.join()
        rs.set_subreaper(False)


def test_a_pid_held_as_a_session_is_named_with_its_holder():
    """A restore needs the tree's root pid as its session id too: when no process has that pid but a zombie
    is still in its session, the error names that zombie and its parent (not "free now")."""
    from fastckpt.criu_failures import _pid_holder

    rs.set_subreaper(True)  # the leader's orphan comes to us, and stays a zombie until we reap it
    leader = subprocess.Popen(["setsid", "busybox", "sh", "-c", "sleep 0.3 & exit 0"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        leader.wait(10)
        sid = leader.pid
        orphans = rs.pids_using(sid)
        assert len(orphans) == 1, orphans
        assert _pid_holder(sid) == (f"is the session of 'sleep' (pid {orphans[0]}, parent pid {os.getpid()}), "
                                    "a running process")
        cs.wait_until(lambda: (rs.proc_stat(orphans[0]) or ["?"])[0] == "Z", "the orphan to die")
        assert _pid_holder(sid) == (f"is the session of 'sleep' (pid {orphans[0]}), a dead process (zombie) "
                                    f"that its parent (pid {os.getpid()}) has not reaped yet: try again once it has")
    finally:
        rs.reap_session(leader.pid, timeout=10)
        rs.set_subreaper(False)
    assert _pid_holder(sid) == "was taken and is free now: try again"


def test_restore_names_the_holder_of_a_taken_pid(proc_tree, tmp_path):
    """A restore whose pid is taken says by whom (here: a live process of the same pid, the tree itself,
    left running)."""
    tree = proc_tree.counter(str(tmp_path / "count"))
    images = str(tmp_path / "images")
    fastckpt.checkpoint(pid=tree.pid, image_path=images, leave_running=True)
    r = rs.run(rs.fastckpt_cmd("restore", "--image-path", images), str(tmp_path))
    rs.assert_error(r, 1, f"Can't fork for {tree.pid}: File exists: pid {tree.pid}, which the restored tree needs, "
                          "is taken by 'busybox'", criu_lines=True)
    tree.wait_advancing()


# --- a read-only image directory ---------------------------------------------------------------------

@pytest.fixture
def read_only_view(tmp_path):
    """Factory: read_only_view(src) -> a read-only bind mount of SRC (unmounted at teardown)."""
    made = []

    def make(src: str) -> str:
        dst = str(tmp_path / f"ro-{len(made)}")
        os.makedirs(dst)
        subprocess.run(["mount", "--bind", src, dst], check=True)
        made.append(dst)
        subprocess.run(["mount", "-o", "remount,bind,ro", dst], check=True)
        return dst

    yield make
    for d in reversed(made):
        subprocess.run(["umount", d], check=False)


def test_restore_from_a_read_only_image_directory(proc_tree, tmp_path, read_only_view):
    """(Was: "criu restore failed: libcriu returned -52 (log: .../restore.log)", naming a log that did not
    exist.) Refused before CRIU runs, saying why and what to do; with --work-path it restores."""
    tree = proc_tree.counter(str(tmp_path / "count"))
    images = str(tmp_path / "images")
    r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(tree.pid), "--image-path", images), str(tmp_path))
    assert r.returncode == 0, str(r)
    tree.wait_gone()
    ro = read_only_view(images)
    r = rs.run(rs.fastckpt_cmd("restore", "--image-path", ro), str(tmp_path))
    line = rb.assert_error(r, 1, f"the work directory {ro} is on a read-only file system",
                           "CRIU cannot write its log (restore.log) there", "--work-path", criu_lines=None)[0]
    assert "libcriu returned" not in line
    assert not os.path.exists(os.path.join(images, "restore.log"))
    with pytest.raises(fastckpt.ImageDirError) as e:
        fastckpt.restore(image_path=ro)
    assert e.value.errno == 30  # EROFS
    # what the message says to do works
    pid_file = str(tmp_path / "pid")
    work = str(tmp_path / "work")
    r = rs.run(rs.fastckpt_cmd("restore", "--image-path", ro, "--work-path", work, "--pid-file", pid_file),
               str(tmp_path))
    assert r.returncode == 0, str(r)
    pid = int(open(pid_file).read())
    try:
        assert pid == tree.pid
        cs.wait_advancing(lambda: cs.read_int(str(tmp_path / "count")), "the restored counter")
        assert os.path.exists(os.path.join(work, "restore.log"))
    finally:
        rs.kill_tree(pid)


# --- the lock of a process-tree restore -----------------------------------------------------------------

def test_process_tree_restore_takes_a_lock(proc_tree, tmp_path):
    """(Was: a process-tree restore took no lock, though the README said one operation per tree.)"""
    tree = proc_tree.counter(str(tmp_path / "count"))
    images = str(tmp_path / "images")
    fastckpt.checkpoint(pid=tree.pid, image_path=images)
    tree.wait_gone()
    with locks.process_images(images):
        r = rs.run(rs.fastckpt_cmd("restore", "--image-path", images), str(tmp_path))
        rs.assert_error(r, 1, f"the process tree in {images} is busy",
                        "another fastckpt checkpoint or restore is working on it")
        assert not os.path.exists(os.path.join(images, "restore.log")), "CRIU ran"
    # the same directory by another path is the same lock
    with locks.process_images(os.path.join(images, ".", "")):
        with pytest.raises(fastckpt.ContainerStateError):
            fastckpt.restore(image_path=images)
    res = fastckpt.restore(image_path=images)
    try:
        assert res.pid == tree.pid
        cs.wait_advancing(lambda: cs.read_int(str(tmp_path / "count")), "the restored counter")
    finally:
        rs.kill_tree(res.pid)
