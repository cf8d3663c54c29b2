"""Helpers shared by fastckpt's tests: waiting, runc containers, process trees, the CLI.

Everything here only touches what the tests started: containers live in a
private runc root with uuid-based ids, process trees are killed by the pid
(and process group) the test holds.  Nothing is killed by name.

No timing assertions: every wait has a generous deadline and only fails
when the thing waited for never happens.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence

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
# the line of /proc/PID/cgroup that names that cgroup (a grep pattern)
FREEZER_LINE = "^0::" if UNIFIED else ":freezer:"


def integration_skip_reason() -> Optional[str]:
    """Why integration tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "integration tests need root (CRIU dumps and runc containers)"
    for tool in ("criu", "runc"):
        if not shutil.which(tool):
            return f"{tool} is not installed (not on PATH={os.environ.get('PATH', '')})"
    try:
        from fastckpt import bundle, cgroups
        bundle.busybox()
    except (ImportError, FileNotFoundError) as e:
        return f"cannot build test bundles: {e}"
    return cgroups.unsupported()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require_integration() -> None:
    """Skip (locally) or FAIL (in CI: a green run that tested nothing is a defect) without the prerequisites."""
    import pytest

    reason = integration_skip_reason()
    if reason:
        if in_ci():
            pytest.fail(f"a prerequisite of the integration tests is missing in CI: {reason}", pytrace=False)
        pytest.skip(reason)


WAIT = 20.0  # seconds: deadline of every wait (a noisy 2-core machine)

# A counter like fastckpt.bundle's, writing to COUNT_FILE every 0.1 s.
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > {path}; sleep 0.1; done"


# --- waiting -----------------------------------------------------------------

def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT, interval: float = 0.02):
    """Poll PREDICATE until it returns something truthy (returned); fail after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def read_int(path: str) -> Optional[int]:
    """The integer in PATH, or None while it is missing or being rewritten."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def wait_advancing(read: Callable[[], Optional[int]], what: str, timeout: float = WAIT) -> int:
    """Wait until the counter READ advances past its current value; returns the new value."""
    first = wait_until(lambda: read(), f"{what} to exist", timeout)
    return wait_until(lambda: (v := read()) is not None and v > first and v, f"{what} to advance past {first}",
                      timeout)


def proc_alive(pid: int) -> bool:
    """True if PID is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")


# --- processes that get /dev/null as stdio -------------------------------------

def run_quiet(cmd: Sequence[str], timeout: float = 60) -> int:
    """Run CMD with stdio on /dev/null (what anything that starts a container needs)."""
    with open(os.devnull, "r+b") as null:
        return subprocess.run(list(cmd), stdin=null, stdout=null, stderr=null, timeout=timeout).returncode


def run_cli(*args: str, cwd: Optional[str] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m fastckpt ARGS` as a user runs it: exit code, stdout and stderr (text)."""
    return subprocess.run([sys.executable, "-m", "fastckpt", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str,
                          criu_lines: bool = False) -> str:
    """The CLI failed with CODE and one `fastckpt: ...` line (plus indented CRIU lines if CRIU_LINES)."""
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("fastckpt: "), err
    if criu_lines:
        assert all(l.startswith("  ") for l in lines[1:]), err
    else:
        assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    for n in needles:
        assert n in err, f"{n!r} not in stderr {err!r}"
    return err


# --- runc containers -------------------------------------------------------------

def runc(root: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A runc command that does not start container processes (state, list, kill, delete, ...)."""
    return subprocess.run(["runc", "--root", root, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def runc_ids(root: str) -> List[str]:
    r = runc(root, "list", "-q")
    return r.stdout.split() if r.returncode == 0 else []


def new_id() -> str:
    return "fct-" + uuid.uuid4().hex[:12]


class RuncContainer:
    """A container in a private runc root, as runc sees it (the checkpoint and the restore tests' own
    container classes build on it)."""

    def __init__(self, id: str, bundle: str, root: str):
        self.id = id
        self.bundle = bundle
        self.root = root

    def __repr__(self) -> str:
        return f"<Container {self.id} in {self.root}>"

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


class Container(RuncContainer):
    """A container the tests started in a private runc root."""

    def __init__(self, id: str, bundle: str, root: str):
        super().__init__(id, bundle, root)
        self.rootfs = os.path.join(bundle, "rootfs")
        self.cgroup_paths: Dict[str, str] = {}

    # --- what runc and the kernel say

    @property
    def freezer_dir(self) -> str:
        return (self.cgroup_paths.get("freezer") or self.cgroup_paths.get("") if UNIFIED
                else self.cgroup_paths.get("freezer")) or os.path.join(FREEZER_ROOT, self.id)

    def freezer_state(self) -> Optional[str]:
        """THAWED, FROZEN, FREEZING, or None when the freezer cgroup does not exist (v1's
        freezer.state; on cgroup v2 what cgroup.freeze and cgroup.events say, in v1's words)."""
        return freezer_state(self.freezer_dir)

    def state_json(self) -> dict:
        with open(os.path.join(self.state_dir, "state.json")) as f:
            return json.load(f)

    # --- the counter
    @property
    def count_file(self) -> str:
        return os.path.join(self.rootfs, "tmp", "count")

    def count(self) -> Optional[int]:
        return read_int(self.count_file)

    def wait_count(self, minimum: int) -> int:
        return wait_until(lambda: (v := self.count()) is not None and v >= minimum and v,
                          f"the counter of {self.id} to reach {minimum}")

    def wait_advancing(self) -> int:
        return wait_advancing(self.count, f"the counter of {self.id}")

    def assert_running_thawed_advancing(self) -> None:
        """The container survived whatever happened: running, thawed and counting."""
        assert self.status() == "running", f"{self.id} is {self.status()!r}, not running"
        assert self.freezer_state() == "THAWED", f"{self.id}'s freezer is {self.freezer_state()!r}"
        self.wait_advancing()

    def remember_cgroups(self) -> None:
        try:
            self.cgroup_paths = dict(self.state_json().get("cgroup_paths") or {})
        except (OSError, ValueError):
            pass

    # --- teardown
    def destroy(self) -> List[str]:
        """Kill and delete the container, thaw and remove its cgroups; returns what could not be cleaned."""
        problems: List[str] = []
        self.remember_cgroups()
        thaw(self.freezer_dir)
        if self.runc_state() is not None:
            runc(self.root, "kill", self.id, "KILL")
            try:
                wait_until(lambda: self.status() in (None, "stopped"), f"{self.id} to stop", timeout=10)
            except AssertionError as e:
                problems.append(str(e))
            r = runc(self.root, "delete", "-f", self.id)
            if r.returncode != 0 and self.runc_state() is not None:
                problems.append(f"runc delete -f {self.id}: {r.stderr.strip()}")
        # whatever runc (or a failed checkpoint) left: processes of this container's cgroup, then the cgroups
        paths = set(self.cgroup_paths.values()) | {self.freezer_dir}
        for path in sorted(paths, key=len, reverse=True):
            if not os.path.isdir(path):
                continue
            thaw(path)
            kill_cgroup_tasks(path)
            if not _rmdir_retry(path):
                problems.append(f"cannot remove cgroup {path}")
        if os.path.exists(self.state_dir):
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return problems


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


def kill_cgroup_tasks(cgroup_dir: str) -> None:
    """SIGKILL the processes left in a cgroup that only our container used."""
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs")) as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rmdir_retry(path: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


class ContainerFactory:
    """Makes bundles below WORKDIR and runs containers in runc root ROOT; cleans them all up."""

    def __init__(self, root: str, workdir: str):
        self.root = root
        self.workdir = workdir
        self.containers: List[Container] = []

    def __call__(self, args: Optional[Sequence[str]] = None, *, network_ns: Optional[str] = "",
                 mounts: Sequence[dict] = (), create_only: bool = False, wait_counter: bool = True) -> Container:
        """Run (or with CREATE_ONLY, `runc create`) a container; by default the busybox counter."""
        from fastckpt import bundle as fb

        cid = new_id()
        path = os.path.join(self.workdir, f"bundle-{cid}")
        kw = {} if args is None else {"args": list(args)}
        fb.make_bundle(path, network_ns=network_ns, mounts=mounts, **kw)
        ct = Container(cid, path, self.root)
        self.containers.append(ct)  # cleaned up even if starting fails half-way
        if create_only:
            rc = run_quiet(["runc", "--root", self.root, "create", "-b", path, cid])
            assert rc == 0, f"runc create {cid} failed (exit {rc})"
        else:
            fb.run_detached(cid, path, root=self.root)
        ct.remember_cgroups()
        if wait_counter and not create_only:
            ct.wait_count(1)
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


# --- plain process trees -----------------------------------------------------------

class ProcTree:
    """A process tree the test started (its root is our child)."""

    def __init__(self, popen: subprocess.Popen, new_session: bool, count_file: Optional[str]):
        self.popen = popen
        self.pid = popen.pid
        self.new_session = new_session
        self.count_file = count_file
        self.reaped = False

    def alive(self) -> bool:
        return not self.reaped and proc_alive(self.pid)

    def count(self) -> Optional[int]:
        assert self.count_file, "this tree has no counter"
        return read_int(self.count_file)

    def wait_advancing(self) -> int:
        return wait_advancing(self.count, f"the counter of pid {self.pid}")

    def wait_gone(self, timeout: float = WAIT) -> int:
        """Wait for the root process to die; returns its returncode (-9: SIGKILL)."""
        rc = self.popen.wait(timeout)
        self.reaped = True
        return rc

    def kill(self) -> None:
        if self.reaped:
            return
        # The pid (and its group id) cannot be reused before we reap the root.
        try:
            if self.new_session:
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                os.kill(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(10)
        finally:
            self.reaped = True


class ProcTreeFactory:
    def __init__(self):
        self.trees: List[ProcTree] = []

    def __call__(self, args: Sequence[str], *, new_session: bool = True, count_file: Optional[str] = None,
                 ready_file: Optional[str] = None) -> ProcTree:
        """Start ARGS with stdio on /dev/null (in a new session unless NEW_SESSION is False).

        With COUNT_FILE, wait until the counter it writes exists; with READY_FILE,
        until that file exists.
        """
        with open(os.devnull, "r+b") as null:
            p = subprocess.Popen(list(args), stdin=null, stdout=null, stderr=null,
                                 start_new_session=new_session, close_fds=True)
        tree = ProcTree(p, new_session, count_file)
        self.trees.append(tree)
        if count_file:
            wait_until(lambda: read_int(count_file), f"pid {p.pid} to write {count_file}")
        if ready_file:
            wait_until(lambda: os.path.exists(ready_file) or p.poll() is not None, f"pid {p.pid} to be ready")
            assert p.poll() is None, f"pid {p.pid} exited with {p.returncode} before it was ready"
        return tree

    def counter(self, count_file: str, *, new_session: bool = True, prefix: str = "") -> ProcTree:
        """A busybox shell counter (PREFIX runs first in the same shell)."""
        script = prefix + COUNTER.format(path=count_file)
        return self(["busybox", "sh", "-c", script], new_session=new_session, count_file=count_file)

    def shell_job(self, count_file: str) -> ProcTree:
        """A counter that is not its session's leader: a job of a shell that leads a session we started.

        Inheriting pytest's own session would not do: where the test runs in a pid
        namespace of its own, that session's leader is invisible, which CRIU
        refuses whatever the options.
        """
        pid_file = count_file + ".pid"
        leader = ("busybox sh -c \"$0\" & echo $! > " + shlex.quote(pid_file) + "; wait")
        script = COUNTER.format(path=count_file)
        # setsid runs the shell in place (Popen's child is no group leader): it leads the session
        tree = self(["busybox", "setsid", "busybox", "sh", "-c", leader, script], new_session=False,
                    count_file=count_file)
        tree.new_session = True  # kill() takes the whole session's group
        tree.pid = wait_until(lambda: read_int(pid_file), f"the pid of the job in {pid_file}")
        assert os.getsid(tree.pid) == tree.popen.pid != tree.pid
        return tree

    def cleanup(self) -> None:
        for t in reversed(self.trees):
            t.kill()
        self.trees.clear()


# --- network -------------------------------------------------------------------------

def free_port() -> int:
    """A loopback TCP port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_sockets(pid: Optional[int] = None) -> List[dict]:
    """IPv4 TCP sockets of the network namespace of PID (default: ours), from /proc/net/tcp."""
    path = f"/proc/{pid}/net/tcp" if pid else "/proc/net/tcp"
    out = []
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.split()
            laddr, raddr, st = parts[1], parts[2], parts[3]
            out.append({"lport": int(laddr.split(":")[1], 16), "rport": int(raddr.split(":")[1], 16),
                        "state": int(st, 16)})
    return out


TCP_ESTABLISHED, TCP_LISTEN = 0x01, 0x0A


def listening(port: int, pid: Optional[int] = None) -> bool:
    return any(s["lport"] == port and s["state"] == TCP_LISTEN for s in tcp_sockets(pid))


def established(port: int, pid: Optional[int] = None) -> bool:
    return any(s["state"] == TCP_ESTABLISHED and port in (s["lport"], s["rport"]) for s in tcp_sockets(pid))


def images(path: str, prefix: str = "") -> List[str]:
    return sorted(n for n in os.listdir(path) if n.startswith(prefix)) if os.path.isdir(path) else []


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    """The CLI succeeded, without a traceback."""
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr


def assert_images(path) -> List[str]:
    """PATH holds a CRIU dump: pstree.img, inventory.img and memory pages."""
    names = images(str(path))
    for required in ("pstree.img", "inventory.img"):
        assert required in names, f"{required} missing from {path}: {names}"
    assert any(n.startswith("pages-") for n in names), f"no pages-*.img in {path}: {names}"
    return names


# --- fake runc state (unit tests) -------------------------------------------------------

def my_start_time() -> int:
    from fastckpt.runc import proc_start_time as _proc_start_time

    t = _proc_start_time(os.getpid())
    assert t is not None
    return t


def write_fake_state(root, cid, *, pid=None, start=None, fifo=False, freezer=None, **extra):
    """A runc 1.1-like state.json for CID under ROOT; the init process is us unless told."""
    d = root / cid
    d.mkdir(parents=True)
    state = {
        "id": cid,
        "init_process_pid": os.getpid() if pid is None else pid,
        "init_process_start": my_start_time() if start is None else start,
        "config": {"rootfs": str(root / "rootfs"), "labels": ["bundle=/some/bundle"],
                   "namespaces": [{"type": "NEWPID"}, {"type": "NEWNET", "path": "/proc/1/ns/net"}]},
        "cgroup_paths": {"freezer": str(freezer)} if freezer else {},
        "external_descriptors": ["/dev/null", "/dev/null", "/dev/null"],
    }
    state.update(extra)
    (d / "state.json").write_text(json.dumps(state))
    if fifo:
        os.mkfifo(d / "exec.fifo")
    return d


# --- lazy pages: the host-wide pipe limit, raised only on request ----------------------------------

RAISE_PIPE_MAX_ENV = "FASTCKPT_TEST_RAISE_PIPE_MAX"
RAISED_PIPE_MAX = 4 << 20  # above CRIU's lazy page server's pipe (~3.2 MiB)


def raise_pipe_max_size() -> Optional[Callable[[], None]]:
    """FASTCKPT_TEST_RAISE_PIPE_MAX=1: let CRIU's lazy page server size its pipe (a host-wide sysctl,
    so only on request, for the caller's test). Returns what puts it back (None: nothing changed)."""
    from fastckpt import migration

    if migration.lazy_pages_problem() is None:
        return None
    return _set_pipe_max_size(RAISED_PIPE_MAX)


def lower_pipe_max_size() -> Optional[Callable[[], None]]:
    """FASTCKPT_TEST_RAISE_PIPE_MAX=1 on a host whose limit lets CRIU size its pipe: the kernel's
    default (1 MiB) for the caller's test, where lazy pages must be refused."""
    from fastckpt import migration

    if migration.lazy_pages_problem() is not None:
        return None
    return _set_pipe_max_size(1 << 20)


def _set_pipe_max_size(value: int) -> Optional[Callable[[], None]]:
    from fastckpt import migration

    if os.environ.get(RAISE_PIPE_MAX_ENV) != "1":
        return None
    with open(migration.PIPE_MAX_SIZE_FILE) as f:
        old = f.read().strip()
    with open(migration.PIPE_MAX_SIZE_FILE, "w") as f:
        f.write(str(value))

    def put_back() -> None:
        with open(migration.PIPE_MAX_SIZE_FILE, "w") as f:
            f.write(old)
    return put_back


def lazy_pages_unavailable() -> Optional[str]:
    """Why a lazy migration cannot be done here (after raise_pipe_max_size), with what would fix it."""
    from fastckpt import criu, migration

    problem = migration.lazy_pages_problem(criu.criu_binary())
    if problem and os.environ.get(RAISE_PIPE_MAX_ENV) != "1" and migration.lazy_pages_problem() is not None:
        problem += f" (set {RAISE_PIPE_MAX_ENV}=1 to let the tests raise it for their duration)"
    return problem
