"""cgroups for a container being restored: the paths runc would use, made and removed.

cgroup v1 controllers (plus the v2 hierarchy of a hybrid host), as runc 1.1
lays them out: ``<mount>/<own cgroup of this process>/<name>`` when the
config gives no path, ``<mount>/<path>`` when it does.
"""
from __future__ import annotations

import errno
import os


def mounts() -> dict[str, str]:
    """cgroup hierarchy key (runc's: controller name, 'name=systemd', '' for v2) -> mount point."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            fstype, opts = parts[sep + 1], parts[sep + 3].split(",")
            if parts[3] != "/":
                continue
            if fstype == "cgroup2":
                out.setdefault("", parts[4])
            elif fstype == "cgroup":
                for o in opts:
                    if o in ("rw", "ro") or "=" in o and not o.startswith("name="):
                        continue
                    out.setdefault(o, parts[4])
    return out


def own() -> dict[str, str]:
    """This process's cgroup per hierarchy key (from /proc/self/cgroup)."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


# --- fast migrations (opt-in) -----------------------------------------------------

# hierarchies whose cgroup.procs the warm-up thread writes, in this order of preference
_WARM_KEYS = ("pids", "freezer", "cpu", "memory", "")
WARM_ENV = "FASTCKPT_WARM"  # =1: warm up as if --fast-migrations were given
NO_WARM_ENV = "FASTCKPT_NO_WARM"  # =1: never warm up, whatever was asked


def warm_wanted(requested: bool = False) -> bool:
    """The warm-up is off unless asked for: REQUESTED (--fast-migrations, the options'
    fast_migrations) or FASTCKPT_WARM=1; FASTCKPT_NO_WARM=1 turns it off whatever was asked."""
    if os.environ.get(NO_WARM_ENV, "") not in ("", "0"):
        return False
    return bool(requested) or os.environ.get(WARM_ENV, "") not in ("", "0")


def _warm_target(requested: bool) -> str | None:
    """Where the warm-up writes (_own_procs_file()), when it is wanted (warm_wanted())."""
    return _own_procs_file() if warm_wanted(requested) else None


def _own_procs_file() -> str | None:
    """cgroup.procs of the cgroup this process is in, in one mounted hierarchy."""
    try:
        mnts, mine = mounts(), own()
    except OSError:
        return None
    keys = [k for k in _WARM_KEYS if k in mnts] + sorted(k for k in mnts if k not in _WARM_KEYS)
    for key in keys:
        if key in mine:
            path = os.path.join(mnts[key], mine[key].lstrip("/"), "cgroup.procs")
            if os.access(path, os.W_OK):
                return path
    return None


class FastMigrations:
    """While open, moving tasks between cgroups skips the kernel's RCU grace period: opt-in.

    The first cgroup migration after a quiet spell waits a grace period
    (~8-16 ms here): fastckpt's move of CRIU into a restored container's
    cgroups, and CRIU's cgroup set-up in a container dump. When REQUESTED (or
    FASTCKPT_WARM=1; never with FASTCKPT_NO_WARM=1), a C thread keeps the lock
    behind it warm meanwhile, by re-entering this process into the cgroup it
    already is in every 3 ms (ext/warm.h). Each of those writes takes the
    host-wide cgroup_threadgroup_rwsem for writing, so every fork, exec and
    exit on the host waits behind it: that is why it is off by default (see
    the README: the kernel's favordynmods does the same for the whole host).
    """

    def __init__(self, requested: bool):
        self.requested = requested
        self.started = False

    def __enter__(self) -> "FastMigrations":
        path = _warm_target(self.requested)
        if path:
            from . import _libc

            _libc.warm_start(path)  # nests; a failure only means no warm-up
            self.started = True
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            from . import _libc

            self.started = False
            _libc.warm_stop()


def prime_fast_migrations(requested: bool) -> None:
    """Start the warm-up ahead of an operation that will open FastMigrations (a command
    line has its modules to import first, and the first write waits the grace period)."""
    path = _warm_target(requested)
    if path:
        from . import _libc

        _libc.warm_start(path, limit_ms=2000, user=False)


def paths_for(cg_config: dict) -> dict[str, str]:
    """The cgroup directories runc would give a container with this cgroups config."""
    path = cg_config.get("path") or ""
    name = cg_config.get("name") or ""
    parent = cg_config.get("parent") or ""
    mine = own()
    out: dict[str, str] = {}
    for key, mnt in mounts().items():
        if path:
            rel = path
        else:
            rel = os.path.join(mine.get(key, "/"), parent.lstrip("/"), name)
        out[key] = os.path.normpath(os.path.join(mnt, rel.lstrip("/")))
    return out


def relative(key: str, full: str) -> str:
    """A cgroup directory as a path inside its hierarchy (CRIU's cgroup root)."""
    mnt = mounts()[key]
    return "/" + os.path.relpath(full, mnt).lstrip(".")


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _device_rule(d: dict) -> str:
    kind = {97: "a", 98: "b", 99: "c"}.get(d.get("type"), chr(d.get("type", 97)))
    if kind == "a":
        return "a"
    major = "*" if d.get("major", -1) < 0 else str(d["major"])
    minor = "*" if d.get("minor", -1) < 0 else str(d["minor"])
    return f"{kind} {major}:{minor} {d.get('permissions', 'rwm')}"


def create(paths: dict[str, str], resources: dict) -> list[str]:
    """Make the cgroup directories and apply the config's resources; returns what was made.

    cpuset is seeded from its parent (a v1 cpuset cgroup is empty when made),
    devices gets the config's allow/deny list; other limits when set.
    """
    made: list[str] = []
    try:
        for key, path in paths.items():
            todo = []
            p = path
            while not os.path.isdir(p):
                todo.append(p)
                p = os.path.dirname(p)
            for d in reversed(todo):
                os.mkdir(d, 0o755)
                made.append(d)
                if key == "cpuset":
                    parent = os.path.dirname(d)
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        with open(os.path.join(parent, f)) as fh:
                            _write(os.path.join(d, f), fh.read().strip() or "\n")
        _apply(paths, resources)
    except OSError as e:
        remove(made)
        from .errors import Error  # not at the top: the CLI imports this module before `re`

        raise Error(f"cannot set up cgroup {e.filename or ''}: {e.strerror}", errno=e.errno) from e
    return made


def _apply(paths: dict[str, str], r: dict) -> None:
    dev = paths.get("devices")
    if dev and r.get("devices"):
        for d in r["devices"]:
            _write(os.path.join(dev, "devices.allow" if d.get("allow") else "devices.deny"), _device_rule(d))
    settings: list[tuple[str, str, object]] = [
        ("memory", "memory.limit_in_bytes", r.get("memory")),
        ("memory", "memory.soft_limit_in_bytes", r.get("memory_reservation")),
        ("pids", "pids.max", r.get("pids_limit")),
        ("cpu", "cpu.shares", r.get("cpu_shares")),
        ("cpu", "cpu.cfs_period_us", r.get("cpu_period")),
        ("cpu", "cpu.cfs_quota_us", r.get("cpu_quota")),
        ("cpuset", "cpuset.cpus", r.get("cpuset_cpus")),
        ("cpuset", "cpuset.mems", r.get("cpuset_mems")),
    ]
    for key, fname, value in settings:
        if value and paths.get(key):
            _write(os.path.join(paths[key], fname), str(value))


def enter(paths: dict[str, str], pid: int) -> None:
    """Move process PID into these cgroups (all of its threads)."""
    for key, path in paths.items():
        _write(os.path.join(path, "cgroup.procs"), str(pid))


def remove(dirs, timeout: float = 2.0, strict: bool = False) -> None:
    """Remove cgroup directories, deepest first, waiting briefly for exiting tasks (EBUSY).

    A directory that cannot be removed is left (STRICT: its OSError is raised).
    """
    import time

    deadline = time.monotonic() + timeout
    for d in sorted(set(dirs), key=len, reverse=True):
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    if strict:
                        raise OSError(e.errno, e.strerror, d) from None
                    break
                time.sleep(0.005)


def kill_all(path: str, timeout: float = 5.0) -> None:
    """Kill every process in the cgroup at PATH (a v1 freezer or a v2 cgroup) and wait for them to go.

    v1: freeze it (nothing can fork meanwhile), SIGKILL each task, thaw so they die.
    v2: cgroup.kill.
    """
    import signal
    import time

    procs = os.path.join(path, "cgroup.procs")
    if not os.path.exists(procs):
        return
    kill_file = os.path.join(path, "cgroup.kill")
    state = os.path.join(path, "freezer.state")
    if os.path.exists(kill_file):
        _write(kill_file, "1")
    elif os.path.exists(state):
        _write(state, "FROZEN")
        try:
            for pid in _pids(procs):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            _write(state, "THAWED")
    deadline = time.monotonic() + timeout
    while _pids(procs) and time.monotonic() < deadline:
        time.sleep(0.005)


def in_use(paths: dict[str, str]) -> tuple[str, int] | None:
    """(a cgroup of PATHS, how many processes it holds) when one already holds processes."""
    for path in paths.values():
        n = len(_pids(os.path.join(path, "cgroup.procs")))
        if n:
            return path, n
    return None


def _pids(procs_file: str) -> list[int]:
    try:
        with open(procs_file) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Containment:
    """A cgroup of its own for a CRIU run, so that all it starts can be found and killed.

    In the v1 freezer hierarchy when there is one (else v2), below this
    process's own cgroup.  After a successful run, release() moves what is
    left (the restored processes) back to the parent and removes the cgroup.
    """

    def __init__(self, name: str):
        ms = mounts()
        key = "freezer" if "freezer" in ms else ""
        if key not in ms:
            from .errors import Error

            raise Error("no freezer cgroup hierarchy to contain CRIU in")
        self.parent = os.path.normpath(os.path.join(ms[key], own().get(key, "/").lstrip("/")))
        self.path = os.path.join(self.parent, name)
        os.mkdir(self.path, 0o700)

    def enter(self, pid: int) -> None:
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def kill_all(self) -> None:
        kill_all(self.path)
        self._remove()

    def release(self) -> None:
        for pid in _pids(os.path.join(self.path, "cgroup.procs")):
            try:
                _write(os.path.join(self.parent, "cgroup.procs"), str(pid))
            except OSError:
                pass  # it exited meanwhile
        self._remove()

    def _remove(self) -> None:
        remove([self.path])
