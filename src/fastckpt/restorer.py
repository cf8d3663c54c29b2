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
import stat
import time

from ._record import Record
from . import (_libc, atomicfile, cgroups, console, criu, criu_failures, criu_proc, externals, imagedir, locks,
               manifest, migration, privileges, runc, signals)
from .errors import ContainerStateError, Error, ImageDirError, Interrupted, UsageError
from .constants import CgroupMode, Namespace
from .options import NETNS_HOST, NETNS_OWN, RestoreOptions

RESTORE_LOG = "restore.log"
CRIU_ROOT = "criu-root"
CRIU_IMAGES = "criu-images"  # the images as CRIU sees them when their host clocks are left out
HOST_TIMENS_IMAGE = "timens-0.img"

_NS_FILES = {"NEWCGROUP": "cgroup", "NEWIPC": "ipc", "NEWNET": "net", "NEWNS": "mnt", "NEWPID": "pid",
             "NEWUSER": "user", "NEWUTS": "uts"}
_INHERIT_NS = {"NEWNET": "extRootNetNS", "NEWPID": "extRootPidNS"}


class RestoreResult(Record):
    """What a restore brought back: the pid of the restored tree's root (a container's init),
    where the images and CRIU's log are, the container's id and bundle (for a container), how long
    it took (``wall_time``) and, for a container restored in the foreground, how it ended
    (``exit_status``). ``stats()`` decodes CRIU's statistics of the restore."""

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
    meta = imagedir.read_meta(image_path)
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
    import contextlib
    import shutil
    import subprocess
    import tempfile

    from .bundle import runc_log_errors

    tmp = tempfile.mkdtemp(prefix="fastckpt-conv-")
    cid = f"fastckpt-conv-{os.getpid()}-{time.monotonic_ns()}"
    log = os.path.join(tmp, "runc.log")
    base = ["runc", "--root", tmp, "--log", log, "--log-format", "json"]
    try:
        with open(os.devnull, "r+b") as null, contextlib.ExitStack() as stack:
            create = base + ["create", "--bundle", bundle]
            if console.spec_terminal(bundle):  # runc wants somewhere to send the pty master
                create += ["--console-socket", stack.enter_context(console.Discard())]
            rc = subprocess.run(create + [cid], stdin=null, stdout=null, stderr=null).returncode
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
    cgroups_path = _spec_cgroups_path(bundle)
    if cgroups_path:  # the bundle names the cgroups: the restored container goes there (runc's specconv)
        cg["path"] = cgroups_path
        cg["name"] = ""
    elif not cg.get("path") and cg.get("name") in ("", None, old_id):
        cg["name"] = container_id
    return cfg


def _spec_cgroups_path(bundle: str) -> str | None:
    """linux.cgroupsPath of the bundle's config.json, cleaned as runc cleans it, or None."""
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            path = ((json.load(f).get("linux") or {}).get("cgroupsPath")) or ""
    except (OSError, ValueError, AttributeError):
        return None
    return os.path.normpath(path) if path else None


# --- mounts --------------------------------------------------------------------

def _prepare_mountpoints(cfg: dict) -> None:
    """Bind mount targets must exist for CRIU to mount onto them; made as runc makes them at restore.

    A destination is resolved in the rootfs (symlinks taken inside it); one below an earlier bind
    mount lives in that mount's source (runc mounts each bind while it makes the next ones); ones on a
    tmpfs are left to CRIU, which restores the tmpfs whole.
    """
    rootfs = cfg["rootfs"]
    mounts = cfg.get("mounts") or []
    tmpfs = [m["destination"].rstrip("/") for m in mounts if m.get("device") == "tmpfs"]
    binds: list[tuple[str, str]] = []  # (destination in the rootfs, source), in mount order
    for m in mounts:
        if m.get("device") != "bind" or any(m["destination"].startswith(t + "/") for t in tmpfs):
            continue
        dest = externals.resolve_in_root(rootfs, m["destination"])
        target = os.path.join(rootfs, dest.lstrip("/"))
        for bdest, bsrc in reversed(binds):
            if dest.startswith(bdest.rstrip("/") + "/"):
                target = os.path.join(bsrc, dest[len(bdest):].lstrip("/"))
                break
        binds.append((dest, m["source"]))
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
            # keyed as the checkpoint keyed it: the destination resolved in the rootfs
            ext[externals.resolve_in_root(cfg["rootfs"], m["destination"])] = m["source"]
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
    # dumps: the C encoder (json.dump encodes in Python, ~1.5 ms here)
    atomicfile.write_atomic(os.path.join(state_dir, runc.STATE_FILE), json.dumps(state).encode(), 0o600)


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
    opts = criu.new_opts(session)
    opts.set_images_dir_fd(image_fd)
    opts.set_work_dir_fd(work_fd)
    opts.set_log_file(RESTORE_LOG)
    criu.apply_common(opts, options, netns, dumped_with)
    if options.lsm_profile:
        opts.set_lsm_profile(options.lsm_profile)
    if options.lsm_mount_context:
        opts.set_lsm_mount_context(options.lsm_mount_context)
    return opts


def _check_lazy_pages(options: RestoreOptions) -> None:
    if options.lazy_pages and not criu.features().get("lazy_pages"):
        raise Error("--lazy-pages needs userfaultfd (non-cooperative), which this kernel lacks: nothing was "
                    "restored", errno=errno.EOPNOTSUPP)


def _open_dirs(options: RestoreOptions) -> tuple[str, str, list[int]]:
    image_path = options.resolved_image_path()
    work_path = options.resolved_work_path()
    if work_path != image_path:
        imagedir.make_private_dir(work_path, "work directory")
    else:
        imagedir.require_writable_work_dir(work_path, RESTORE_LOG)
    fds = [imagedir.open_dir_fd(image_path, "image directory")]
    fds.append(imagedir.open_dir_fd(work_path, "work directory") if work_path != image_path else fds[0])
    return image_path, work_path, fds


def restore_bound(image_path: str) -> float:
    """How long a restore may take before CRIU is stopped: a minute plus 20 s a GB of pages."""
    size = 0
    with os.scandir(image_path) as it:
        for e in it:
            if manifest.is_pages_image(e.name):
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
    try:
        atomicfile.write_atomic(path, str(pid).encode(), 0o666)
    except OSError as e:
        raise Error(f"cannot write --pid-file {path}: {e.strerror}", errno=e.errno) from None


def restore(container_id: str | None = None, options: RestoreOptions | None = None, *,
            root: str = runc.DEFAULT_ROOT, session=None, **kwargs) -> RestoreResult:
    """Restore a container (given its id: runc's restore) or a process tree (no id)."""
    if options is None:
        options = RestoreOptions(**kwargs)
    elif kwargs:
        options = options.replace(**kwargs)
    if options.import_archive:
        from .archive import restore_import

        return restore_import(container_id, options, root=root, session=session)
    return restore_images(container_id, options, root, session)


def restore_images(container_id: str | None, options: RestoreOptions, root: str, session=None, *,
                   verified: bool = False) -> RestoreResult:
    """restore() of the images in OPTIONS' image path; VERIFIED: they were just checked against their
    manifest by fastckpt itself (an archive's import, in a directory of its own): not read again."""
    t0 = time.monotonic()
    privileges.require_privileges("restore")
    root = os.path.abspath(root)  # CRIU's root is made in it: CRIU needs it absolute
    if session is None:
        criu_proc.prespawn()  # its exec overlaps the checks of the images
    done: list = []  # the result, once the restore is complete
    try:
        # CRIU is moved into cgroups below: opted in, warm from here on, so that the move does not wait
        with cgroups.FastMigrations(options.fast_migrations):
            result = _restore_checked(container_id, options, root, session, t0, done, verified)
    except KeyboardInterrupt:  # outside _guarded (which says what it left): before it, or once it is complete
        if done:
            what = f"container {container_id!r}" if container_id is not None else "the process tree"
            raise Interrupted(f"interrupted after the restore completed: {what} runs (pid {done[0].pid})") \
                from None
        raise
    finally:
        criu_proc.discard_spare()  # not used: the restore stopped before CRIU
    if not options.detach and container_id is not None:
        import gc

        gc.enable()  # the command's start left it off (ext/launch.c); a foreground restore may run for days
        master = getattr(result, "_relay_master", None)
        relay = console.Relay(master) if master is not None else None  # runc's own console, in the foreground
        try:
            result.exit_status = _wait_foreground(runc.load(container_id, root), result.pid)
        finally:
            if relay is not None:
                relay.stop()
    return result


def _restore_checked(container_id: str | None, options: RestoreOptions, root: str, session,
                     t0: float, done: list, verified: bool = False) -> RestoreResult:
    check_pid_file(options.pid_file)
    image_path = options.resolved_image_path()
    kind, meta = image_kind(image_path)
    # a damaged checkpoint is refused before anything is made (CRIU may loop on a cut-short pages image);
    # the checksums of large pages images are checked while CRIU restores, and waited for before the
    # restored tree runs (its "post-restore" notification: _pages_notify); all is checked first with lazy
    # pages (CRIU reads pages after the tree runs) and with --auto-dedup (CRIU punches the pages it
    # restored out of the images meanwhile)
    if verified:
        pages = None
    elif options.lazy_pages or options.auto_dedup:
        manifest.verify(image_path)
        pages = None
    else:
        pages = manifest.verify_overlapped(image_path)
    try:
        _check_lazy_pages(options)
        if container_id is None:
            if options.console_socket:
                raise UsageError("--console-socket is for containers (a process tree keeps its terminal with "
                                 "--shell-job)")
            if kind == "container":
                who = f" of container {meta['id']!r}" if meta and meta.get("id") else " of a container"
                raise UsageError(f"the images in {image_path} are a checkpoint{who}: "
                                 "restore them with a container id (and --bundle)")
            with locks.process_images(image_path):
                return _guarded(lambda: _restore_process(options, t0, session, pages), "the process tree", done)
        runc.validate_id(container_id)
        if kind != "container":
            raise UsageError(f"the images in {image_path} are a checkpoint of a process tree, not of a "
                             "container: restore them without a container id")
        with locks.container(root, container_id):
            return _guarded(lambda: _restore_container(container_id, options, root, meta, t0, pages),
                            f"container {container_id!r}", done)
    finally:
        if pages is not None:
            pages.close()  # its thread ends with the restore, whatever happened


def _guarded(run, what: str, done: list) -> RestoreResult:
    """Run a restore with Ctrl-C/SIGTERM held back until it is complete or undone (then its result is
    appended to DONE, for the caller to tell an interruption after it from one before)."""
    result = None
    try:
        with signals.deferred():
            result = run()
            done.append(result)
        return result
    except KeyboardInterrupt:
        if result is not None:
            raise Interrupted(f"interrupted after the restore completed: {what} runs (pid {result.pid})") from None
        raise Interrupted(f"interrupted: nothing was restored and nothing was left behind for {what}") from None


def _pages_notify(pages: "manifest.PagesCheck | None", other=None, refused: list | None = None):
    """The notify handler of a restore whose pages images are checked meanwhile (PAGES): at "post-restore"
    (CRIU has read every page into the restored tasks, which have not run yet) it waits for the check; a
    damaged image fails the notification, and CRIU kills the restored tree and fails (the DamagedImage is
    the restore's error: opts.notify_error). OTHER: the handler of the other notifications, or None;
    REFUSED: the restored root's pid is added to it when the check fails. None when there is nothing to
    act on (CRIU then sends no notification)."""
    if pages is None:
        return other

    def handler(action: str, pid: int) -> int:
        if action == "post-restore":
            try:
                pages.result()
            except BaseException:
                if refused is not None:
                    refused.append(pid)
                raise
            return 0
        return other(action, pid) if other is not None else 0

    return handler


def _restore_process(options: RestoreOptions, t0: float, session=None,
                     pages: "manifest.PagesCheck | None" = None) -> RestoreResult:
    """A process tree comes back detached: its root is reparented away from us when CRIU exits."""
    image_path, work_path, fds = _open_dirs(options)
    try:
        opts = _new_opts(options, fds[0], fds[1], session=session)
        if options.lazy_pages:
            criu.apply_config_file(opts, None, work_path, lazy_pages=True)
        refused: list[int] = []
        handler = _pages_notify(pages, refused=refused)
        if handler is not None:
            opts.set_notify(handler)
        # CRIU and all it forks run in a cgroup of their own: if it fails or is
        # stopped, nothing it started half-way can outlive it
        box = None if session is not None else cgroups.Containment(f"fastckpt-restore-{os.getpid()}")
        try:
            ret, err = criu.run_op(opts, "restore", session, log_path=os.path.join(work_path, RESTORE_LOG),
                                   timeout=restore_bound(image_path), setup=box.enter if box else None,
                                   on_stop=box.kill_all if box else None)
            if opts.notify_error is not None:
                if refused and session is not None:
                    # libcriu returns at the failed notification, before CRIU killed the tree: a criu of
                    # our own is waited for (run_op), a session's CRIU service is not
                    _wait_killed(refused[0])
                raise opts.notify_error
            if ret > 0:
                if pages is not None:
                    _pages_checked(pages, ret, box)
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
        criu_failures.raise_criu_failure("restore", ret, err, log_path)
    return RestoreResult(pid=ret, image_path=image_path, work_path=work_path, log_path=log_path,
                         wall_time=time.monotonic() - t0)


def _wait_killed(pid: int, timeout: float = 10.0) -> None:
    """Wait until PID (the root of a tree CRIU is killing) no longer runs (gone, or a zombie); past
    TIMEOUT, kill it."""
    import signal

    deadline = time.monotonic() + timeout
    delay = 0.001
    from .proctree import stat

    while time.monotonic() < deadline:
        st = stat(pid)
        if st is None or st[1][0] in (b"Z", b"X"):
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pages_checked(pages: "manifest.PagesCheck", pid: int, box: "cgroups.Containment | None") -> None:
    """After a restore: the check of its pages images passed (the "post-restore" notification waited for
    it; should CRIU not have sent that one, it is waited for here, and a damaged image undoes the restore)."""
    try:
        pages.result()
    except BaseException:
        if box is not None:
            box.kill_all()
        _kill(pid)
        raise


def _restore_container(cid: str, options: RestoreOptions, root: str, meta: dict | None,
                       t0: float, pages: "manifest.PagesCheck | None" = None) -> RestoreResult:
    bundle = options.resolved_bundle()
    state_dir = os.path.join(root, cid)
    if os.path.exists(state_dir):
        raise ContainerStateError(f"container {cid!r} already exists (in runc root {root})", errno=errno.EEXIST)
    cgroups.require_supported()
    cfg = container_config(cid, bundle, meta)
    if options.no_pivot:
        cfg["no_pivot_root"] = True
    descriptors = _descriptors(options.resolved_image_path())
    terminal = console.has_terminal(bundle, descriptors)
    console.check_terminal(terminal, options.detach, options.console_socket)
    # connected before anything is made (as runc does): a socket nobody listens on is refused here
    sock = console.ConsoleSocket(options.console_socket) if options.console_socket else None
    try:
        return _restore_container_made(cid, options, root, meta, t0, bundle, cfg, descriptors, terminal, sock,
                                       pages)
    finally:
        if sock is not None:
            sock.close()


def _restore_container_made(cid: str, options: RestoreOptions, root: str, meta: dict | None, t0: float,
                            bundle: str, cfg: dict, descriptors: list[str], terminal: bool,
                            sock: "console.ConsoleSocket | None",
                            pages: "manifest.PagesCheck | None" = None) -> RestoreResult:
    state_dir = os.path.join(root, cid)
    image_path, work_path, fds = _open_dirs(options)
    log_path = os.path.join(work_path, RESTORE_LOG)

    undo: list = []  # what to take back on failure, last first
    ns_fds: list[int] = []
    criu_images = None  # a view of the images without the host's clocks (see _host_clock_view)
    masters: list[int] = []  # a foreground terminal container's new pty master (fastckpt relays it)
    pid = 0
    # CRIU's root: the rootfs bind-mounted, as runc does (the rootfs need not be a mount)
    criu_root = os.path.join(state_dir, CRIU_ROOT)
    mounted = False
    cleanup: _Cleanup | None = None  # CRIU's root and the host-clock view going, once CRIU is done
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
        busy = cgroups.in_use(cg_paths)
        if busy:  # as runc >= 1.2; a failed restore would kill what runs there (another container?)
            raise ContainerStateError(f"container's cgroup is not empty: {busy[1]} process(es) found in "
                                      f"{busy[0]}: refused", errno=errno.EBUSY)
        made = cgroups.create(cg_paths, cfg.get("cgroups") or {})
        undo.append(lambda: _remove_cgroups(cg_paths, made))

        os.mkdir(criu_root, 0o755)
        _libc.bind_mount(cfg["rootfs"], criu_root)
        mounted = True
        _prepare_mountpoints(cfg)
        image_fd = fds[0]
        # an overlay is read-only: not where CRIU may punch holes in the pages (auto-dedup, maybe in a file:
        # the container's, or one CRIU reads by itself)
        conf = migration.criu_config_file(cfg.get("labels") or [])
        read_only = not (options.auto_dedup or options.lazy_pages or (conf and os.path.exists(conf))
                         or migration.criu_own_config_files())
        view = _host_clock_view(image_path, meta, state_dir if read_only else None, image_fd)
        if view is not None:
            criu_images, image_fd = view
            fds.append(image_fd)

        own_netns = any(ns.get("type") == "NEWNET" and not ns.get("path") for ns in cfg.get("namespaces") or [])
        # what the checkpoint says of its network namespace (runc's images say nothing)
        netns = (meta or {}).get("netns") or (NETNS_OWN if own_netns else NETNS_HOST)
        opts = _new_opts(options, image_fd, fds[1], netns, dumped_with=(meta or {}).get("network_lock"))
        opts.set_root(criu_root)
        opts.set_manage_cgroups(True)
        cgroups.limit_criu_to_v2(opts)
        opts.set_evasive_devices(True)
        # a pty whose master was outside the container comes back with a new master, sent to us in
        # a notification (only asked for then: each costs CRIU a round trip)
        opts.set_orphan_pts_master(True)
        handler = _pages_notify(pages, _restore_notify(sock, masters) if terminal else None)
        if handler is not None:
            opts.set_notify(handler)
        criu.apply_config_file(opts, cfg.get("labels") or [], work_path, options.lazy_pages)
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
                try:
                    fd = os.open(ns["path"], os.O_RDONLY)
                except OSError as e:
                    raise Error(f"the namespace {ns['path']} the container joins cannot be opened: {e.strerror}",
                                errno=e.errno) from None
                ns_fds.append(fd)
                os.set_inheritable(fd, True)
                opts.add_inherit_fd(fd, key)
        for i, d in enumerate(descriptors[:3]):
            if d.startswith(("pipe:", "socket:")):
                # a copy above 2: the criu fastckpt starts has its stdout on /dev/null
                fd = os.dup(i)
                ns_fds.append(fd)
                os.set_inheritable(fd, True)
                opts.add_inherit_fd(fd, d)

        if not options.detach and not options.no_subreaper:
            _libc.set_child_subreaper(True)
        try:
            # CRIU restores the tree as its child; when it exits the tree goes to the
            # nearest subreaper: fastckpt when it waits in the foreground
            # a criu of its own when fds are handed over (the spare one was started before they were opened)
            ret, err = criu.run_op(opts, "restore", log_path=log_path, timeout=restore_bound(image_path),
                                   setup=enter_cgroups, on_stop=lambda: _kill_cgroup_tasks(cg_paths, box),
                                   fresh=bool(ns_fds))
        finally:  # the restored mount namespace keeps its own copy of the root: undone meanwhile
            cleanup = _Cleanup(criu_root, criu_images)
            mounted = False
        if opts.notify_error is not None:
            raise opts.notify_error
        if ret <= 0:
            criu_failures.raise_criu_failure("restore", ret, err, log_path)
        pid = ret
        undo.append(lambda: _kill(pid))
        if pages is not None:
            pages.result()  # waited for at "post-restore" already (a damaged image is undone with the rest)
        if terminal and sock is None and not masters:
            raise Error("the container has a terminal but CRIU sent no pty master for it")
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
            "namespace_paths": _namespace_paths(pid, cfg),
            "external_descriptors": descriptors,
            "intel_rdt_path": "",
        }
        _write_state(state_dir, state)
        cleanup.join()  # before the pid file: a failure of it undoes the restore, which leaves no pid file
        _write_pid_file(options.pid_file, pid)
    except BaseException:
        if cleanup is not None:
            try:
                cleanup.join()
            except Exception:
                pass
        if mounted:
            _libc.umount(criu_root)
            mounted = False
        if criu_images is not None:
            runc.remove_tree(criu_images)
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
        if pid == 0:
            for fd in masters:
                os.close(fd)

    res = RestoreResult(pid=pid, image_path=image_path, work_path=work_path, log_path=log_path,
                        container_id=cid, bundle=bundle, wall_time=time.monotonic() - t0)
    res._relay_master = masters[0] if masters else None  # not a field: the foreground relay's
    return res


class _Cleanup:
    """CRIU's root (CRIU_ROOT) unmounted and removed, and the host-clock view of the images (CRIU_IMAGES,
    if any) removed, in a thread of its own while the restore writes the container's state: the unmount
    waits a grace period (~1-5 ms here) in which the calling thread goes on. join() waits for it and
    raises what it failed with (a failure of the restore, as if done in line)."""

    def __init__(self, criu_root: str, criu_images: str | None):
        import threading

        self.criu_root, self.criu_images = criu_root, criu_images
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fastckpt-restore-cleanup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:
                _libc.umount(self.criu_root)
                os.rmdir(self.criu_root)
            finally:
                if self.criu_images is not None:
                    runc.remove_tree(self.criu_images)
        except BaseException as e:  # noqa: BLE001 -- given to join()'s caller
            self.error = e

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _host_clock_view(image_path: str, meta: dict | None, overlay_in: str | None = None,
                     image_fd: int = -1) -> tuple[str, int] | None:
    """On the boot a container was checkpointed on, a view of its images without the host's clocks
    (timens-0.img): (a directory to remove once CRIU is done, an open fd of the view for CRIU); or None
    to give CRIU the images as they are.

    CRIU restores every tree into a new time namespace, shifted so that its monotonic clocks go on
    from their value at the dump. On the same boot the host's clocks already did: the restored
    container can stay in the host's time namespace (it sees the time it was checkpointed, as a
    paused container does), and processes `runc exec` starts in it later (runc 1.1 knows no time
    namespace to join) are in the same one as its init, so the container can be checkpointed and
    restored again (CRIU cannot restore a tree spread over two time namespaces: "Can't restore
    sub-task in NS"). A tree already in a time namespace of its own at the dump keeps it.

    With OVERLAY_IN (a directory of fastckpt's: the container's state directory) the view is a read-only
    overlay of the images (IMAGE_FD) under a whiteout of timens-0.img (see _overlay_clock_view); else,
    or where overlayfs cannot, a directory in the image directory with hard links to the other images
    (CRIU opens images without following symlinks): ~3 images a process, 1,400 links and unlinks for a
    200-process tree (~25 ms).
    """
    if not meta or not meta.get("boot_id") or meta.get("boot_id") != imagedir.boot_id():
        return None
    entries = [(e.name, e.is_symlink()) for e in os.scandir(image_path)
               if e.is_file(follow_symlinks=False) or e.is_symlink()]
    names = [n for n, _ in entries]
    if HOST_TIMENS_IMAGE not in names or any(n.startswith("timens-") and n != HOST_TIMENS_IMAGE for n in names):
        return None
    if overlay_in is not None and not any(link for _, link in entries):  # a relative "parent" leads out of it
        view = _overlay_clock_view(image_fd, overlay_in)
        if view is not None:
            return view
    into = os.path.join(image_path, f".{CRIU_IMAGES}-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(into, 0o700)
    src_fd = dst_fd = -1
    try:  # by name relative to the two directories
        src_fd = os.open(image_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        dst_fd = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for name, link in entries:
            if name == HOST_TIMENS_IMAGE:
                continue
            if link:  # "parent": the pre-dump images
                os.symlink(os.path.realpath(os.path.join(image_path, name)), name, dir_fd=dst_fd)
            else:
                os.link(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    except OSError:  # no hard links here: CRIU gets the images as they are
        runc.remove_tree(into)
        return None
    finally:
        for fd in (src_fd, dst_fd):
            if fd >= 0:
                os.close(fd)
    try:
        return into, imagedir.open_dir_fd(into, "image directory")
    except BaseException:
        runc.remove_tree(into)
        raise


def _overlay_clock_view(image_fd: int, under: str) -> tuple[str, int] | None:
    """The images of IMAGE_FD without timens-0.img, as a read-only overlayfs of two lower layers: a directory
    UNDER/CRIU_IMAGES-hide holding its whiteout (a character device 0/0) over the image directory. Made with
    the new mount API and never attached anywhere (no mount namespace sees it; the view's fd alone keeps it;
    ~0.3 ms, whatever the number of images): (the whiteout's directory, to remove once CRIU is done, as
    overlayfs wants its layers unchanged while in use; the view's fd). None where overlayfs cannot (no
    overlayfs or no fsopen(), the image directory on a file system it cannot stack on): nothing is left then."""
    hide = os.path.join(under, f"{CRIU_IMAGES}-hide")
    hide_fd = view_fd = -1
    try:
        os.mkdir(hide, 0o700)
        os.mknod(os.path.join(hide, HOST_TIMENS_IMAGE), 0o600 | stat.S_IFCHR, 0)
        hide_fd = os.open(hide, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # the layers by fd: no path of the user's to escape in the options (":" and "," are special)
        view_fd = _libc.overlay_detached(f"/proc/self/fd/{hide_fd}:/proc/self/fd/{image_fd}")
        # it shows the images but not the host's clocks (a whiteout made on an overlayfs is not one)
        if os.path.lexists(f"/proc/self/fd/{view_fd}/{HOST_TIMENS_IMAGE}") or \
                not os.path.lexists(f"/proc/self/fd/{view_fd}/inventory.img"):
            raise OSError(errno.EINVAL, "the overlay does not hide the host's clocks")
        return hide, view_fd
    except OSError:
        if view_fd >= 0:
            os.close(view_fd)
            view_fd = -1
        return None
    finally:
        if hide_fd >= 0:
            os.close(hide_fd)
        if view_fd < 0:
            runc.remove_tree(hide)


def _restore_notify(sock, masters: list[int]):
    """CRIU's notifications a container restore acts on: "orphan-pts-master" carries the new master
    of the container's terminal: to the --console-socket, or kept to relay (a foreground restore)."""
    def handler(action: str, pid: int) -> int:
        if action != console.NOTIFY_ACTION:
            return 0
        from . import _criu

        fd = _criu.Opts.orphan_pts_master_fd()
        if fd < 0:
            raise Error("CRIU announced the container's pty master but sent none")
        if sock is not None:
            sock.send_master(fd)
        else:
            masters.append(fd)
        return 0

    return handler


def _namespace_paths(pid: int, cfg: dict) -> dict[str, str]:
    """state.json's namespace_paths of a restored init; with the time namespace CRIU restores it in
    (recorded in the config's namespaces and here, as later runc does, so that `runc exec` joins it)."""
    paths = {t: f"/proc/{pid}/ns/{n}" for t, n in _NS_FILES.items()}
    try:
        restored_in_own = os.stat(f"/proc/{pid}/ns/time").st_ino != os.stat("/proc/self/ns/time").st_ino
    except OSError:
        restored_in_own = False
    if restored_in_own:
        paths["NEWTIME"] = f"/proc/{pid}/ns/time"
        namespaces = cfg.setdefault("namespaces", [])
        if not any(ns.get("type") == "NEWTIME" for ns in namespaces):
            namespaces.append({"type": "NEWTIME", "path": ""})
    return paths


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
