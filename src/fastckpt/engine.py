"""Options -> libcriu -> CRIU: the checkpoint path.

The one place that turns a :class:`CheckpointOptions` and a target (a runc
container or a process tree) into a configured ``_criu.Opts``, runs CRIU and
turns its failures into :class:`CriuError`.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import time

from ._record import Record, factory
from . import _criu, cgroups, criu_proc, kdat, locks, manifest, migration, netimages, pscork, runc, signals
from .constants import MIN_CRIU_VERSION
from .errors import (ContainerStateError, CriuError, CriuNotFound, CriuVersionError, DiskFull, Error,
                     ImageDirError, Interrupted, PermissionDenied, ProcessNotFound, UsageError, log_errors)
from .options import NETNS_HOST, NETNS_OWN, NETNS_OWN_LO, CheckpointOptions, auto_network_lock

DUMP_LOG = "dump.log"

# runc's keys for namespaces that a container joins by path (external to CRIU).
_EXTERNAL_NS = {"NEWNET": ("net", "extRootNetNS"), "NEWPID": ("pid", "extRootPidNS")}


class CheckpointResult(Record):
    """What a checkpoint made: where its images and CRIU's log are, what was checkpointed
    (``pid``, and ``container_id`` for a container), whether it was left running, how long it took
    (``wall_time``, and ``frozen_time`` when fastckpt froze the container itself) and the image
    files with their sizes (``files``). ``stats()`` decodes CRIU's statistics of the dump."""

    image_path: str
    work_path: str
    log_path: str
    pid: int
    container_id: str | None = None
    leave_running: bool = False
    wall_time: float = 0.0  # seconds, from the call to its return
    # seconds the container spent frozen by fastckpt (from its freeze to its thaw, or
    # to the end of the dump when CRIU killed it); None when fastckpt did not freeze it
    frozen_time: float | None = None
    files: dict[str, int] = factory(dict)  # image file -> size in bytes
    archive: object = None  # with --export: the archive.ExportResult

    def stats(self) -> dict[str, object]:
        """CRIU's statistics of this dump and fastckpt's wall time, as ``--print-stats`` prints them:
        ``{"criu": {...}, "wall_time_ms": ..., "frozen_time_ms": ...}`` (CRIU's times in microseconds,
        counts in pages; frozen_time_ms only when fastckpt froze a container itself).

        Decoded from ``stats-dump`` in ``work_path`` at each call; nothing is paid until then.
        """
        from .images import stats_report

        return stats_report(self.work_path, "dump", self.wall_time, self.frozen_time)


# --- CRIU itself -----------------------------------------------------------

def criu_binary() -> str:
    """The criu that libcriu will run: $FASTCKPT_CRIU, else `criu` from PATH."""
    name = criu_proc.criu_name()
    path = criu_proc.which(name)
    if not path:
        raise CriuNotFound(
            f"criu was not found ({name!r} on PATH={os.environ.get('PATH', '')}); "
            "install CRIU >= 4.1 (`make deps` does)"
        )
    return path


def new_opts(session=None) -> "_criu.Opts":
    """A fresh libcriu options object bound to the criu binary (or a session's warm CRIU service)."""
    binary = criu_binary()
    kdat.ensure(binary)
    opts = _criu.Opts()
    if os.geteuid() != 0:
        opts.set_unprivileged(True)  # CRIU's mode for CAP_CHECKPOINT_RESTORE without root
    if session is not None:
        opts.set_service_address(session.address)
    else:
        opts.set_service_binary(binary)
    return opts


def run_op(opts, op: str, session=None, *, log_path: str | None = None,
           timeout: float | None = None, setup=None, on_stop=None, watch=None,
           fresh: bool = False) -> tuple[int, int]:
    """Run one CRIU operation: in a session's warm service, or in a criu of our own
    spawning (its own session, under a watchdog); a watchdog stop is a CriuError."""
    if session is not None:
        return criu_proc.call(opts, op)
    r = criu_proc.run(opts, op, criu_binary(), log_path=log_path, timeout=timeout, setup=setup,
                      on_stop=on_stop, watch=watch, fresh=fresh)
    if isinstance(r, dict):
        return r
    ret, err, stopped = r
    if stopped:
        raise CriuError(op, ret, err, log_path, log_errors(log_path), detail=stopped)
    return ret, err


_version_cache: dict[str, tuple[int, int, int]] = {}


def criu_version() -> tuple[int, int, int]:
    """The version of the criu binary, asked once per process (and binary)."""
    path = criu_binary()
    if path not in _version_cache:
        ret, err = run_op(new_opts(), "version")
        if ret < 0:
            raise CriuError("version", ret, err)
        _version_cache[path] = (ret // 10000, ret // 100 % 100, ret % 100)
    return _version_cache[path]


def features() -> dict[str, bool]:
    """The kernel features CRIU finds (a CriuError when it cannot say)."""
    return run_op(new_opts(), "feature_check")


def check() -> dict[str, object]:
    """What `fastckpt check` reports: CRIU's path, version, `criu check` and kernel features."""
    path = criu_binary()
    require_privileges("check")  # CRIU's probes need them: refused in one line, as a checkpoint is
    version = criu_version()
    ret, err = run_op(new_opts(), "check")
    feats = features()
    notes = {}
    # userfaultfd alone does not make lazy pages work: CRIU's page server must size its pipe, and a
    # real lazy migration of a tiny process must work (probed once per boot, CRIU and limits)
    problem = migration.lazy_pages_problem(path) if feats.get("lazy_pages") else None
    if problem:
        feats["lazy_pages"] = False
        notes["lazy_pages"] = problem
    return {
        "criu": path,
        "version": ".".join(map(str, version)),
        "version_ok": version >= MIN_CRIU_VERSION,
        "check_ok": ret == 0,
        "libcriu": ".".join(map(str, _criu.LIBCRIU_VERSION)),
        "features": feats,
        "feature_notes": notes,
    }


def raise_criu_failure(op: str, ret: int, err: int, log_path: str | None,
                       image_path: str | None = None, disk_full: bool = False) -> None:
    lines = log_errors(log_path)
    detail = ""
    # CRIU's message may be cut short ("No space lef"), or missing when its log
    # had no room either: the free space measured after the failure decides then
    if image_path and (disk_full or err == errno.ENOSPC or any("No space le" in l for l in lines)):
        raise DiskFull(f"criu {op} failed: no space left on the disk holding {image_path}; the partial "
                       f"images were removed ({_free_bytes(image_path) >> 20} MiB free now)"
                       + (f" (log: {log_path})" if log_path else ""), errno=errno.ENOSPC)
    taken = next((m for m in map(_FORK_EXISTS.search, lines) if m), None)
    if taken:
        detail = f"{taken.group(0)}: pid {taken.group(1)}, which the restored tree needs, {_pid_holder(int(taken.group(1)))}"
    elif any("session leader" in l and "outside of its pid namespace" in l for l in lines):
        # CRIU refuses this whatever the options, so say what does help
        detail = (f"{lines[0]}: the tree's session leader is in an outer pid namespace; start the tree "
                  "with setsid (--shell-job does not help here)")
    elif not lines:
        try:
            v = criu_version()
        except Error:
            v = None
        if v is not None and v < MIN_CRIU_VERSION:
            raise CriuVersionError(op, ret, err, log_path, lines,
                                   f"CRIU {'.'.join(map(str, v))} is too old (need >= 4.1)")
    raise CriuError(op, ret, err, log_path, lines, detail)


_FORK_EXISTS = re.compile(r"Can't fork for (\d+): File exists")


def _pid_holder(pid: int) -> str:
    """Who holds PID, as said after "pid N, which the restored tree needs, ..."."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return "was taken and is free now: try again"
    comm = data[data.index("(") + 1:data.rindex(")")]
    state, ppid = data[data.rindex(")") + 2:].split()[:2]
    if state in ("Z", "X"):
        return (f"is held by {comm!r}, a dead process (zombie) that its parent (pid {ppid}) has not reaped yet: "
                "try again once it has")
    return f"is taken by {comm!r} (parent pid {ppid}), a running process"


# A dump that ends a process tree leaves its processes as zombies until their new parent (PID 1, or a
# subreaper) reaps them -- ~1.5 s on some hosts -- and a zombie still holds its pid and its process group
# and session ids, which a restore of the tree needs: the checkpoint returns once they are free.
TREE_IDS_WAIT = 10.0


def _stat_start(pid: int) -> bytes | None:
    """PID's start time (a zombie's too), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def tree_members(pid: int) -> list[tuple[int, bytes]]:
    """The processes below PID, each with its start time (which tells it from a later one of its pid), and
    PID itself when its parent is PID 1 (a detached or restored tree; another parent reaps it when it
    will -- fastckpt's caller may be that parent)."""
    out = []
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        root_reaped_by_init = data[data.rindex(b")") + 2:].split()[1] == b"1"
    except (OSError, ValueError, IndexError):
        root_reaped_by_init = False
    for p in ([pid] if root_reaped_by_init else []) + criu_proc.descendants(pid):
        start = _stat_start(p)
        if start is not None:
            out.append((p, start))
    return out


def wait_ids_free(members: list[tuple[int, bytes]], timeout: float = TREE_IDS_WAIT) -> None:
    """Wait (at most TIMEOUT) until the processes MEMBERS are gone, reaped by their parent."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while members:
        members = [(p, start) for p, start in members if _stat_start(p) == start]
        if not members or time.monotonic() > deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1


# --- image and work directories ---------------------------------------------

def make_private_dir(path: str, what: str) -> bool:
    """Create PATH (and parents) for process memory: the leaf is 0700; True if it was made here.

    An existing directory must be ours and writable by nobody else (it will
    hold process memory, and a writable one could be swapped under us).
    """
    made = not os.path.lexists(path)
    if not made and not os.path.isdir(path):  # makedirs would say "File exists"
        raise ImageDirError(f"{what} {path} is not a directory", errno=errno.ENOTDIR)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ImageDirError(f"cannot create {what} {path}: {e.strerror}", errno=e.errno) from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ImageDirError(f"{what} {path} is not a directory", errno=errno.ENOTDIR)
    check_private_dir(path, what, st)
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return made


def make_private_dirs(image_path: str, work_path: str) -> None:
    """The image and work directories; when the second cannot be had, the first is not left made."""
    made = make_private_dir(image_path, "image directory")
    if work_path == image_path:
        return
    try:
        make_private_dir(work_path, "work directory")
    except Error:
        if made:
            try:
                os.rmdir(image_path)
            except OSError:
                pass
        raise


def check_private_dir(path: str, what: str, st: os.stat_result | None = None) -> None:
    st = st or os.stat(path)
    if st.st_uid != os.geteuid():
        raise ImageDirError(f"{what} {path} belongs to uid {st.st_uid}, not to the user running fastckpt "
                            f"(uid {os.geteuid()}): refused", errno=errno.EPERM)
    if st.st_mode & 0o022:
        raise ImageDirError(f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): refused",
                            errno=errno.EPERM)


def require_writable_work_dir(path: str, log: str) -> None:
    """CRIU writes its LOG in the work directory (the image directory without --work-path): one it
    cannot write in is refused before CRIU runs (CRIU would fail naming a log it could not create)."""
    if os.access(path, os.W_OK):
        return
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = "is on a read-only file system" if read_only else "is not writable"
    raise ImageDirError(f"the work directory {path} {why}: CRIU cannot write its log ({log}) there; "
                        "give a writable directory with --work-path (work_path=)",
                        errno=errno.EROFS if read_only else errno.EACCES)


# Linux capability numbers
CAP_SYS_ADMIN = 21
CAP_CHECKPOINT_RESTORE = 40


def require_privileges(op: str) -> None:
    """CRIU needs root, or CAP_CHECKPOINT_RESTORE with CAP_SYS_ADMIN: refuse early and clearly."""
    if os.geteuid() == 0:
        return
    eff = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    eff = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    need = (1 << CAP_SYS_ADMIN) | (1 << CAP_CHECKPOINT_RESTORE)
    if eff & need != need:
        raise PermissionDenied(f"{op} needs root (or the capabilities CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN); "
                               f"fastckpt runs as uid {os.geteuid()} without them")


def open_dir_fd(path: str, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ImageDirError(f"cannot open {what} {path}: {e.strerror}", errno=e.errno) from None
    os.set_inheritable(fd, True)  # criu swrk is exec'd and uses the fd number
    return fd


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


META_FILE = "fastckpt.json"


def write_meta(image_path: str, ct: runc.Container | None, netns: str = NETNS_HOST,
               network_lock: str = "iptables") -> None:
    """What fastckpt keeps beside CRIU's images: the kind of checkpoint and,
    for a container, runc's state (its config) so that restore needs no
    conversion; what network namespace it had and how it was locked."""
    meta = {"format": 1, "kind": "container" if ct else "process", "netns": netns,
            "network_lock": network_lock, "boot_id": boot_id()}
    if ct is not None:
        meta["id"] = ct.id
        meta["state"] = ct.state
    _write_private(os.path.join(image_path, META_FILE), json.dumps(meta).encode())


def boot_id() -> str | None:
    """This boot's id (a restore on the same boot as its checkpoint knows the clocks went on)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def read_meta(image_path: str) -> dict | None:
    try:
        with open(os.path.join(image_path, META_FILE), "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise Error(f"cannot read {META_FILE} in {image_path}: {e}") from e


def list_images(path: str) -> dict[str, int]:
    out = {}
    with os.scandir(path) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                out[e.name] = e.stat(follow_symlinks=False).st_size
    return dict(sorted(out.items()))


# --- containers --------------------------------------------------------------

def _cgroup_bind_mounts(pid: int, dest: str) -> list[str]:
    """Mount points below DEST (the container's cgroup mount) seen in its mountinfo."""
    prefix = dest.rstrip("/") + "/"
    out = []
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                parts = line.split()
                sep = parts.index("-")
                mnt, fstype = parts[4], parts[sep + 1]
                if mnt.startswith(prefix) and fstype in ("cgroup", "cgroup2"):
                    out.append(mnt)
    except (OSError, ValueError):
        pass
    return out


def resolve_in_root(rootfs: str, path: str) -> str:
    """PATH inside ROOTFS with its symlinks resolved as the container sees them (each link's target
    taken inside ROOTFS, never above it), as runc's securejoin does; returns the path inside ROOTFS."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    out: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if out:
                out.pop()
            continue
        here = os.path.join(rootfs, *out, part)
        try:
            target = os.readlink(here)
        except OSError:  # not a link (or not there): kept as it is
            out.append(part)
            continue
        hops += 1
        if hops > 255:
            raise Error(f"too many levels of symbolic links in {path} (in {rootfs})", errno=errno.ELOOP)
        if target.startswith("/"):
            out = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return "/" + "/".join(out)


def container_external_mounts(ct: runc.Container) -> list[tuple[str, str]]:
    """(key, value) pairs of the container's external mounts, as runc gives them to CRIU."""
    cfg = ct.config
    pid = ct.init_pid
    ext: dict[str, str] = {}
    cgroupns = ct.has_namespace("NEWCGROUP")
    for m in cfg.get("mounts") or []:
        dest = m["destination"]
        if m.get("device") == "bind":
            # a destination through a symlink was mounted where the link leads (runc: securejoin)
            dest = resolve_in_root(ct.rootfs, dest)
            ext[dest] = dest
        elif m.get("device") == "cgroup" and not cgroupns:
            for mnt in _cgroup_bind_mounts(pid, dest):
                ext[mnt] = mnt
    for path in cfg.get("mask_paths") or []:
        # masked files are /dev/null bind mounts; masked dirs are tmpfs (real mounts)
        if not os.path.isdir(f"/proc/{pid}/root{path}"):
            ext[path] = "/dev/null"
    for dev in cfg.get("devices") or []:
        if dev.get("path"):
            ext.setdefault(dev["path"], dev["path"])
    return list(ext.items())


def container_netns(ct: runc.Container) -> str:
    """NETNS_OWN_LO, NETNS_OWN or NETNS_HOST (a namespace joined by path counts as the host's)."""
    if not ct.has_own_netns():
        return NETNS_HOST
    try:
        with open(f"/proc/{ct.init_pid}/net/dev") as f:
            names = {line.split(":", 1)[0].strip() for line in f.readlines()[2:]}
    except OSError:
        return NETNS_OWN
    return NETNS_OWN_LO if names == {"lo"} else NETNS_OWN


def container_externals(ct: runc.Container) -> list[str]:
    out = []
    for ns_type, (name, key) in _EXTERNAL_NS.items():
        path = ct.namespace_path(ns_type)
        if path:
            try:
                ino = os.stat(path).st_ino
            except OSError as e:
                raise Error(f"cannot stat namespace {path} of container {ct.id!r}: {e.strerror}") from e
            out.append(f"{name}[{ino}]:{key}")
    return out


def load_checkpointable(container_id: str, root: str) -> tuple[runc.Container, str]:
    ct = runc.load(container_id, root)
    status = ct.status()
    if status == runc.CREATED:
        raise ContainerStateError("Container cannot be checkpointed in created state")
    if status == runc.STOPPED:
        raise ContainerStateError(f"container {container_id!r} is stopped: there is nothing to checkpoint")
    return ct, status


# --- checkpoint ----------------------------------------------------------------

def _check_pid(pid) -> None:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise UsageError(f"pid must be an integer, not {type(pid).__name__} {pid!r}")
    if pid <= 1:
        raise UsageError(f"cannot checkpoint pid {pid}")
    if pid == os.getpid():
        raise UsageError("cannot checkpoint fastckpt's own process")
    if runc.proc_start_time(pid) is None:
        raise ProcessNotFound(f"no running process with pid {pid}")


def apply_common(opts: "_criu.Opts", o: CheckpointOptions, netns: str = NETNS_HOST,
                 dumped_with: str | None = "skip") -> str:
    """The options checkpoint and restore share; NETNS: what network namespace the target has.

    Returns the network lock used ("iptables", "nftables" or "skip")."""
    opts.set_log_level(o.log_level)
    opts.set_tcp_established(o.tcp_established)
    opts.set_ext_unix_sk(o.ext_unix_sk)
    opts.set_shell_job(o.shell_job)
    opts.set_file_locks(o.file_locks)
    if o.manage_cgroups_mode is not None:
        opts.set_manage_cgroups_mode(int(o.manage_cgroups_mode))
    if o.empty_ns:
        opts.set_empty_ns(int(o.empty_ns))
    lock = o.network_lock
    if lock is None:
        lock = auto_network_lock(netns, o.empty_ns, o.tcp_established, dumped_with)
    if lock is not None:
        opts.set_network_lock(int(lock))
    for key in o.extra_externals:
        opts.add_external(key)
    if o.auto_dedup:
        opts.set_auto_dedup(True)
    return lock.name.lower() if lock is not None else "iptables"  # None: CRIU's default


def apply_config_file(opts: "_criu.Opts", labels, work_path: str, lazy_pages: bool = False,
                      page_server=None) -> None:
    """runc's container-specific CRIU configuration file (org.criu.config, else /etc/criu/runc.conf);
    with LAZY_PAGES, one of fastckpt's own that adds `lazy-pages` to it (libcriu has no setter)."""
    path = migration.criu_config_file(labels) if labels is not None else None  # None: not a container
    if lazy_pages:
        path = migration.lazy_config_file(work_path, path, page_server)
    if path:
        opts.set_config_file(path)


def checkpoint(container_id: str | None = None, options: CheckpointOptions | None = None, *,
               pid: int | None = None, root: str = runc.DEFAULT_ROOT, session=None,
               **kwargs) -> CheckpointResult:
    """Checkpoint a runc container (by id) or a process tree (by ``pid``).

    ``options`` or keyword arguments (the fields of :class:`CheckpointOptions`)
    say how; a container is left running only with ``leave_running``.
    ``session``: a :class:`fastckpt.Session` whose warm CRIU does the work.
    """
    t0 = time.monotonic()
    if options is None:
        options = CheckpointOptions(**kwargs)
    elif kwargs:
        options = options.replace(**kwargs)
    if (container_id is None) == (pid is None):
        raise UsageError("give either a container id or a pid")
    if options.export:
        from .archive import checkpoint_export

        return checkpoint_export(container_id, options, pid=pid, root=root, session=session)
    require_privileges("checkpoint")
    if container_id is not None:
        runc.validate_id(container_id)
    else:
        _check_pid(pid)
    result = None
    try:
        lock = locks.container(root, container_id) if container_id is not None else locks.process(pid)
        if session is None:
            criu_proc.prespawn()  # its exec overlaps the set-up below
        # a container dump has CRIU set up cgroups: opted in, that does not wait a grace period
        with lock, cgroups.FastMigrations(container_id is not None and options.fast_migrations):
            result = _checkpoint_locked(container_id, options, pid, root, session, t0)
        return result
    except KeyboardInterrupt:
        # outside _checkpoint_locked (which says what it left): before it (nothing was touched) or after
        # it returned (the checkpoint is complete)
        if result is not None:
            what = f"container {container_id!r}" if container_id is not None else f"process {pid}"
            gone = "was left running" if result.leave_running else "was checkpointed and is gone"
            raise Interrupted(f"interrupted after the checkpoint completed: images in {result.image_path}; "
                              f"{what} {gone}") from None
        raise Interrupted(f"interrupted: nothing was checkpointed; {_untouched(container_id, pid, root)}") \
            from None
    finally:
        criu_proc.discard_spare()  # not used: the checkpoint stopped before CRIU


def _untouched(container_id: str | None, pid: int | None, root: str) -> str:
    """What a checkpoint interrupted before it began left: its target as it was."""
    if container_id is None:
        return f"process {pid} is running"
    try:
        paused = runc.load(container_id, root).status() == runc.PAUSED
    except Error:
        paused = False
    return f"container {container_id!r} " + ("is paused, as it was" if paused else "is running")


def _checkpoint_locked(container_id, options: CheckpointOptions, pid, root, session, t0) -> CheckpointResult:
    ct: runc.Container | None = None
    was_paused = False
    what = f"container {container_id!r}" if container_id is not None else f"process {pid}"
    image_path = options.resolved_image_path()
    done = False  # the checkpoint is complete: from here on an interruption changes nothing
    try:
        if container_id is not None:
            ct, status = load_checkpointable(container_id, root)
            was_paused = status == runc.PAUSED
            target_pid = ct.init_pid
        else:
            target_pid = int(pid)
        _check_before_freezing(options, ct, image_path)
        work_path = options.resolved_work_path()
        make_private_dirs(image_path, work_path)
        log_path = os.path.join(work_path, DUMP_LOG)
        opts = new_opts(session)
        state = (f"{what} was left running" if options.leave_running or options.pre_dump
                 else f"{what} was checkpointed and is gone")
        manifest_error: Error | None = None
        # the processes a dump that ends the tree leaves as zombies (their ids wanted by a restore)
        members = tree_members(target_pid) if ct is None and not options.leave_running else []
        with signals.deferred():
            try:
                ret, err, known, frozen = _dump(opts, options, ct, was_paused, target_pid, image_path, work_path,
                                                session)
            except CriuError:  # CRIU stopped by the watchdog: nothing may look like a checkpoint
                _discard_partial_images(image_path)
                raise
            if ret < 0:
                full = _disk_full(image_path, work_path)  # before the partial images go
                _discard_partial_images(image_path)
            else:
                done = True
                if ct is not None and not (options.leave_running or options.pre_dump):
                    ct.destroy()
                try:  # the sizes and checksums that restore checks before CRIU runs
                    netimages.prune(image_path)
                    manifest.write(image_path, known)
                except Error as e:
                    manifest_error = e
        if ret < 0:
            raise_criu_failure("dump", ret, err, log_path, image_path, disk_full=full)
        if manifest_error is not None:
            raise ImageDirError(f"the checkpoint completed (images in {image_path}; {state}), but its manifest "
                                f"could not be written: {manifest_error}; a restore can check only the images' "
                                "structure", errno=manifest_error.errno) from manifest_error
        wait_ids_free(members)
        return CheckpointResult(
            image_path=image_path, work_path=work_path, log_path=log_path, pid=target_pid,
            container_id=container_id, leave_running=options.leave_running,
            wall_time=time.monotonic() - t0, frozen_time=frozen, files=list_images(image_path),
        )
    except KeyboardInterrupt:
        if done:
            raise Interrupted(f"interrupted after the checkpoint completed: images in {image_path}; {state}") \
                from None
        running = "is running" if not was_paused else "is paused, as it was"
        if not was_paused and ct is not None and ct.is_frozen():
            running = "is paused (by someone else, while the checkpoint ran)"
        raise Interrupted(f"interrupted: nothing was checkpointed; {what} {running}") from None


def _check_before_freezing(options: CheckpointOptions, ct: runc.Container | None, image_path: str) -> None:
    """What would make the checkpoint fail (or unrestorable), refused while the target runs untouched."""
    if options.parent_path:
        migration.check_parent_path(image_path, options.parent_path)
    if options.status_fd is not None:
        migration.check_status_fd(options.status_fd)
    if options.pre_dump or options.parent_path or options.lazy_pages:
        feats = features()
        if options.pre_dump or options.parent_path:
            migration.require_mem_track(feats, "--pre-dump" if options.pre_dump else "--parent-path")
        if options.lazy_pages:
            migration.require_lazy_pages(feats, criu_binary())


def _notify_handler(options: CheckpointOptions):
    """CRIU's notifications a checkpoint acts on: "status-ready" (the lazy page server listens):
    a \\0 to --status-fd. None when there is nothing to act on (CRIU then sends none)."""
    if options.status_fd is None:
        return None
    fd = [options.status_fd]

    def handler(action: str, pid: int) -> int:
        if action == "status-ready" and fd:
            migration.write_status(fd.pop())
        return 0

    return handler


def _disk_full(*paths: str) -> bool:
    """Less room left than one of CRIU's page pipes holds: a dump that failed here ran out of disk."""
    return any(0 <= _free_bytes(p) < (4 << 20) for p in paths)


def _dump(opts, options: CheckpointOptions, ct: runc.Container | None, was_paused: bool, target_pid: int,
          image_path: str, work_path: str, session=None) -> tuple[int, int, dict | None, float | None]:
    """Configure OPTS and run CRIU's dump; the container is thawed again whatever happens.

    Returns CRIU's (ret, errno), the pages checksums computed meanwhile and how
    long fastckpt kept the container frozen (None: it did not freeze it)."""
    fds = [open_dir_fd(image_path, "image directory")]
    try:
        opts.set_images_dir_fd(fds[0])
        if work_path != image_path:
            fds.append(open_dir_fd(work_path, "work directory"))
        opts.set_work_dir_fd(fds[-1])
        opts.set_log_file(DUMP_LOG)
        opts.set_pid(target_pid)
        opts.set_leave_running(options.leave_running)
        if options.page_server is not None and not options.lazy_pages:  # lazy: the config file says it
            opts.set_page_server(options.page_server.address, options.page_server.port)
        netns = container_netns(ct) if ct is not None else NETNS_HOST
        lock = apply_common(opts, options, netns)
        if options.parent_path:
            opts.set_parent_images(options.parent_path)  # relative to the image directory, as CRIU takes it
        if options.pre_dump or options.parent_path:
            opts.set_track_mem(True)
        handler = _notify_handler(options)
        if handler is not None:
            opts.set_notify(handler)
        if ct is not None or options.lazy_pages:
            apply_config_file(opts, (ct.config.get("labels") or []) if ct is not None else None, work_path,
                              options.lazy_pages, options.page_server)
        if ct is not None:
            opts.set_root(ct.rootfs)
            opts.set_manage_cgroups(True)
            opts.set_orphan_pts_master(True)
            if ct.freeze_cgroup:
                opts.set_freeze_cgroup(ct.freeze_cgroup)
            for key, val in container_external_mounts(ct):
                opts.add_ext_mount(key, val)
            for key in container_externals(ct):
                opts.add_external(key)
        try:
            if ct is not None and not options.pre_dump:
                # runc restore reads how the container's stdio was connected from here
                _write_private(os.path.join(image_path, runc.DESCRIPTORS_FILE),
                               json.dumps(ct.external_descriptors).encode())
            if not options.pre_dump:  # a pre-dump is a parent of checkpoints, not one to restore
                write_meta(image_path, ct, netns, lock)
        except OSError as e:
            _discard_partial_images(image_path)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"no space left on the disk holding {image_path}: nothing was checkpointed",
                               errno=e.errno) from None
            raise ImageDirError(f"cannot write in image directory {image_path}: {e.strerror}",
                                errno=e.errno) from None
        ret = -1

        frozen_at: list[float] = []

        def freeze(criu_pid=None):
            # frozen here in ~1 ms (CRIU's own freeze polls every 100 ms), once criu
            # is up and about to get its request: its start is not frozen time
            if ct is not None and not was_paused and ct.freezer_state_file:
                frozen_at.append(time.monotonic())
                ct.freeze_and_wait()

        # a pause by someone else while CRIU works would hang it: the watchdog stops CRIU then
        outside_pause = criu_proc.OutsidePause(ct.is_frozen) if ct is not None and not was_paused \
            and ct.freezer_state_file else None
        try:
            if session is not None:
                freeze()
            # checksum the pages images for the manifest while CRIU writes them
            follower = manifest.Follower(image_path) if options.page_server is None else None
            try:  # CRIU's last command to a page server would wait 200 ms in its corked socket (pscork)
                with pscork.uncork(options.page_server if session is None and not options.lazy_pages else None):
                    ret, err = run_op(opts, "pre_dump" if options.pre_dump else "dump", session,
                                      log_path=os.path.join(work_path, DUMP_LOG), setup=freeze if session is None
                                      else None, timeout=criu_proc.dump_bound(target_pid), watch=outside_pause)
            finally:
                known = follower.stop() if follower else None
        finally:
            if ct is not None and ct.is_frozen():
                # CRIU leaves a cgroup it found frozen frozen: thaw what we froze, and a
                # paused container whose processes CRIU killed (they die once thawed);
                # a paused container that is still there stays paused, as does one
                # paused by someone else meanwhile
                if outside_pause is not None and outside_pause.paused:
                    pass
                elif not was_paused or (ret >= 0 and not (options.leave_running or options.pre_dump)):
                    ct.thaw()
        frozen = time.monotonic() - frozen_at[0] if frozen_at else None
        return ret, err, known, frozen
    finally:
        for fd in fds:
            os.close(fd)


def _discard_partial_images(image_path: str) -> None:
    """After a failed dump nothing may look like a checkpoint: CRIU's images and
    fastckpt's files go, the logs stay."""
    try:
        names = os.listdir(image_path)
    except OSError:
        return
    for name in names:
        if name.endswith(".img") or name in (META_FILE, runc.DESCRIPTORS_FILE, "stats-dump",
                                             manifest.MANIFEST_FILE):
            try:
                os.unlink(os.path.join(image_path, name))
            except OSError:
                pass
