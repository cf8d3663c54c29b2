"""Restore: images -> a running runc container (or process tree) again.

A restored container is a runc container: its state directory is written as
runc 1.1 writes it, so `runc list/state/exec/kill/delete` work on it.
Everything made on the way (state dir, cgroups, the root bind mount) is
undone when the restore fails.
"""
from __future__ import annotations

import errno
import json
import os
import time

from ._record import Record
from . import _libc, cgroups, criu_proc, engine, locks, manifest, runc, signals
from .errors import ContainerStateError, Error, ImageDirError, Interrupted, UsageError
from .constants import CgroupMode, Namespace
from .options import NETNS_HOST, NETNS_OWN, RestoreOptions

RESTORE_LOG = "restore.log"
CRIU_ROOT = "criu-root"

_NS_FILES = {"NEWCGROUP": "cgroup", "NEWIPC": "ipc", "NEWNET": "net", "NEWNS": "mnt", "NEWPID": "pid",
             "NEWUSER": "user", "NEWUTS": "uts"}
_INHERIT_NS = {"NEWNET": "extRootNetNS", "NEWPID": "extRootPidNS"}


class RestoreResult(Record):
    pid: int
    image_path: str
    work_path: str
    log_path: str
    container_id: str | None = None
    bundle: str | None = None
    wall_time: float = 0.0
    exit_status: int | None = None  # when not detached: how the container ended

    def stats(self) -> dict[str, object]:
        """CRIU's statistics of this restore and fastckpt's wall time, as ``--print-stats`` prints them:
        ``{"criu": {...}, "wall_time_ms": ...}`` (CRIU's times in microseconds, counts in pages).

        Decoded from ``stats-restore`` in ``work_path`` at each call; nothing is paid until then.
        """
        from .images import stats_report

        return stats_report(self.work_path, "restore", self.wall_time)


# --- what the images are -------------------------------------------------------

def image_kind(image_path: str) -> tuple[str, dict | None]:
    """('container' | 'process', fastckpt metadata or None) for an image directory."""
    if not os.path.isdir(image_path):
        if os.path.lexists(image_path):
            raise ImageDirError(f"image directory {image_path} is not a directory", errno=errno.ENOTDIR)
        raise ImageDirError(f"image directory {image_path} does not exist", errno=errno.ENOENT)
    if not os.path.exists(os.path.join(image_path, "inventory.img")):
        raise ImageDirError(f"{image_path} holds no checkpoint (no inventory.img)", errno=errno.ENOENT)
    meta = engine.read_meta(image_path)
    if meta is not None:
        return meta.get("kind", "process"), meta
    # runc writes descriptors.json with every container checkpoint
    if os.path.exists(os.path.join(image_path, runc.DESCRIPTORS_FILE)):
        return "container", None
    return "process", None


# --- the container's config --------------------------------------------------------

def _spec_rootfs(bundle: str) -> str:
    cfg_path = os.path.join(bundle, "config.json")
    try:
        with open(cfg_path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"bundle {bundle} has no config.json (use --bundle DIR)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {cfg_path}: {e}") from None
    root = (spec.get("root") or {}).get("path") or "rootfs"
    rootfs = os.path.realpath(os.path.join(bundle, root))
    if not os.path.isdir(rootfs):
        raise UsageError(f"the rootfs {rootfs} of bundle {bundle} does not exist")
    return rootfs


def config_from_bundle(bundle: str) -> dict:
    """runc's own conversion of the bundle's OCI spec into its container config.

    For images without fastckpt's metadata (made by `runc checkpoint`): runc
    creates a throw-away container from the bundle in a private state root;
    its config is read and the container deleted at once.
    """
    import shutil
    import subprocess
    import tempfile

    from .bundle import runc_log_errors

    tmp = tempfile.mkdtemp(prefix="fastckpt-conv-")
    cid = f"fastckpt-conv-{os.getpid()}-{time.monotonic_ns()}"
    log = os.path.join(tmp, "runc.log")
    base = ["runc", "--root", tmp, "--log", log, "--log-format", "json"]
    try:
        with open(os.devnull, "r+b") as null:
            rc = subprocess.run(base + ["create", "--bundle", bundle, cid], stdin=null, stdout=null,
                                stderr=null).returncode
            if rc:
                raise Error(f"runc cannot create a container from bundle {bundle}: "
                            f"{runc_log_errors(log) or f'exit {rc}'}")
            with open(os.path.join(tmp, cid, runc.STATE_FILE)) as f:
                state = json.load(f)
            subprocess.run(base + ["delete", "-f", cid], stdin=null, stdout=null, stderr=null)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cfg = state["config"]
    cg = cfg.get("cgroups") or {}
    if cg.get("name") == cid:
        cg["name"] = ""
    return cfg


def container_config(container_id: str, bundle: str, meta: dict | None) -> dict:
    rootfs = _spec_rootfs(bundle)
    if meta and meta.get("state"):
        cfg = json.loads(json.dumps(meta["state"]["config"]))
        old_id = meta.get("id")
    else:
        cfg = config_from_bundle(bundle)
        old_id = None
    cfg["rootfs"] = rootfs
    cfg["labels"] = [l for l in cfg.get("labels") or [] if not l.startswith("bundle=")] + [f"bundle={bundle}"]
    cg = cfg.setdefault("cgroups", {})
    if not cg.get("path") and cg.get("name") in ("", None, old_id):
        cg["name"] = container_id
    return cfg


# --- mounts --------------------------------------------------------------------

def _prepare_mountpoints(cfg: dict) -> None:
    """Bind mount targets must exist in the rootfs for CRIU to mount onto them."""
    rootfs = cfg["rootfs"]
    for m in cfg.get("mounts") or []:
        if m.get("device") != "bind":
            continue
        target = os.path.join(rootfs, m["destination"].lstrip("/"))
        if os.path.lexists(target):
            continue
        if os.path.isdir(m["source"]):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()


def _restore_ext_mounts(cfg: dict, cg_paths: dict[str, str]) -> list[tuple[str, str]]:
    ext: dict[str, str] = {}
    for m in cfg.get("mounts") or []:
        if m.get("device") == "bind":
            ext[m["destination"]] = m["source"]
        elif m.get("device") == "cgroup" and cgroups.layout() != cgroups.UNIFIED:
            # the container saw each v1 hierarchy at <dest>/<mount dir name>: give it its new cgroups
            # (on cgroup v2 its cgroup mount is a real one, restored by CRIU)
            for key, mnt in cgroups.mounts().items():
                if key in cg_paths:
                    ext[os.path.join(m["destination"], os.path.basename(mnt))] = cg_paths[key]
    ext["/dev/null"] = "/dev/null"  # masked files
    for dev in cfg.get("devices") or []:
        if dev.get("path"):
            ext.setdefault(dev["path"], dev["path"])
    return list(ext.items())


# --- state.json -------------------------------------------------------------------

def _rfc3339_now() -> str:
    """Now, as runc writes `created` (RFC 3339, nanoseconds, UTC)."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def _write_state(state_dir: str, state: dict) -> None:
    tmp = os.path.join(state_dir, f".{runc.STATE_FILE}.tmp")
    data = json.dumps(state).encode()  # dumps: the C encoder (json.dump encodes in Python, ~1.5 ms here)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(state_dir, runc.STATE_FILE))


def _descriptors(image_path: str) -> list[str]:
    try:
        with open(os.path.join(image_path, runc.DESCRIPTORS_FILE)) as f:
            d = json.load(f)
        return [str(x) for x in d] if isinstance(d, list) else []
    except (OSError, ValueError):
        return []


# --- loopback --------------------------------------------------------------------

def ensure_loopback_up(pid: int) -> None:
    """Bring `lo` up in the network namespace of PID (CRIU leaves it down)."""
    import _socket  # not `socket`: its enum set-up costs milliseconds
    import fcntl
    import struct
    import threading

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    errors: list[BaseException] = []

    def work():
        # setns() changes only this thread's namespace; the thread ends right after
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                _libc.setns(fd, _libc.CLONE_NEWNET)
            finally:
                os.close(fd)
            s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
            try:
                req = struct.pack("16sH14x", b"lo", 0)
                flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
                if not flags & IFF_UP:
                    fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
            finally:
                s.close()
        except BaseException as e:  # reported by the caller's thread
            errors.append(e)

    t = threading.Thread(target=work, name="fastckpt-netns")
    t.start()
    t.join()
    if errors:
        raise Error(f"cannot bring up the loopback of the restored container: {errors[0]}") from errors[0]


# --- restore -----------------------------------------------------------------------

def _new_opts(options: RestoreOptions, image_fd: int, work_fd: int, netns: str = NETNS_HOST, session=None,
              dumped_with: str | None = None):
    opts = engine.new_opts(session)
    opts.set_images_dir_fd(image_fd)
    opts.set_work_dir_fd(work_fd)
    opts.set_log_file(RESTORE_LOG)
    engine.apply_common(opts, options, netns, dumped_with)
    return opts


def _open_dirs(options: RestoreOptions) -> tuple[str, str, list[int]]:
    image_path = options.resolved_image_path()
    work_path = options.resolved_work_path()
    if work_path != image_path:
        engine.make_private_dir(work_path, "work directory")
    fds = [engine.open_dir_fd(image_path, "image directory")]
    fds.append(engine.open_dir_fd(work_path, "work directory") if work_path != image_path else fds[0])
    return image_path, work_path, fds


def restore_bound(image_path: str) -> float:
    """How long a restore may take before CRIU is stopped: a minute plus 20 s a GB of pages."""
    size = 0
    with os.scandir(image_path) as it:
        for e in it:
            if e.name.startswith("pages-") and e.name.endswith(".img"):
                size += e.stat().st_size
    return 60.0 + size / 50e6


def check_pid_file(path: str | None) -> None:
    """A --pid-file that cannot be written is refused before anything is restored."""
    if not path:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise Error(f"--pid-file {path} is a directory", errno=errno.EISDIR)
    if not os.path.isdir(parent):
        raise Error(f"--pid-file {path}: its directory {parent} does not exist", errno=errno.ENOENT)
    if not os.access(parent, os.W_OK):
        raise Error(f"--pid-file {path}: its directory {parent} is not writable", errno=errno.EACCES)


def _write_pid_file(path: str | None, pid: int) -> None:
    """Write the pid, atomically (as runc does: a temporary file renamed into place)."""
    if not path:
        return
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.rename(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise Error(f"cannot write --pid-file {path}: {e.strerror}", errno=e.errno) from None


def restore(container_id: str | None = None, options: RestoreOptions | None = None, *,
            root: str = runc.DEFAULT_ROOT, session=None, **kwargs) -> RestoreResult:
    """Restore a container (given its id: runc's restore) or a process tree (no id)."""
    t0 = time.monotonic()
    if options is None:
        options = RestoreOptions(**kwargs)
    elif kwargs:
        options = options.replace(**kwargs)
    engine.require_privileges("restore")
    if session is None:
        criu_proc.prespawn()  # its exec overlaps the checks of the images
    try:
        # CRIU is moved into cgroups below: warm from here on, so that the move does not wait
        with cgroups.FastMigrations():
            result = _restore_checked(container_id, options, root, session, t0)
    finally:
        criu_proc.discard_spare()  # not used: the restore stopped before CRIU
    if not options.detach and container_id is not None:
        result.exit_status = _wait_foreground(runc.load(container_id, root), result.pid)
    return result


def _restore_checked(container_id: str | None, options: RestoreOptions, root: str, session,
                     t0: float) -> RestoreResult:
    check_pid_file(options.pid_file)
    image_path = options.resolved_image_path()
    kind, meta = image_kind(image_path)
    # a damaged checkpoint is refused before anything is made (CRIU may loop on a cut-short pages image)
    manifest.verify(image_path)
    if container_id is None:
        if kind == "container":
            who = f" of container {meta['id']!r}" if meta and meta.get("id") else " of a container"
            raise UsageError(f"the images in {image_path} are a checkpoint{who}: "
                             "restore them with a container id (and --bundle)")
        return _guarded(lambda: _restore_process(options, t0, session), "the process tree")
    runc.validate_id(container_id)
    if kind != "container":
        raise UsageError(f"the images in {image_path} are a checkpoint of a process tree, not of a "
                         "container: restore them without a container id")
    with locks.container(root, container_id):
        return _guarded(lambda: _restore_container(container_id, options, root, meta, t0),
                        f"container {container_id!r}")


def _guarded(run, what: str) -> RestoreResult:
    """Run a restore with Ctrl-C/SIGTERM held back until it is complete or undone."""
    result = None
    try:
        with signals.deferred():
            result = run()
        return result
    except KeyboardInterrupt:
        if result is not None:
            raise Interrupted(f"interrupted after the restore completed: {what} runs (pid {result.pid})") from None
        raise Interrupted(f"interrupted: nothing was restored and nothing was left behind for {what}") from None


def _restore_process(options: RestoreOptions, t0: float, session=None) -> RestoreResult:
    """A process tree comes back detached: its root is reparented away from us when CRIU exits."""
    image_path, work_path, fds = _open_dirs(options)
    try:
        opts = _new_opts(options, fds[0], fds[1], session=session)
        # CRIU and all it forks run in a cgroup of their own: if it fails or is
        # stopped, nothing it started half-way can outlive it
        box = None if session is not None else cgroups.Containment(f"fastckpt-restore-{os.getpid()}")
        try:
            ret, err = engine.run_op(opts, "restore", session, log_path=os.path.join(work_path, RESTORE_LOG),
                                     timeout=restore_bound(image_path), setup=box.enter if box else None,
                                     on_stop=box.kill_all if box else None)
            if ret > 0:
                _write_pid_file(options.pid_file, ret)
        except BaseException:
            if box:
                box.kill_all()
            raise
        if box:
            box.kill_all() if ret <= 0 else box.release()
    finally:
        for fd in set(fds):
            os.close(fd)
    log_path = os.path.join(work_path, RESTORE_LOG)
    if ret <= 0:
        engine.raise_criu_failure("restore", ret, err, log_path)
    return RestoreResult(pid=ret, image_path=image_path, work_path=work_path, log_path=log_path,
                         wall_time=time.monotonic() - t0)


def _restore_container(cid: str, options: RestoreOptions, root: str, meta: dict | None,
                       t0: float) -> RestoreResult:
    bundle = options.resolved_bundle()
    state_dir = os.path.join(root, cid)
    if os.path.exists(state_dir):
        raise ContainerStateError(f"container {cid!r} already exists (in runc root {root})", errno=errno.EEXIST)
    cgroups.require_supported()
    cfg = container_config(cid, bundle, meta)
    if options.no_pivot:
        cfg["no_pivot_root"] = True
    image_path, work_path, fds = _open_dirs(options)
    log_path = os.path.join(work_path, RESTORE_LOG)

    undo: list = []  # what to take back on failure, last first
    ns_fds: list[int] = []
    pid = 0
    # CRIU's root: the rootfs bind-mounted, as runc does (the rootfs need not be a mount)
    criu_root = os.path.join(state_dir, CRIU_ROOT)
    mounted = False
    try:
        if os.path.lexists(root) and not os.path.isdir(root):
            raise Error(f"runc root {root} is not a directory", errno=errno.ENOTDIR)
        os.makedirs(root, mode=0o700, exist_ok=True)
        try:
            os.mkdir(state_dir, 0o711)
        except FileExistsError:
            raise ContainerStateError(f"container {cid!r} already exists (in runc root {root})",
                                      errno=errno.EEXIST) from None
        undo.append(lambda: runc.remove_state_dir(state_dir))

        cg_paths = cgroups.paths_for(cfg.get("cgroups") or {})
        made = cgroups.create(cg_paths, cfg.get("cgroups") or {})
        undo.append(lambda: _remove_cgroups(cg_paths, made))

        os.mkdir(criu_root, 0o755)
        _libc.bind_mount(cfg["rootfs"], criu_root)
        mounted = True
        _prepare_mountpoints(cfg)

        own_netns = any(ns.get("type") == "NEWNET" and not ns.get("path") for ns in cfg.get("namespaces") or [])
        # what the checkpoint says of its network namespace (runc's images say nothing)
        netns = (meta or {}).get("netns") or (NETNS_OWN if own_netns else NETNS_HOST)
        opts = _new_opts(options, fds[0], fds[1], netns, dumped_with=(meta or {}).get("network_lock"))
        opts.set_root(criu_root)
        opts.set_manage_cgroups(True)
        cgroups.limit_criu_to_v2(opts)
        opts.set_evasive_devices(True)
        box = None  # CRIU's own cgroup, when it is not run in the container's
        if options.manage_cgroups_mode in (None, CgroupMode.IGNORE):
            # CRIU itself runs in the container's new cgroups (as with runc) and its
            # restored tasks inherit them: CRIU need not rebuild cgroups (~15 ms)
            opts.set_manage_cgroups_mode(int(CgroupMode.IGNORE))
            enter_cgroups = lambda criu_pid: cgroups.enter(cg_paths, criu_pid)  # noqa: E731
        else:
            if options.manage_cgroups_mode == CgroupMode.STRICT:
                # strict wants CRIU to make every cgroup, but a container's are made first (its limits,
                # its device rules), as runc makes them: runc 1.1 restores in soft mode whatever it is
                # given (CRIU logs "cgroups restore mode 0x4"), and so does fastckpt for strict
                opts.set_manage_cgroups_mode(int(CgroupMode.SOFT))
            # CRIU places the tasks; CRIU itself runs in a cgroup of fastckpt's own, so that a failure
            # can kill all it started: not in the container's, whose freezer state CRIU restores (a
            # checkpoint of a paused container comes back paused, and CRIU would freeze itself)
            box = cgroups.Containment(f"fastckpt-restore-{os.getpid()}")
            undo.append(box.kill_all)
            enter_cgroups = box.enter
            for key, path in cg_paths.items():
                # per hierarchy: a v1 controller, or "" (CRIU's name for cgroup v2)
                opts.add_cg_root(key, cgroups.relative(key, path))
        for key, val in _restore_ext_mounts(cfg, cg_paths):
            opts.add_ext_mount(key, val)
        for ns in cfg.get("namespaces") or []:
            key = _INHERIT_NS.get(ns.get("type"))
            if key and ns.get("path"):
                fd = os.open(ns["path"], os.O_RDONLY)
                ns_fds.append(fd)
                os.set_inheritable(fd, True)
                opts.add_inherit_fd(fd, key)
        descriptors = _descriptors(image_path)
        for i, d in enumerate(descriptors[:3]):
            if d.startswith(("pipe:", "socket:")):
                opts.add_inherit_fd(i, d)

        if not options.detach and not options.no_subreaper:
            _libc.set_child_subreaper(True)
        try:
            # CRIU restores the tree as its child; when it exits the tree goes to the
            # nearest subreaper: fastckpt when it waits in the foreground
            ret, err = engine.run_op(opts, "restore", log_path=log_path, timeout=restore_bound(image_path),
                                     setup=enter_cgroups, on_stop=lambda: _kill_cgroup_tasks(cg_paths, box))
        finally:  # the restored mount namespace keeps its own copy of the root
            _libc.umount(criu_root)
            mounted = False
            os.rmdir(criu_root)
        if ret <= 0:
            engine.raise_criu_failure("restore", ret, err, log_path)
        pid = ret
        undo.append(lambda: _kill(pid))
        if box is not None:  # CRIU placed the restored tasks: anything still here joins the container
            box.release(into=next(iter(cgroups.freezing(cg_paths).values())))

        if own_netns and not options.empty_ns & Namespace.NEWNET:
            ensure_loopback_up(pid)
        start = runc.proc_start_time(pid)
        state = {
            "id": cid,
            "init_process_pid": pid,
            "init_process_start": start or 0,
            "created": _rfc3339_now(),
            "config": cfg,
            "rootless": False,
            "cgroup_paths": cg_paths,
            "namespace_paths": {t: f"/proc/{pid}/ns/{n}" for t, n in _NS_FILES.items()},
            "external_descriptors": descriptors,
            "intel_rdt_path": "",
        }
        _write_state(state_dir, state)
        _write_pid_file(options.pid_file, pid)
    except BaseException:
        if mounted:
            _libc.umount(criu_root)
            mounted = False
        cgroups.unmount_yards(work_path)  # of a CRIU stopped half-way
        for fn in reversed(undo):
            try:
                fn()
            except Exception:
                pass
        raise
    finally:
        for fd in set(fds) | set(ns_fds):
            os.close(fd)

    return RestoreResult(pid=pid, image_path=image_path, work_path=work_path, log_path=log_path,
                         container_id=cid, bundle=bundle, wall_time=time.monotonic() - t0)


def _kill_cgroup_tasks(paths: dict[str, str], box: "cgroups.Containment | None" = None) -> None:
    """Kill everything in the container's (freezer, else v2) cgroup and in CRIU's BOX: CRIU is in one
    of them, and all it forked."""
    if box is not None:
        box.kill_all()
    for path in cgroups.freezing(paths).values():
        cgroups.kill_all(path)


def _remove_cgroups(paths: dict[str, str], made: list[str]) -> None:
    """Kill whatever a failed restore left in the container's cgroups, then remove them."""
    _kill_cgroup_tasks(paths)
    cgroups.remove(made)


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _wait_foreground(ct: runc.Container, pid: int) -> int:
    """Like `runc restore` without -d: forward signals, wait, then delete the container."""
    import signal

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
    old = {s: signal.signal(s, lambda sig, _f: _forward(pid, sig)) for s in forwarded}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                status = 0
                break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    # the container's other processes go with their init (its pid namespace)
    ct.destroy()
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as runc and shells say


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
