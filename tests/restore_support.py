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
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

# shared with the checkpoint tests
import ckpt_support as cs
from ckpt_support import WAIT, RuncContainer, read_int, runc, wait_until  # noqa: F401

CLI_TIMEOUT = 90.0
LOCK_DIR = "/run/fastckpt/locks"  # fastckpt.locks.LOCK_DIR

# A counter ten times a second: /tmp/count holds the last value, /tmp/count.log all of them.
COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > {dir}/count; echo $i >> {dir}/count.log; "
           "sleep 0.1; done")
CONTAINER_COUNTER = COUNTER.format(dir="/tmp")


skip_reason = cs.integration_skip_reason  # one rule for every integration test


# --- waiting and reading -----------------------------------------------------------

def read_log(path: str) -> List[int]:
    """The values of a count.log (a last line being written is left out)."""
    try:
        with open(path) as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split("\n")[:-1]  # only complete lines
    return [int(l) for l in lines]


class Counter:
    """The counter files (count, count.log) in directory DIR."""

    def __init__(self, directory: str, what: str):
        self.dir = directory
        self.what = what

    @property
    def count_file(self) -> str:
        return os.path.join(self.dir, "count")

    @property
    def log_file(self) -> str:
        return os.path.join(self.dir, "count.log")

    def value(self) -> Optional[int]:
        return read_int(self.count_file)

    def log(self) -> List[int]:
        return read_log(self.log_file)

    def last(self) -> int:
        """The last value counted (the log's; count may be half-written)."""
        log = self.log()
        return log[-1] if log else 0

    def wait_reach(self, minimum: int) -> int:
        return wait_until(lambda: (v := self.last()) >= minimum and v, f"{self.what} to reach {minimum}")

    def wait_advancing(self) -> int:
        first = wait_until(self.value, f"{self.what} to exist")
        return wait_until(lambda: (v := self.value()) is not None and v > first and v,
                          f"{self.what} to advance past {first}")

    def assert_continued(self, stopped_at: int, more: int = 3) -> List[int]:
        """The counter went on from STOPPED_AT (its value at the checkpoint) and advances.

        Waits for MORE values past STOPPED_AT; the log must then read 1..n with
        no restart (a counter started afresh would write 1 again after
        STOPPED_AT) and no gap; /tmp/count must keep advancing as well.
        """
        assert stopped_at >= 1, f"{self.what} never counted before the checkpoint"
        wait_until(lambda: self.last() >= stopped_at + more, f"{self.what} to go on past {stopped_at}")
        log = self.log()
        assert log == list(range(1, len(log) + 1)), (
            f"{self.what} did not go on from {stopped_at}: its log is {compress(log)}")
        self.wait_advancing()
        return log


def compress(values: Sequence[int]) -> str:
    """1,2,3,4,1,2 -> '1..4, 1..2' (for messages)."""
    runs: List[List[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in runs) or "(empty)"


# --- processes ---------------------------------------------------------------------

def proc_stat(pid: int) -> Optional[List[str]]:
    """Fields 3.. of /proc/PID/stat (state, ppid, pgrp, session, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def proc_alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def all_pids() -> List[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


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

def _cgroup_mounts() -> Dict[str, str]:
    """Hierarchy key ('' for v2, else the comma-joined controllers) -> mount point."""
    out: Dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            fstype = parts[sep + 1]
            # the host's hierarchies only: a concurrent CRIU restore mounts them again for a
            # moment in a "cgyard" of its own, where the same directories would be found twice
            if fstype not in ("cgroup", "cgroup2") or parts[3] != "/" or not parts[4].startswith("/sys/fs/cgroup/"):
                continue
            out.setdefault(parts[4], parts[4])
    if cs.UNIFIED:  # one hierarchy, mounted over the v1 ones (still listed, hidden)
        return {"/sys/fs/cgroup": "/sys/fs/cgroup"}
    return out


def _own_cgroups() -> List[str]:
    with open("/proc/self/cgroup") as f:
        paths = {line.rstrip("\n").split(":", 2)[2] for line in f}
    return sorted(paths | {os.path.dirname(p) for p in paths})  # v2: runc's cgroups are our parent's children


def cgroup_dirs(cid: str) -> List[str]:
    """Existing cgroup directories named CID: <hierarchy>/<id> or <hierarchy>/<our own cgroup (or its
    parent)>/<id>."""
    out = set()
    for mnt in _cgroup_mounts():
        for base in ["/"] + _own_cgroups():
            d = os.path.normpath(os.path.join(mnt, base.lstrip("/"), cid))
            if os.path.isdir(d):
                out.add(d)
    return sorted(out)


def _cgroup_procs(d: str) -> List[int]:
    try:
        with open(os.path.join(d, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def frozen_cgroups(cid: str) -> List[str]:
    return [d for d in cgroup_dirs(cid) if cs.freezer_state(d) not in (None, "THAWED")]


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
    path = os.path.realpath(path)
    prefix = path.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == path or mnt.startswith(prefix):
                out.append(mnt)
    return out


def criu_pids_in(path: str) -> List[int]:
    """criu processes whose working directory or an open file is below PATH (ours: an image/work dir)."""
    path = os.path.realpath(path)
    prefix = path.rstrip("/") + "/"
    out = []
    for p in all_pids():
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() != "criu":
                    continue
            targets = [os.readlink(f"/proc/{p}/cwd")]
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    targets.append(os.readlink(f"/proc/{p}/fd/{fd}"))
                except OSError:
                    pass
        except OSError:
            continue
        if any(t == path or t.startswith(prefix) for t in targets):
            out.append(p)
    return out


def leftovers(cid: str, root: str, workdir: Optional[str] = None) -> List[str]:
    """What a container CID (gone, or never made) left behind: state dir, cgroups, processes, mounts, criu."""
    out = []
    state_dir = os.path.join(root, cid)
    if os.path.lexists(state_dir):
        out.append(f"state dir {state_dir} ({sorted(os.listdir(state_dir)) if os.path.isdir(state_dir) else ''})")
    dirs = cgroup_dirs(cid)
    if dirs:
        tasks = sorted({t for d in dirs for t in _cgroup_procs(d)})
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
    """Last resort of the fixtures: remove whatever leftovers() finds (kill, thaw, umount, rmdir)."""
    for p in criu_pids_in(workdir) if workdir else []:
        kill_tree(p, group=False)
    for d in cgroup_dirs(cid):
        cs.thaw(d)
    for p in pids_in_cgroup_named(cid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for base in (root, workdir):
        for m in sorted(mounts_under(base), key=len, reverse=True) if base else []:
            subprocess.run(["umount", "-l", m], stdin=subprocess.DEVNULL, capture_output=True)
    for d in sorted(cgroup_dirs(cid), key=len, reverse=True):
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    state_dir = os.path.join(root, cid)
    if os.path.isdir(state_dir) and not mounts_under(state_dir):
        shutil.rmtree(state_dir, ignore_errors=True)


# --- commands ------------------------------------------------------------------------

@dataclass
class Result:
    """What a command did: exit code, stdout, stderr (text)."""

    args: List[str]
    returncode: int
    stdout: str
    stderr: str
    pid: int = 0  # of the command's process

    def __str__(self) -> str:
        return f"{' '.join(self.args)}: exit {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def run(cmd: Sequence[str], workdir: str, timeout: float = CLI_TIMEOUT) -> Result:
    """Run CMD with stdin /dev/null and stdout/stderr in files (no pipe a container or criu could keep open).

    On a timeout the command is killed, and so are criu processes working below WORKDIR.
    """
    out_path = os.path.join(workdir, f".out-{uuid.uuid4().hex[:8]}")
    err_path = out_path.replace(".out-", ".err-")
    with open(os.devnull, "rb") as null, open(out_path, "w+") as out, open(err_path, "w+") as err:
        p = subprocess.Popen(list(cmd), stdin=null, stdout=out, stderr=err, start_new_session=False)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            for c in criu_pids_in(workdir):
                kill_tree(c, group=False)
            raise AssertionError(f"{' '.join(cmd)} did not finish in {timeout:.0f}s") from None
        out.seek(0)
        err.seek(0)
        res = Result(list(cmd), rc, out.read(), err.read(), p.pid)
    os.unlink(out_path)
    os.unlink(err_path)
    return res


def fastckpt_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "fastckpt", *args]


def run_quiet(cmd: Sequence[str], timeout: float = 60) -> int:
    """Run CMD with all stdio on /dev/null (what `runc run/restore/checkpoint` need: no pipe into a container)."""
    with open(os.devnull, "r+b") as null:
        return subprocess.run(list(cmd), stdin=null, stdout=null, stderr=null, timeout=timeout).returncode


def assert_error(res: Result, code: int, *needles: str, criu_lines: bool = False) -> List[str]:
    """The CLI failed with CODE and one `fastckpt: ...` line (then CRIU's lines, indented, when CRIU_LINES)."""
    err = res.stderr
    assert res.returncode == code, f"expected exit {code}; {res}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("fastckpt: "), f"stderr is not `fastckpt: ...`: {err!r}"
    if criu_lines:
        assert len(lines) > 1 and all(l.startswith("  ") for l in lines[1:]), \
            f"expected CRIU's error lines after the first: {err!r}"
    else:
        assert len(lines) == 1, f"expected one line on stderr: {err!r}"
    for n in needles:
        assert n in err, f"{n!r} not in stderr {err!r}"
    assert res.stdout == "", f"unexpected stdout {res.stdout!r}"
    return lines


def new_id(tag: str = "") -> str:
    return f"fcr-{tag}{'-' if tag else ''}{uuid.uuid4().hex[:10]}"


# --- containers ------------------------------------------------------------------------

class Container(RuncContainer):
    """A container (started or restored by a test) in a private runc root."""

    def __init__(self, cid: str, bundle: str, root: str):
        super().__init__(cid, bundle, root)
        self.counter = Counter(os.path.join(bundle, "rootfs", "tmp"), f"the counter of {cid}")

    def listed(self) -> Optional[dict]:
        """This container's entry of `runc list --format json`."""
        r = runc(self.root, "list", "--format", "json")
        assert r.returncode == 0, r.stderr
        for c in json.loads(r.stdout or "null") or []:
            if c["id"] == self.id:
                return c
        return None

    def exec(self, *args: str) -> subprocess.CompletedProcess:
        return runc(self.root, "exec", self.id, *args)

    def assert_running(self) -> int:
        """Running for runc (`list` and `state`), thawed, its init alive; returns its pid."""
        st = self.state()
        assert st and st["status"] == "running", f"runc state {self.id}: {st}"
        listed = self.listed()
        assert listed and listed["status"] == "running" and listed["pid"] == st["pid"], \
            f"runc list: {listed}; runc state: {st}"
        assert os.path.realpath(st["bundle"]) == os.path.realpath(self.bundle), st
        assert proc_alive(st["pid"]), f"pid {st['pid']} of {self.id} is not alive"
        assert not frozen_cgroups(self.id), f"{self.id} is frozen: {frozen_cgroups(self.id)}"
        return int(st["pid"])

    def assert_own_cgroups(self) -> None:
        """Its init is in cgroups named after its id, in every hierarchy (the one, on cgroup v2)."""
        with open(f"/proc/{self.pid}/cgroup") as f:
            lines = f.read().splitlines()
        for line in lines:
            if cs.UNIFIED != line.startswith("0::") and cs.LAYOUT != "hybrid":
                continue  # the kernel lists every hierarchy, also those this host has not mounted
            path = line.split(":", 2)[2]
            assert path.rstrip("/").split("/")[-1] == self.id, f"{self.id}'s init is in cgroup {line!r}"
        assert cgroup_dirs(self.id), f"no cgroup directory named {self.id}"

    def kill_and_delete(self, reap: bool = False) -> None:
        """`runc kill ID KILL` and `runc delete ID` as a user does them; both must work.

        REAP: the init is our child (restored by this process), to be reaped once killed.
        """
        pid = self.pid
        r = runc(self.root, "kill", self.id, "KILL")
        assert r.returncode == 0, f"runc kill {self.id}: {r.stderr}"
        if reap:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        wait_until(lambda: self.status() == "stopped", f"{self.id} to stop")
        r = runc(self.root, "delete", self.id)
        assert r.returncode == 0, f"runc delete {self.id}: {r.stderr}"
        assert self.state() is None and self.listed() is None

    def destroy(self) -> None:
        """Teardown: kill and delete whatever runc knows of the container (errors ignored)."""
        if self.state() is None:
            return
        for d in frozen_cgroups(self.id):
            cs.thaw(d)
        runc(self.root, "kill", self.id, "KILL")
        try:
            wait_until(lambda: self.status() in (None, "stopped"), f"{self.id} to stop", timeout=10)
        except AssertionError:
            pass
        runc(self.root, "delete", "-f", self.id)


def make_bundle(path: str, script: str = CONTAINER_COUNTER, network_ns: Optional[str] = "") -> str:
    from fastckpt import bundle as fb

    return fb.make_bundle(path, args=["sh", "-c", script], network_ns=network_ns)


def copy_bundle(src: str, dst: str) -> str:
    """A copy of a bundle (its rootfs with its files as they are now: a restore's file checks pass)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


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
        import pytest

        e = cls(root, workdir)
        yield e
        problems = e.cleanup()
        if problems:
            pytest.fail(f"{what}: " + "; ".join(problems))

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
                ct.destroy()
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


def remove_lock_files(cid: str) -> None:
    """fastckpt's lock files of container CID (one per runc root and id, kept after the operation).

    Only ids of the tests (uuid-based) are passed: no one else can hold them.
    """
    import glob

    for path in glob.glob(os.path.join(LOCK_DIR, f"ct-*-{glob.escape(cid)}.lock")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def runc_known(root: str) -> List[str]:
    r = runc(root, "list", "-q")
    return r.stdout.split() if r.returncode == 0 else []


def checked_env(runc_root: str, tmp_path, what: str = "the test"):
    """The body of an `env` fixture (`yield from rs.checked_env(runc_root, tmp_path)`): an Env in the test's
    private runc root and directory; afterwards everything it started or restored is removed, and the
    test fails if anything was left (containers runc still lists included)."""
    import pytest

    e = Env(runc_root, str(tmp_path))
    yield e
    problems = e.cleanup()
    if runc_known(runc_root):
        problems.append(f"runc still lists {runc_known(runc_root)}")
    if problems:
        pytest.fail(f"{what} left (now removed): " + "; ".join(problems))


def lo_state(ct: Container) -> str:
    """`ip addr show lo` in the container."""
    r = ct.exec("ip", "addr", "show", "lo")
    assert r.returncode == 0, f"runc exec {ct.id} ip addr show lo: {r.stderr}"
    return r.stdout


def lo_is_up(text: str) -> bool:
    first = text.splitlines()[0] if text else ""
    flags = first[first.find("<") + 1:first.find(">")].split(",") if "<" in first else []
    return "UP" in flags and "inet 127.0.0.1/8" in text

