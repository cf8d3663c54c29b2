"""cgroups for a container: the host's layout, and the paths, limits and device rules
runc gives a container, made and removed.

runc 1.1's rules. The layout: /sys/fs/cgroup a cgroup2 mount is a unified
(cgroup v2 only) host; a cgroup2 mount at /sys/fs/cgroup/unified beside the v1
controllers a hybrid one; v1 controllers alone a legacy one.  Paths, v1:
``<mount>/<own cgroup of this process>/<name>`` when the config gives no path,
``<mount>/<path>`` when it does; v2: ``/sys/fs/cgroup/<parent of own
cgroup>/<name>`` or ``/sys/fs/cgroup/<path>``.  Limits are written as runc's
v1 (fs) or v2 (fs2) manager writes them, its conversions included; device
rules go to the v1 devices controller or, on v2, to an eBPF program
(devicefilter.py).  A limit that cannot be applied is an error, never dropped.
"""
from __future__ import annotations

import errno
import os

ROOT = "/sys/fs/cgroup"
UNIFIED, HYBRID, LEGACY = "unified", "hybrid", "legacy"
CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_SUPER_MAGIC = 0x27E0EB


def _fs_type(path: str) -> int | None:
    from . import _libc

    try:
        return _libc.fs_type(path)
    except OSError:
        return None


def layout() -> str | None:
    """The host's cgroup layout by runc's rules: UNIFIED, HYBRID, LEGACY, or None (no cgroups mounted)."""
    if _fs_type(ROOT) == CGROUP2_SUPER_MAGIC:
        return UNIFIED
    if _fs_type(os.path.join(ROOT, "unified")) == CGROUP2_SUPER_MAGIC:
        return HYBRID
    if any(k for k in _v1_mounts() if k):
        return LEGACY
    return None


def unsupported() -> str | None:
    """Why containers cannot be checkpointed or restored with this host's cgroups, or None."""
    kind = layout()
    if kind is None:
        return f"no cgroup filesystem is mounted at {ROOT}: containers cannot be checkpointed or restored here"
    if kind == UNIFIED:
        rel = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2] if x.isdigit())
        if rel < (5, 2):
            return (f"this cgroup v2 host's kernel ({os.uname().release}) has no cgroup.freeze (Linux >= 5.2): "
                    "containers cannot be frozen for a checkpoint")
        return None
    if "freezer" not in _v1_mounts():
        return f"this cgroup v1 ({kind}) host has no freezer hierarchy mounted: containers cannot be frozen"
    return None


def report() -> dict[str, object]:
    """What `fastckpt check` says of the host's cgroups: the layout, and whether containers can be
    checkpointed and restored there (with why not, or how)."""
    kind = layout()
    why = unsupported()
    out: dict[str, object] = {"layout": kind or "none", "containers": why is None}
    if kind == UNIFIED:
        try:
            out["controllers"] = _read(os.path.join(ROOT, "cgroup.controllers")).split()
        except OSError:
            out["controllers"] = []
        if why is None:
            try:  # what confines a restored container's devices here
                from .devicefilter import load, program

                os.close(load(program([])))
            except OSError as e:
                why = f"cannot load BPF device programs (a restored container's device rules): {e.strerror}"
                out["containers"] = False
        out["how"] = "frozen through cgroup.freeze; devices confined by BPF programs, as runc does"
    elif kind:
        out["controllers"] = sorted(k for k in _v1_mounts() if k)
        out["how"] = "frozen through the v1 freezer; devices confined by the v1 devices controller"
    if why:
        out["why_not"] = why
    return out


def limit_criu_to_v2(opts) -> None:
    """On a unified host CRIU is to handle the cgroup v2 hierarchy alone (CRIU's name for it: ""):
    the kernel still lists v1 hierarchies in /proc/PID/cgroup (bound elsewhere, or never mounted), which
    are not the container's and whose directories CRIU would otherwise dump and re-create."""
    if layout() == UNIFIED:
        opts.add_cg_dump_controller("")


def dump_yard(pid: int) -> tuple[str, str | None] | None:
    """A cgroup yard for CRIU's dump of the tree rooted at PID: a directory holding the host's mounted
    hierarchies under CRIU's names for them (a controller list as /proc/PID/cgroup spells it, ``name=X`` as
    X, v2 as ``unified``), which CRIU then reads as they are instead of mounting a hierarchy of its own for
    each (a mount and a detach each: ~3-7 ms of grace periods per hierarchy here).

    Returns (the yard, a temporary directory of links to remove after the dump, or None when the host's
    cgroup root already is that yard), or None when a hierarchy of PID's is not mounted whole (CRIU then
    mounts them itself, as without a yard)."""
    kind = layout()
    hier = mounts()
    entries: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, _ = line.split(":", 2)
        keys = ctrls.split(",") if ctrls else [""]
        found = {hier.get(k) for k in keys}
        if kind == UNIFIED and ctrls:
            continue  # CRIU handles v2 alone there (limit_criu_to_v2)
        if len(found) != 1 or None in found or "\\" in str(next(iter(found))):  # mountinfo's escapes: no yard
            return None
        name = "unified" if not ctrls else ctrls[len("name="):] if ctrls.startswith("name=") else ctrls
        entries[name] = found.pop()  # type: ignore[assignment]
    if not entries:
        return None
    roots = _seen_roots()  # each as it is seen there: not a bind mount of a sub-cgroup over it
    if any(roots.get(mnt) != "/" for mnt in entries.values()):
        return None
    # mount points as mountinfo has them (no symlinks to resolve: ~80 lstats); anything else, a yard of links
    if all(os.path.join(ROOT, name) == mnt for name, mnt in entries.items()):
        return ROOT, None
    import tempfile

    try:
        tmp = tempfile.mkdtemp(prefix="fastckpt-cgyard-")
    except OSError:
        return None  # a full or unwritable temporary directory: CRIU mounts its own, as without a yard
    try:
        for name, mnt in entries.items():
            os.symlink(mnt, os.path.join(tmp, name))
    except OSError:
        remove_yard(tmp)
        return None
    except BaseException:
        remove_yard(tmp)
        raise
    return tmp, tmp


def _seen_roots() -> dict[str, str]:
    """Mount point -> the root (in its filesystem) of the mount seen there: the last one mounted on it."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                out[parts[4]] = parts[3]
    except OSError:
        pass
    return out


def remove_yard(tmp: str | None) -> None:
    """Remove a temporary yard of dump_yard's (its links, then itself)."""
    if tmp is None:
        return
    try:
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    except OSError:
        pass


def unmount_yards(work_path: str) -> list[str]:
    """Detach CRIU's cgroup yards (``.criu.cgyard.*``: the hierarchies CRIU mounts in its work directory
    while it restores cgroups) that a CRIU stopped half-way left mounted; returns them."""
    from . import _libc

    parent = os.path.realpath(work_path)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mnt = line.split()[4].replace("\\040", " ")
                if os.path.dirname(mnt) == parent and os.path.basename(mnt).startswith(".criu.cgyard."):
                    found.append(mnt)
        for mnt in found:
            _libc.umount(mnt)  # detached: the hierarchies mounted in it go with it
            os.rmdir(mnt)
    except OSError:
        pass  # best effort on a failure path
    return found


def require_supported() -> str:
    """The host's layout; one clear Error when fastckpt cannot work with it."""
    why = unsupported()
    if why:
        from .errors import Error

        raise Error(why, errno=errno.EOPNOTSUPP)
    return layout()  # type: ignore[return-value]


def mounts() -> dict[str, str]:
    """cgroup hierarchy key (runc's: controller name, 'name=systemd', '' for v2) -> mount point."""
    if layout() == UNIFIED:
        return {"": ROOT}
    return _v1_mounts()


def _v1_mounts() -> dict[str, str]:
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


def _clean(path: str) -> str:
    """runc's CleanPath: normalized, and a relative path cannot climb out ("../x" is "x")."""
    if not path:
        return ""
    if os.path.isabs(path):
        return os.path.normpath(path)
    return os.path.relpath(os.path.normpath("/" + path), "/")


def paths_for(cg_config: dict) -> dict[str, str]:
    """The cgroup directories runc would give a container with this cgroups config."""
    path, name, parent = (_clean(cg_config.get(k) or "") for k in ("path", "name", "parent"))
    if path and (name or parent):
        from .errors import UsageError

        raise UsageError(f"cgroup: either Path or Name and Parent should be used, got path {path!r}, "
                         f"name {name!r}, parent {parent!r}")
    inner = path or os.path.join(parent, name)
    inner = "" if inner == "." else inner
    mine = own()
    out: dict[str, str] = {}
    if layout() == UNIFIED:
        # relative to the parent of this process's cgroup (its own has tasks: no controllers below it)
        base = "/" if os.path.isabs(inner) else os.path.dirname(mine.get("", "/"))
        return {"": os.path.normpath(os.path.join(ROOT, base.lstrip("/"), inner.lstrip("/")))}
    for key, mnt in mounts().items():
        base = "/" if os.path.isabs(inner) else mine.get(key, "/")
        out[key] = os.path.normpath(os.path.join(mnt, base.lstrip("/"), inner.lstrip("/")))
    return out


def relative(key: str, full: str) -> str:
    """A cgroup directory as a path inside its hierarchy (CRIU's cgroup root)."""
    mnt = mounts()[key]
    return "/" + os.path.relpath(full, mnt).lstrip(".")


def _write(path: str, value: str) -> None:
    """Write a cgroup file (never created: a missing one is ENOENT, as runc reports it)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise type(e)(e.errno, e.strerror, path) from None
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class SetupError(Exception):
    """A cgroup setting that cannot be made; create() turns it into fastckpt's Error."""


def create(paths: dict[str, str], resources: dict) -> list[str]:
    """Make the cgroup directories and apply the config's resources as runc does; returns what was made.

    A limit that cannot be applied (its controller missing on this host, a
    setting this cgroup version has not) is an error, and nothing made is left.
    """
    made: list[str] = []
    try:
        if set(paths) == {""} and layout() == UNIFIED:
            _mkdir_v2(paths[""], made)
            _set_v2(paths[""], resources)
        else:
            for key, path in paths.items():
                _mkdir_v1(key, path, made)
            _set_v1(paths, resources)
    except (OSError, SetupError) as e:
        from .errors import Error  # not at the top: the CLI imports this module before `re`

        if isinstance(e, Error):  # a device rule fastckpt refuses, as runc does
            err = e
        elif isinstance(e, SetupError):
            err = Error(f"error setting cgroup config: {e}", errno=errno.EINVAL)
        elif e.filename:
            err = Error(f"error setting cgroup config: {e.filename}: {e.strerror.lower()}"
                        f"{_missing_controller(e)}", errno=e.errno)
        else:
            err = Error(f"error setting cgroup config: {e.strerror}", errno=e.errno)
        remove(made)
        if err is e:
            raise
        raise err from e
    return made


def _missing_controller(e: OSError) -> str:
    """Why a cgroup v2 file is missing, when its controller is not available there."""
    if e.errno != errno.ENOENT or not e.filename:
        return ""
    d, name = os.path.split(e.filename)
    ctrl = name.split(".", 1)[0]
    try:
        available = _read(os.path.join(d, "cgroup.controllers")).split()
    except OSError:
        return ""
    if ctrl in available or ctrl == "cgroup":
        return ""
    return f" (the {ctrl} controller is not available in this host's cgroup v2 hierarchy)"


def _mkdir_v1(key: str, path: str, made: list[str]) -> None:
    todo = []
    p = path
    while not os.path.isdir(p):
        todo.append(p)
        p = os.path.dirname(p)
    for d in reversed(todo):
        os.mkdir(d, 0o755)
        made.append(d)
        if key == "cpuset":  # a v1 cpuset cgroup is empty when made: seeded from its parent
            parent = os.path.dirname(d)
            for f in ("cpuset.cpus", "cpuset.mems"):
                _write(os.path.join(d, f), _read(os.path.join(parent, f)) or "\n")


def _mkdir_v2(path: str, made: list[str]) -> None:
    """runc's fs2 CreateCgroupPath: each level made, the host's controllers enabled below every
    ancestor (best effort: a cgroup with tasks of its own refuses)."""
    try:
        ctrls = ["+" + c for c in _read(os.path.join(ROOT, "cgroup.controllers")).split()]
    except OSError:
        ctrls = []
    rel = os.path.relpath(path, ROOT)
    parts = [] if rel == "." else rel.split("/")
    current = ROOT
    for i in range(len(parts) + 1):
        if i:
            current = os.path.join(current, parts[i - 1])
            if not os.path.isdir(current):
                os.mkdir(current, 0o755)
                made.append(current)
        if i < len(parts) and ctrls:
            sc = os.path.join(current, "cgroup.subtree_control")
            try:
                _write(sc, " ".join(ctrls))
            except OSError:
                for c in ctrls:
                    try:
                        _write(sc, c)
                    except OSError:
                        pass


# --- resources: runc's v1 (fs) manager -----------------------------------------------

def _device_rule(d: dict) -> str:
    """A device exception as devices.allow/deny take it: "c 1:3 rwm"."""
    kind = d["type"]
    major = "*" if d.get("major", -1) < 0 else str(d["major"])
    minor = "*" if d.get("minor", -1) < 0 else str(d["minor"])
    return f"{kind} {major}:{minor} {d.get('permissions', 'rwm')}"


def _dev(d: dict) -> str:
    return f"{d['major']}:{d['minor']}"


def _set_v1(paths: dict[str, str], r: dict) -> None:
    """What runc's fs manager writes, controller by controller in its order."""
    def put(key: str, fname: str, value) -> None:
        if not paths.get(key):
            raise SetupError(f"cannot set {key} limit: container could not join or create cgroup")
        _write(os.path.join(paths[key], fname), str(value))

    if r.get("unified"):
        raise SetupError("invalid configuration: cannot use unified on cgroup v1")
    if r.get("cpuset_cpus"):
        put("cpuset", "cpuset.cpus", r["cpuset_cpus"])
    if r.get("cpuset_mems"):
        put("cpuset", "cpuset.mems", r["cpuset_mems"])
    if not r.get("skip_devices") and r.get("devices"):
        # as runc moves a new cgroup to the rules: the default first, then the exceptions in its order
        from .devicefilter import Rules

        rules = Rules(r["devices"])
        allow, deny = "devices.allow", "devices.deny"
        put("devices", allow if rules.default_allow else deny, "a")
        for (kind, major, minor), perms in rules.ordered():
            put("devices", deny if rules.default_allow else allow,
                _device_rule({"type": kind, "major": major, "minor": minor,
                              "permissions": "".join(c for c in "rwm" if c in perms)}))
    # memory: with both limits, the order that keeps memory <= memory+swap at each step
    mem, swap = r.get("memory") or 0, r.get("memory_swap") or 0
    if mem == -1 and swap == 0:
        swap = -1
    order = []
    if mem and swap:
        cur = int(_read(os.path.join(paths["memory"], "memory.limit_in_bytes"))) if paths.get("memory") else 0
        first_swap = swap == -1 or cur < swap
        order = [("memory.memsw.limit_in_bytes", swap), ("memory.limit_in_bytes", mem)]
        if not first_swap:
            order.reverse()
    else:
        order = [(f, v) for f, v in (("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", swap)) if v]
    for fname, v in order:
        put("memory", fname, v)
    if r.get("memory_reservation"):
        put("memory", "memory.soft_limit_in_bytes", r["memory_reservation"])
    if r.get("oom_kill_disable"):
        put("memory", "memory.oom_control", "1")
    sw = r.get("memory_swappiness")
    if sw is not None and sw != -1:
        if not 0 <= sw <= 100:
            raise SetupError(f"invalid value:{sw}. valid memory swappiness range is 0-100")
        put("memory", "memory.swappiness", sw)
    if r.get("cpu_shares"):
        put("cpu", "cpu.shares", r["cpu_shares"])
        got = int(_read(os.path.join(paths["cpu"], "cpu.shares")))
        if got != r["cpu_shares"]:
            which = "maximum" if r["cpu_shares"] > got else "minimum"
            raise SetupError(f"the {which} allowed cpu-shares is {got}")
    if r.get("cpu_period"):
        put("cpu", "cpu.cfs_period_us", r["cpu_period"])
    if r.get("cpu_quota"):
        put("cpu", "cpu.cfs_quota_us", r["cpu_quota"])
    if r.get("cpu_rt_period"):
        put("cpu", "cpu.rt_period_us", r["cpu_rt_period"])
    if r.get("cpu_rt_quota"):
        put("cpu", "cpu.rt_runtime_us", r["cpu_rt_quota"])
    if r.get("pids_limit"):
        put("pids", "pids.max", r["pids_limit"] if r["pids_limit"] > 0 else "max")
    _set_blkio_v1(paths, r, put)
    for h in r.get("hugetlb_limit") or []:
        put("hugetlb", f"hugetlb.{h['page_size']}.limit_in_bytes", h["limit"])
    if r.get("net_cls_classid_u"):
        put("net_cls", "net_cls.classid", r["net_cls_classid_u"])
    for p in r.get("net_prio_ifpriomap") or []:
        put("net_prio", "net_prio.ifpriomap", f"{p['interface']} {p['priority']}")
    for dev, limit in (r.get("rdma") or {}).items():
        put("rdma", "rdma.max", _rdma_line(dev, limit))


def _set_blkio_v1(paths: dict[str, str], r: dict, put) -> None:
    d = paths.get("blkio")
    bfq = bool(d) and not os.path.exists(os.path.join(d, "blkio.weight")) \
        and os.path.exists(os.path.join(d, "blkio.bfq.weight"))
    weight = "blkio.bfq.weight" if bfq else "blkio.weight"
    if r.get("blkio_weight"):
        put("blkio", weight, r["blkio_weight"])
    if r.get("blkio_leaf_weight"):
        put("blkio", "blkio.leaf_weight", r["blkio_leaf_weight"])
    for wd in r.get("blkio_weight_device") or []:
        if wd.get("weight"):
            put("blkio", weight + "_device", f"{_dev(wd)} {wd['weight']}")
        if wd.get("leafWeight"):
            put("blkio", "blkio.leaf_weight_device", f"{_dev(wd)} {wd['leafWeight']}")
    for key, fname in _THROTTLE_V1:
        for t in r.get(key) or []:
            put("blkio", fname, f"{_dev(t)} {t['rate']}")


_THROTTLE_V1 = (("blkio_throttle_read_bps_device", "blkio.throttle.read_bps_device"),
                ("blkio_throttle_write_bps_device", "blkio.throttle.write_bps_device"),
                ("blkio_throttle_read_iops_device", "blkio.throttle.read_iops_device"),
                ("blkio_throttle_write_iops_device", "blkio.throttle.write_iops_device"))
_THROTTLE_V2 = (("blkio_throttle_read_bps_device", "rbps"), ("blkio_throttle_write_bps_device", "wbps"),
                ("blkio_throttle_read_iops_device", "riops"), ("blkio_throttle_write_iops_device", "wiops"))


def _rdma_line(dev: str, limit: dict) -> str:
    parts = [dev]
    if limit.get("hca_handles") is not None:
        parts.append(f"hca_handle={limit['hca_handles']}")
    if limit.get("hca_objects") is not None:
        parts.append(f"hca_object={limit['hca_objects']}")
    return " ".join(parts)


# --- resources: runc's v2 (fs2) manager ---------------------------------------------

def _num(v: int) -> str:
    """runc's numToStr: 0 unset (""), -1 "max"."""
    return "" if not v else "max" if v == -1 else str(v)


def swap_v2(memory_swap: int, memory: int) -> int:
    """runc's ConvertMemorySwapToCgroupV2Value: v1's memory+swap limit as v2's swap alone."""
    if memory == -1 and memory_swap == 0:
        return -1
    if memory_swap in (-1, 0):
        return memory_swap
    if memory in (0, -1):
        raise SetupError("unable to set swap limit without memory limit")
    if memory < 0:
        raise SetupError(f"invalid memory value: {memory}")
    if memory_swap < memory:
        raise SetupError("memory+swap limit should be >= memory limit")
    return memory_swap - memory


def cpu_weight(shares: int) -> int:
    """runc's ConvertCPUSharesToCgroupV2Value: v1 cpu.shares [2-262144] as cpu.weight [1-10000]."""
    return 0 if not shares else 1 + ((shares - 2) * 9999) // 262142


def io_weight(blkio_weight: int) -> int:
    """runc's ConvertBlkIOToIOWeightValue: blkio weight [10-1000] as io.weight [1-10000]."""
    return 0 if not blkio_weight else 1 + (blkio_weight - 10) * 9999 // 990


def _set_v2(d: str, r: dict) -> None:
    """What runc's fs2 manager writes, in its order; settings cgroup v2 has not are errors."""
    def put(fname: str, value) -> None:
        _write(os.path.join(d, fname), str(value))

    v1_only = [k for k in ("cpu_rt_period", "cpu_rt_quota", "oom_kill_disable", "net_cls_classid_u",
                           "net_prio_ifpriomap", "blkio_leaf_weight") if r.get(k)]
    if r.get("memory_swappiness") not in (None, -1):
        v1_only.append("memory_swappiness")
    if v1_only:
        raise SetupError(f"{', '.join(v1_only)}: cgroup v1 settings that cgroup v2 has not; not applied")
    if r.get("pids_limit"):
        put("pids.max", _num(r["pids_limit"]) if r["pids_limit"] > 0 else "max")
    mem, swap, low = r.get("memory") or 0, r.get("memory_swap") or 0, r.get("memory_reservation") or 0
    if mem or swap or low:
        sv = swap_v2(swap, mem)
        s = _num(sv)
        if s == "" and sv == 0 and swap > 0:
            s = "0"  # memory and memory+swap set to the same value: no swap
        if s:
            try:
                put("memory.swap.max", s)
            except FileNotFoundError:
                if s not in ("max", "0"):  # no swap accounting: only "no limit" and "no swap" are harmless
                    raise
        if _num(mem):
            put("memory.max", _num(mem))
        if _num(low):
            put("memory.low", _num(low))
    _set_io_v2(d, r, put)
    weight = r.get("cpu_weight") or cpu_weight(r.get("cpu_shares") or 0)
    if weight:
        put("cpu.weight", weight)
    quota, period = r.get("cpu_quota") or 0, r.get("cpu_period") or 0
    if quota or period:
        put("cpu.max", (str(quota) if quota > 0 else "max") + (f" {period}" if period else ""))
    if not r.get("skip_devices"):
        from . import devicefilter

        devicefilter.attach(d, r.get("devices"))
    if r.get("cpuset_cpus"):
        put("cpuset.cpus", r["cpuset_cpus"])
    if r.get("cpuset_mems"):
        put("cpuset.mems", r["cpuset_mems"])
    for h in r.get("hugetlb_limit") or []:
        put(f"hugetlb.{h['page_size']}.max", h["limit"])
    for dev, limit in (r.get("rdma") or {}).items():
        put("rdma.max", _rdma_line(dev, limit))
    for k, v in (r.get("unified") or {}).items():
        if "/" in k:
            raise SetupError(f"unified resource {k!r} must be a file name (no slashes)")
        try:
            put(k, v)
        except (FileNotFoundError, PermissionError):
            ctrl = k.split(".", 1)
            if len(ctrl) != 2:
                raise SetupError(f"unified resource {k!r} must be in the form CONTROLLER.PARAMETER") from None
            if ctrl[0] != "cgroup" and ctrl[0] not in _read(os.path.join(d, "cgroup.controllers")).split():
                raise SetupError(f"unified resource {k!r} can't be set: controller {ctrl[0]!r} not available") \
                    from None
            raise


def _set_io_v2(d: str, r: dict, put) -> None:
    bfq = os.path.exists(os.path.join(d, "io.bfq.weight"))
    if r.get("blkio_weight"):
        if bfq:
            put("io.bfq.weight", r["blkio_weight"])
        else:
            put("io.weight", io_weight(r["blkio_weight"]))
    for wd in r.get("blkio_weight_device") or []:
        if not bfq:
            raise SetupError("blkio weight per device needs io.bfq.weight (the BFQ I/O scheduler); not applied")
        put("io.bfq.weight", f"{_dev(wd)} {wd['weight']}")
    for key, name in _THROTTLE_V2:
        for t in r.get(key) or []:
            put("io.max", f"{_dev(t)} {name}={t['rate']}")


def freezing(paths: dict[str, str]) -> dict[str, str]:
    """Of a container's cgroups, the one that freezes (and holds) all its tasks: v1's freezer, else v2's."""
    for key in ("freezer", ""):
        if key in paths:
            return {key: paths[key]}
    return {}


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

    def release(self, into: str | None = None) -> None:
        """Move what is left in the cgroup INTO another (default: its parent), and remove it."""
        for pid in _pids(os.path.join(self.path, "cgroup.procs")):
            try:
                _write(os.path.join(into or self.parent, "cgroup.procs"), str(pid))
            except OSError:
                pass  # it exited meanwhile
        self._remove()

    def _remove(self) -> None:
        remove([self.path])
