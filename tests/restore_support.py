"""Helpers of the restore tests (tests/test_restore.py): containers, checkpoints, restores and leak checks.

Everything here touches only what a test made: containers live in a private
runc root with uuid-based ids (prefix ``fcr-``), processes are killed by the
pids the test holds (never by name), and every check of "nothing left" looks
for the test's own ids and directories only.

The counter of the test containers writes its value to /tmp/count and also
appends it to /tmp/count.log: the log of a container that really was restored
reads 1, 2, ..., n without a gap or a restart, so "the counter went on from
where it stopped" is checked exactly, not by timing.

No timing assertions: every wait has a generous deadline.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import uuid
from typing import Dict, List, Optional, Sequence

# the shared fixture layer's names, for the tests that use them as ``rs.NAME``
from fastckpt_testing import containers as tc
from fastckpt_testing.cli import (  # noqa: F401
    Result, all_pids, assert_error, criu_pids_in, fastckpt_cmd, kill_pid, run, run_quiet)
from fastckpt_testing.containers import (  # noqa: F401
    CONTAINER_COUNTER, COUNTER, Container, Counter, cgroup_dirs, cgroup_procs, compress, copy_bundle,
    drop_runc_v2_stale_cgroup,
    frozen_cgroups, read_log, remove_lock_files, runc, runc_ids as runc_known)
from fastckpt_testing.plugin import integration_skip_reason as skip_reason, torn_down  # noqa: F401
from fastckpt_testing.waiting import WAIT, proc_alive, read_int, wait_until  # noqa: F401

CLI_TIMEOUT = 90.0


# --- processes ---------------------------------------------------------------------

def proc_stat(pid: int) -> Optional[List[str]]:
    """Fields 3.. of /proc/PID/stat (state, ppid, pgrp, session, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def pids_using(pid: int) -> List[int]:
    """Processes (zombies too) that are PID or have it as process group or session id."""
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st and (p == pid or int(st[2]) == pid or int(st[3]) == pid):
            out.append(p)
    return out


def set_subreaper(on: bool) -> None:
    """PR_SET_CHILD_SUBREAPER for this process: orphans of our descendants become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1 if on else 0, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def reap_session(sid: int, timeout: float = WAIT) -> List[int]:
    """Wait until no process uses SID as pid, process group or session; reap those that are our children.

    Returns what is still there at the deadline (for the caller to report).
    """
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while True:
        left = pids_using(sid)
        if not left:
            return []
        for p in left:
            st = proc_stat(p)
            if st and st[0] == "Z" and int(st[1]) == me:
                try:
                    os.waitpid(p, 0)
                except ChildProcessError:
                    pass
        if time.monotonic() > deadline:
            return pids_using(sid)
        time.sleep(0.02)


def kill_tree(pid: int, group: bool = True) -> None:
    """SIGKILL PID and (GROUP) its process group: a tree started in a session of its own."""
    for fn in ((os.killpg, os.kill) if group else (os.kill,)):
        try:
            fn(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --- cgroups, mounts, criu: what a container (or a failed restore) may leave -------------

def pids_in_cgroup_named(cid: str) -> List[int]:
    """Processes whose cgroup (any hierarchy) is named CID (its last path component)."""
    out = []
    for p in all_pids():
        try:
            with open(f"/proc/{p}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        if any(l.split(":", 2)[2].rstrip("/").split("/")[-1] == cid for l in lines if l.count(":") >= 2):
            out.append(p)
    return out


def mounts_under(path: str) -> List[str]:
    """Mount points at or below PATH (fastckpt.runc's reading of /proc/self/mountinfo)."""
    from fastckpt.runc import _mounts_under

    return _mounts_under(os.path.realpath(path))


def leftovers(cid: str, root: str, workdir: Optional[str] = None) -> List[str]:
    """What a container CID (gone, or never made) left behind: state dir, cgroups, processes, mounts, criu."""
    out = []
    state_dir = os.path.join(root, cid)
    if os.path.lexists(state_dir):
        out.append(f"state dir {state_dir} ({sorted(os.listdir(state_dir)) if os.path.isdir(state_dir) else ''})")
    dirs = cgroup_dirs(cid)
    if dirs:
        tasks = sorted({t for d in dirs for t in cgroup_procs(d)})
        out.append(f"{len(dirs)} cgroup dirs named {cid} ({dirs[0]}, ...; tasks in them: {tasks or 'none'})")
    out += [f"process {p} in cgroup {cid}" for p in pids_in_cgroup_named(cid)]
    out += [f"mount {m}" for m in mounts_under(root)]
    if workdir:
        out += [f"mount {m}" for m in mounts_under(workdir)]
        out += [f"criu process {p} working in {workdir}" for p in criu_pids_in(workdir)]
    return out


def assert_nothing_left(cid: str, root: str, workdir: Optional[str] = None) -> None:
    """Nothing of CID is left (processes may take a moment to be reaped: waited for)."""
    try:
        wait_until(lambda: not leftovers(cid, root, workdir), f"{cid} to leave nothing behind", timeout=10)
    except AssertionError:
        raise AssertionError(f"{cid} left: " + "; ".join(leftovers(cid, root, workdir))) from None


def force_clean(cid: str, root: str, workdir: Optional[str] = None) -> None:
    """Last resort of the fixtures: remove whatever leftovers() finds (criu below WORKDIR, processes in
    cgroups named CID, mounts, then the tear-down of CID with every cgroup directory named after it)."""
    for p in criu_pids_in(workdir) if workdir else []:
        kill_pid(p)
    for p in pids_in_cgroup_named(cid):
        kill_pid(p)
    for base in (root, workdir):
        for m in sorted(mounts_under(base), key=len, reverse=True) if base else []:
            subprocess.run(["umount", "-l", m], stdin=subprocess.DEVNULL, capture_output=True)
    tc.teardown(root, cid, cgroup_dirs(cid))


def new_id(tag: str = "") -> str:
    return tc.new_id(tag, prefix="fcr")


# --- containers ------------------------------------------------------------------------

def make_bundle(path: str, script: str = CONTAINER_COUNTER, network_ns: Optional[str] = "") -> str:
    from fastckpt import bundle as fb

    return fb.make_bundle(path, args=["sh", "-c", script], network_ns=network_ns)


class Env:
    """A test's world: a private runc root, a work directory, and everything started in them.

    ``cleanup()`` kills and deletes every container it knows of (started or
    restored), kills the process trees it was given, then checks that nothing
    of them is left (state dirs, cgroups, mounts, criu processes) and removes
    what is; it returns what had to be removed.
    """

    def __init__(self, root: str, workdir: str):
        self.root = root
        self.workdir = workdir
        self.containers: Dict[str, Container] = {}
        self.trees: List[int] = []  # pids of process trees (sessions) to kill
        self.reaper = False

    @classmethod
    def scoped(cls, root: str, workdir: str, what: str = "cleanup"):
        """A fixture's body: an Env, then its cleanup; the test fails with what had to be removed."""
        e = cls(root, workdir)
        yield from torn_down(e, e.cleanup, what)

    # containers
    def bundle(self, name: Optional[str] = None, script: str = CONTAINER_COUNTER,
               network_ns: Optional[str] = "") -> str:
        return make_bundle(os.path.join(self.workdir, name or f"bundle-{uuid.uuid4().hex[:8]}"), script,
                           network_ns)

    def copy_bundle(self, src: str, name: Optional[str] = None) -> str:
        return copy_bundle(src, os.path.join(self.workdir, name or f"bundle-{uuid.uuid4().hex[:8]}"))

    def track(self, cid: str, bundle: str) -> Container:
        """A container CID with BUNDLE; the id is cleaned up at the end (ids are what cleanup needs)."""
        if cid not in self.containers:
            self.containers[cid] = Container(cid, bundle, self.root)
        ct = self.containers[cid]
        return ct if ct.bundle == bundle else Container(cid, bundle, self.root)

    def start(self, bundle: Optional[str] = None, cid: Optional[str] = None, count_to: int = 3) -> Container:
        """`runc run -d` a container (stdio /dev/null) and wait until its counter reaches COUNT_TO."""
        bundle = bundle or self.bundle()
        ct = self.track(cid or new_id(), bundle)
        rc = run_quiet(["runc", "--root", self.root, "run", "-d", "-b", bundle, ct.id])
        assert rc == 0, f"runc run {ct.id} failed (exit {rc})"
        if count_to:
            ct.counter.wait_reach(count_to)
        return ct

    def fastckpt(self, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
        return run(fastckpt_cmd("--root", self.root, *args), self.workdir, timeout)

    def checkpoint(self, ct: Container, images: str, *extra: str) -> int:
        """`fastckpt checkpoint` the container; returns the value its counter stopped at."""
        r = self.fastckpt("checkpoint", "--image-path", images, *extra, ct.id)
        assert r.returncode == 0, str(r)
        if "--leave-running" not in extra:
            assert ct.state() is None, f"{ct.id} is still known to runc after its checkpoint"
        return ct.counter.last()

    def runc_checkpoint(self, ct: Container, images: str) -> int:
        rc = run_quiet(["runc", "--root", self.root, "checkpoint", "--image-path", images, ct.id])
        assert rc == 0, f"runc checkpoint {ct.id} failed (exit {rc}); see {images}/dump.log"
        assert ct.state() is None
        return ct.counter.last()

    def restore(self, cid: str, images: str, bundle: str, *extra: str, detach: bool = True) -> Result:
        """`fastckpt restore [-d] --image-path IMAGES -b BUNDLE CID`; the id is tracked for cleanup."""
        self.track(cid, bundle)
        args = ["restore"] + (["-d"] if detach else []) + ["--image-path", images, "-b", bundle, *extra, cid]
        return self.fastckpt(*args)

    # process trees
    def start_tree(self, args: Sequence[str]) -> subprocess.Popen:
        """ARGS in a session of its own, stdio /dev/null; killed (with its group) at cleanup."""
        if not self.reaper:
            # orphans of the tree (a `sleep` whose shell was killed) come back to us to be reaped:
            # their pid, process group and session must be free again before a restore
            set_subreaper(True)
            self.reaper = True
        with open(os.devnull, "r+b") as null:
            p = subprocess.Popen(list(args), stdin=null, stdout=null, stderr=null, start_new_session=True)
        self.trees.append(p.pid)
        return p

    # teardown
    def cleanup(self) -> List[str]:
        for ct in reversed(list(self.containers.values())):
            try:
                ct.destroy(force=False)  # what it leaves is found below, and reported
            except Exception:  # keep cleaning
                pass
        found: List[str] = []
        for pid in self.trees:
            kill_tree(pid)
            left = reap_session(pid, timeout=10)
            if left:
                found.append(f"processes {left} of session {pid}")
        if self.reaper:
            set_subreaper(False)
            self.reaper = False
        for cid in self.containers:
            if leftovers(cid, self.root, self.workdir):
                try:  # a process just killed may take a moment to leave its cgroup
                    wait_until(lambda: not leftovers(cid, self.root, self.workdir), "", timeout=5)
                    continue
                except AssertionError:
                    pass
                found += leftovers(cid, self.root, self.workdir)
                force_clean(cid, self.root, self.workdir)
        for base in (self.root, self.workdir):
            for m in sorted(mounts_under(base), key=len, reverse=True):
                found.append(f"mount {m}")
                subprocess.run(["umount", "-l", m], stdin=subprocess.DEVNULL, capture_output=True)
        for p in criu_pids_in(self.workdir):
            found.append(f"criu process {p}")
            kill_tree(p, group=False)
        for cid in self.containers:
            remove_lock_files(cid)
        return found


def checked_env(runc_root: str, tmp_path, what: str = "the test"):
    """The body of an `env` fixture (`yield from rs.checked_env(runc_root, tmp_path)`): an Env in the test's
    private runc root and directory; afterwards everything it started or restored is removed, and the
    test fails if anything was left (containers runc still lists included)."""
    e = Env(runc_root, str(tmp_path))

    def cleanup() -> List[str]:
        problems = e.cleanup()
        if runc_known(runc_root):
            problems.append(f"runc still lists {runc_known(runc_root)}")
        return problems

    yield from torn_down(e, cleanup, f"{what} left (now removed)")


def lo_state(ct: Container) -> str:
    """`ip addr show lo` in the container."""
    r = ct.exec("ip", "addr", "show", "lo")
    assert r.returncode == 0, f"runc exec {ct.id} ip addr show lo: {r.stderr}"
    return r.stdout


def lo_is_up(text: str) -> bool:
    first = text.splitlines()[0] if text else ""
    flags = first[first.find("<") + 1:first.find(">")].split(",") if "<" in first else []
    return "UP" in flags and "inet 127.0.0.1/8" in text

