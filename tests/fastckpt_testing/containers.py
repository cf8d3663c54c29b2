"""The one container model of the tests and benchmarks, and the one tear-down.

A container lives in a private runc root (``runc --root``) with a uuid-based id and a busybox bundle
of its own; its process is a counter (``/tmp/count``, and ``/tmp/count.log`` for counters that log
every value: a restored one reads 1..n without a restart) or ``mem MIB`` (tests/robust_support.py:
memory a restored container re-checks).  :func:`teardown` takes one down: thaw, ``runc kill``,
``runc delete -f``, then whatever runc left (cgroups in either layout, the state directory).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from typing import Dict, Iterable, List, Optional, Sequence

from .waiting import proc_alive, read_int, wait_advancing, wait_until


def _host_layout() -> Optional[str]:
    try:
        from fastckpt import cgroups
        return cgroups.layout()
    except Exception:  # not built: the unit tests still run
        return None


# The host's cgroup layout (runc's rules): "hybrid", "unified" (cgroup v2 only) or "legacy" (v1 only).
LAYOUT = _host_layout()
UNIFIED = LAYOUT == "unified"
# Where a container's freezing cgroup lives: v1's freezer hierarchy, or the one v2 hierarchy
FREEZER_ROOT = "/sys/fs/cgroup" if UNIFIED else "/sys/fs/cgroup/freezer"

# fastckpt.bundle's counter, which also appends every value to /tmp/count.log
COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > {dir}/count; echo $i >> {dir}/count.log; "
           "sleep 0.1; done")
CONTAINER_COUNTER = COUNTER.format(dir="/tmp")


def new_id(tag: str = "", prefix: str = "fct") -> str:
    return f"{prefix}-{tag}{'-' if tag else ''}{uuid.uuid4().hex[:12]}"


def runc(root: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A runc command that does not start container processes (state, list, kill, delete, ...)."""
    return subprocess.run(["runc", "--root", root, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def runc_ids(root: str) -> List[str]:
    r = runc(root, "list", "-q")
    return r.stdout.split() if r.returncode == 0 else []


def state_cgroups(root: str, cid: str) -> Dict[str, str]:
    """The cgroup paths runc's state.json of CID names ({} without one)."""
    try:
        with open(os.path.join(root, cid, "state.json")) as f:
            return dict(json.load(f).get("cgroup_paths") or {})
    except (OSError, ValueError):
        return {}


# --- cgroups ----------------------------------------------------------------------------

def freezer_state(cgroup_dir: str) -> Optional[str]:
    """THAWED, FROZEN or FREEZING of a v1 freezer or a v2 cgroup; None when there is no such cgroup."""
    try:
        with open(os.path.join(cgroup_dir, "freezer.state")) as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    try:
        with open(os.path.join(cgroup_dir, "cgroup.freeze")) as f:
            wanted = f.read().strip() == "1"
        with open(os.path.join(cgroup_dir, "cgroup.events")) as f:
            frozen = "frozen 1" in f.read()
    except FileNotFoundError:
        return None
    return "FROZEN" if wanted and frozen else "FREEZING" if wanted else "THAWED"


def thaw(cgroup_dir: str) -> None:
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        f = os.path.join(cgroup_dir, name)
        if os.path.exists(f):
            try:
                with open(f, "w") as fh:
                    fh.write(value)
            except OSError:
                pass


def cgroup_procs(d: str) -> List[int]:
    try:
        with open(os.path.join(d, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cgroup_mounts() -> List[str]:
    """The mount points of the host's cgroup hierarchies."""
    if UNIFIED:  # one hierarchy, mounted over the v1 ones (still listed, hidden)
        return ["/sys/fs/cgroup"]
    out: List[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            fstype = parts[parts.index("-") + 1]
            # the host's hierarchies only: a concurrent CRIU restore mounts them again for a
            # moment in a "cgyard" of its own, where the same directories would be found twice
            if fstype in ("cgroup", "cgroup2") and parts[3] == "/" and parts[4].startswith("/sys/fs/cgroup/") \
                    and parts[4] not in out:
                out.append(parts[4])
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


def frozen_cgroups(cid: str) -> List[str]:
    return [d for d in cgroup_dirs(cid) if freezer_state(d) not in (None, "THAWED")]


# --- the tear-down ----------------------------------------------------------------------------

def drop_runc_v2_stale_cgroup(cid: str) -> List[str]:
    """runc 1.1 restoring CID's images under another id on cgroup v2 (runc itself, or podman through it)
    has CRIU recreate CID's old cgroup, left empty beside the new one (runc's bug, not fastckpt's: runc's
    own checkpoints do the same). On a unified host such empty directories are removed here and
    returned; elsewhere nothing is touched. A directory that holds a task stays (and is a leftover)."""
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return []
    dropped = []
    for d in cgroup_dirs(cid):
        if not cgroup_procs(d):
            try:
                os.rmdir(d)
                dropped.append(d)
            except OSError:
                pass
    return dropped


def teardown(root: str, cid: str, cgroups: Iterable[str] = (), *, force: bool = True) -> List[str]:
    """Take container CID of the private runc root ROOT down; returns what could not be cleaned.

    Its cgroups are thawed (a frozen task does not die), then `runc kill CID KILL`, a wait until it has
    stopped and `runc delete -f CID`.  FORCE: then also what runc left: the cgroup directories CGROUPS
    and those of its state.json (their processes killed, the directories removed: fastckpt.cgroups'
    kill_all and remove, in either layout) and its state directory (fastckpt.runc.remove_state_dir).
    Without FORCE what is left stays, for the caller to find and report.
    """
    from fastckpt import cgroups as fcg
    from fastckpt import runc as frunc
    from fastckpt.errors import Error

    problems: List[str] = []
    paths = set(cgroups) | set(state_cgroups(root, cid).values())
    for d in paths:
        thaw(d)
    if runc(root, "state", cid).returncode == 0:
        runc(root, "kill", cid, "KILL")
        try:
            wait_until(lambda: _status(root, cid) in (None, "stopped"), f"{cid} to stop", timeout=10)
        except AssertionError as e:
            problems.append(str(e))
        r = runc(root, "delete", "-f", cid)
        if r.returncode != 0 and runc(root, "state", cid).returncode == 0:
            problems.append(f"runc delete -f {cid}: {r.stderr.strip()}")
    if not force:
        return problems
    for path in sorted(paths, key=len, reverse=True):
        if not os.path.isdir(path):
            continue
        thaw(path)
        for pid in cgroup_procs(path):  # also in hierarchies that can neither freeze nor kill (v1's cpu, ...)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        fcg.kill_all(path)  # and wait until they are gone
        try:
            fcg.remove([path], timeout=10, strict=True)
        except OSError:
            problems.append(f"cannot remove cgroup {path}")
    try:
        frunc.remove_state_dir(os.path.join(root, cid))
    except Error as e:
        problems.append(str(e))
    return problems


def _status(root: str, cid: str) -> Optional[str]:
    r = runc(root, "state", cid)
    return json.loads(r.stdout)["status"] if r.returncode == 0 else None


# --- the counter -----------------------------------------------------------------------------

def read_log(path: str) -> List[int]:
    """The values of a count.log (a last line being written is left out)."""
    try:
        with open(path) as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [int(l) for l in data.split("\n")[:-1]]  # only complete lines


def compress(values: Sequence[int]) -> str:
    """1,2,3,4,1,2 -> '1..4, 1..2' (for messages)."""
    runs: List[List[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in runs) or "(empty)"


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
        return wait_advancing(self.value, self.what)

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


# --- the container ---------------------------------------------------------------------------

class Container:
    """A container the tests (or benchmarks) started or restored in a private runc root.

    MIB: it runs ``mem MIB`` (tests/robust_support.py), whose memory it can be asked to re-check.
    """

    def __init__(self, id: str, bundle: str, root: str, mib: int = 0):
        self.id = id
        self.bundle = bundle
        self.root = root
        self.mib = mib
        self.rootfs = os.path.join(bundle, "rootfs")
        self.cgroup_paths: Dict[str, str] = {}
        self.counter = Counter(os.path.join(self.rootfs, "tmp"), f"the counter of {id}")

    def __repr__(self) -> str:
        return f"<Container {self.id} in {self.root}>"

    # --- what runc and the kernel say
    def runc_state(self) -> Optional[dict]:
        """`runc --root R state ID` as a dict, or None if runc does not know the container."""
        r = runc(self.root, "state", self.id)
        return json.loads(r.stdout) if r.returncode == 0 else None

    state = runc_state

    def status(self) -> Optional[str]:
        st = self.runc_state()
        return st["status"] if st else None

    @property
    def pid(self) -> int:
        st = self.runc_state()
        assert st, f"runc does not know {self.id}"
        return int(st["pid"])

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, self.id)

    def state_json(self) -> dict:
        with open(os.path.join(self.state_dir, "state.json")) as f:
            return json.load(f)

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

    @property
    def freezer_dir(self) -> str:
        return (self.cgroup_paths.get("freezer") or self.cgroup_paths.get("") if UNIFIED
                else self.cgroup_paths.get("freezer")) or os.path.join(FREEZER_ROOT, self.id)

    def freezer_state(self) -> Optional[str]:
        """THAWED, FROZEN, FREEZING, or None when the freezer cgroup does not exist (v1's
        freezer.state; on cgroup v2 what cgroup.freeze and cgroup.events say, in v1's words)."""
        return freezer_state(self.freezer_dir)

    def remember_cgroups(self) -> None:
        self.cgroup_paths = state_cgroups(self.root, self.id) or self.cgroup_paths

    # --- the counter
    @property
    def count_file(self) -> str:
        return self.counter.count_file

    def count(self) -> Optional[int]:
        return read_int(self.count_file)

    def wait_count(self, minimum: int) -> int:
        return wait_until(lambda: (v := self.count()) is not None and v >= minimum and v,
                          f"the counter of {self.id} to reach {minimum}")

    def wait_advancing(self) -> int:
        return wait_advancing(self.count, f"the counter of {self.id}")

    # --- memory (mem MIB)
    def tmp(self, name: str) -> str:
        return os.path.join(self.rootfs, "tmp", name)

    def verify_memory(self) -> str:
        """Have the container re-check all of its memory; returns its answer ("ok 0 <MiB>")."""
        assert self.mib, "the busybox counter has no memory to verify"
        for n in ("verified", "verified.tmp"):
            if os.path.exists(self.tmp(n)):
                os.unlink(self.tmp(n))
        open(self.tmp("verify"), "w").close()
        wait_until(lambda: os.path.exists(self.tmp("verified")), f"{self.id} to verify its memory")
        with open(self.tmp("verified")) as f:
            return f.read().strip()

    def assert_memory_intact(self) -> None:
        answer = self.verify_memory()
        assert answer == f"ok 0 {self.mib}", f"{self.id}'s memory after restore: {answer!r}"

    # --- assertions
    def assert_running_thawed_advancing(self) -> None:
        """The container survived whatever happened: running, thawed and counting."""
        assert self.status() == "running", f"{self.id} is {self.status()!r}, not running"
        assert self.freezer_state() == "THAWED", f"{self.id}'s freezer is {self.freezer_state()!r}"
        self.wait_advancing()

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
            if UNIFIED != line.startswith("0::") and LAYOUT != "hybrid":
                continue  # the kernel lists every hierarchy, also those this host has not mounted
            path = line.split(":", 2)[2]
            assert path.rstrip("/").split("/")[-1] == self.id, f"{self.id}'s init is in cgroup {line!r}"
        assert cgroup_dirs(self.id), f"no cgroup directory named {self.id}"

    def assert_coherent_after_restore(self, stopped_at: int) -> None:
        """Restored: running for runc, thawed, counting on from STOPPED_AT without a restart, memory intact."""
        assert self.status() == "running", f"{self.id} is {self.status()!r} after its restore"
        assert not frozen_cgroups(self.id), frozen_cgroups(self.id)
        self.counter.assert_continued(stopped_at)
        if self.mib:
            self.assert_memory_intact()

    # --- the end
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

    def destroy(self, force: bool = True) -> List[str]:
        """Tear-down (see teardown()): FORCE also removes what runc left of it (cgroups, state dir)."""
        self.remember_cgroups()
        return teardown(self.root, self.id, set(self.cgroup_paths.values()) | {self.freezer_dir} if force else (),
                        force=force)


class ContainerFactory:
    """Makes bundles below WORKDIR and runs containers in runc root ROOT; tears them all down."""

    def __init__(self, root: str, workdir: str):
        self.root = root
        self.workdir = workdir
        self.containers: List[Container] = []

    def __call__(self, args: Optional[Sequence[str]] = None, *, network_ns: Optional[str] = "",
                 mounts: Sequence[dict] = (), create_only: bool = False, wait_counter: bool = True) -> Container:
        """Run (or with CREATE_ONLY, `runc create`) a container; by default fastckpt.bundle's counter."""
        from fastckpt import bundle as fb

        kw = {} if args is None else {"args": list(args)}
        ct = self.start(lambda path: fb.make_bundle(path, network_ns=network_ns, mounts=mounts, **kw),
                        create_only=create_only)
        if wait_counter and not create_only:
            ct.wait_count(1)
        return ct

    def start(self, make_bundle, *, mib: int = 0, create_only: bool = False) -> Container:
        """A container of the bundle MAKE_BUNDLE(path) writes, run (or created) with a new id."""
        from fastckpt import bundle as fb

        cid = new_id()
        path = os.path.join(self.workdir, f"bundle-{cid}")
        make_bundle(path)
        ct = Container(cid, path, self.root, mib)
        self.containers.append(ct)  # torn down even if starting fails half-way
        if create_only:
            from .cli import run_quiet

            rc = run_quiet(["runc", "--root", self.root, "create", "-b", path, cid])
            assert rc == 0, f"runc create {cid} failed (exit {rc})"
        else:
            fb.run_detached(cid, path, root=self.root)
        ct.remember_cgroups()
        return ct

    def cleanup(self) -> List[str]:
        problems: List[str] = []
        for ct in reversed(self.containers):
            try:
                problems += ct.destroy()
            except Exception as e:  # keep cleaning the others
                problems.append(f"{ct.id}: {e!r}")
        self.containers.clear()
        return problems


def copy_bundle(src: str, dst: str) -> str:
    """A copy of a bundle (its rootfs with its files as they are now: a restore's file checks pass; device
    nodes copied as nodes). Each restore of the same images that may run while another restored copy runs
    needs one: a restored counter writing a shared rootfs's /tmp/count changes a file the images may record
    as open (a dump that caught the shell writing it), and CRIU then refuses the restore ("bad size")."""
    subprocess.run(["cp", "-a", src, dst], check=True)
    return dst


LOCK_DIR = "/run/fastckpt/locks"  # fastckpt.locks.LOCK_DIR


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
