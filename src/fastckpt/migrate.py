"""Live migration of a runc container to another host: memory straight to the destination.

``migrate()`` (``fastckpt migrate``) runs on the source host and drives the
destination through a command prefix the user gives (``ssh dst``, or
``nsenter --net=/run/netns/dst`` in the tests): fastckpt adds no
remote-execution system of its own, and the destination needs only fastckpt
(and tar).  The steps are the two-commands-per-host flow of the README:

1. destination: ``fastckpt page-server`` (listens; its port is read from its
   first line);
2. source: the container is frozen, then checkpointed with ``--page-server``
   and left frozen: the pages go over TCP into the destination's image
   directory, nothing of the memory touches the source's disk; the small
   non-page images go to a staging directory on a tmpfs (/dev/shm);
3. the non-page images reach the destination as a tar stream on the stdin of
   ``tar -x`` run through the same prefix.  They are small (tens of KiB), and
   the user's own channel (ssh: authenticated, encrypted) is the right one for
   them; a second listener of fastckpt's that writes files into a directory
   would be one more unauthenticated door on the destination;
4. destination: ``fastckpt restore -d``; its exit status 0 is the confirmation;
5. only then is the source container destroyed (or, with ``leave_running``,
   thawed, as runc's --leave-running).

If any step fails (or Ctrl-C), the source container is thawed and keeps
running, the destination's page server is stopped and its image directory
removed, and a failed restore there has removed all it made itself.
"""
from __future__ import annotations

import errno
import io
import os
import re
import select
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid

from ._record import Record
from . import cgroups, criu, engine, privileges, runc, signals, tcplock
from .errors import ContainerStateError, Error, FeatureUnavailable, Interrupted, UsageError

DEFAULT_DEST_DIR = "/var/lib/fastckpt/migrate"
STAGING_ROOTS = ("/dev/shm",)  # a tmpfs: the source's disk sees nothing of the container
READY_PREFIX = "listening on "
DEFAULT_TIMEOUT = 600.0
PROBE_TIMEOUT = 10.0  # seconds for a TCP connection to the destination's page server


class MigrateResult(Record):
    container_id: str
    dest_id: str
    dest_image_path: str
    pid: int | None  # the restored container's pid on the destination, as it reported it
    downtime: float  # seconds: from the freeze on the source to the container running on the destination
    total_time: float  # seconds: the whole call
    dump_time: float  # seconds of the checkpoint (pages sent meanwhile)
    restore_time: float  # seconds of the destination's restore, as seen from here
    pages_bytes: int  # bytes of pages sent
    images_bytes: int  # bytes of the non-page images sent
    source_kept: bool  # leave_running: the source container was thawed instead of destroyed
    lazy: bool = False  # post-copy: restored before the pages came (pages_bytes were pulled afterwards)
    pull_time: float | None = None  # lazy: seconds from the restore's return until the last page was pulled
    # CRIU's statistics of the dump (times in microseconds: memwrite_time is the sending of the pages)
    criu_dump: dict | None = None


def lazy_pages_usable() -> tuple[bool, str]:
    """Whether lazy migration (post-copy) can be done here, and why not.

    The probe of the checkpoint's --lazy-pages decides (``migration.lazy_pages_problem``: a real lazy
    migration of a tiny process, once per boot; it finds why CRIU 4.2.1's lazy dump fails on hosts
    like this one: its page server's pipe is larger than /proc/sys/fs/pipe-max-size and CRIU lacks
    CAP_SYS_RESOURCE). fastckpt never raises that host-wide limit itself.
    """
    from .migration import lazy_pages_problem

    if not criu.features().get("lazy_pages"):
        problem = "this kernel has no (non-cooperative) userfaultfd"
    else:
        problem = lazy_pages_problem(criu.criu_binary())
    if problem:
        return False, "lazy migration (post-copy) is unavailable: " + problem
    return True, ""


class Remote:
    """The destination: commands run through a prefix (`ssh host`, `nsenter --net=...`), or here
    when the prefix is empty.  Each word given must be shell-safe, so that a prefix that joins
    words into one command line (ssh) and one that passes them on (nsenter, sudo) run the same."""

    def __init__(self, prefix: str | list[str] = "", fastckpt: str = "fastckpt"):
        try:
            self.prefix = shlex.split(prefix) if isinstance(prefix, str) else list(prefix)
        except ValueError as e:
            raise UsageError(f"invalid --remote {prefix!r}: {e}") from None
        self.fastckpt = fastckpt

    def argv(self, *words: str) -> list[str]:
        for w in words:
            if shlex.quote(w) != w:
                raise UsageError(f"{w!r} cannot be passed to the destination as it is (no spaces or shell "
                                 "characters, please)")
        return self.prefix + list(words)

    def run(self, *words: str, input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
            ) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.argv(*words), input=input, capture_output=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError as e:
            raise Error(f"cannot run {self.argv(*words)[0]!r} to reach the destination: {e.strerror}",
                        errno=e.errno) from None
        except subprocess.TimeoutExpired:
            raise Error(f"the destination did not answer within {timeout:g} s: {' '.join(words[:3])} ...",
                        errno=errno.ETIMEDOUT) from None

    def popen(self, *words: str) -> subprocess.Popen:
        try:
            return subprocess.Popen(self.argv(*words), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError as e:
            raise Error(f"cannot run {self.argv(*words)[0]!r} to reach the destination: {e.strerror}",
                        errno=e.errno) from None


def _last_line(data: bytes) -> str:
    """The error a fastckpt command there printed: its own line (CRIU's lines follow it), else the last one."""
    lines = [l for l in data.decode(errors="replace").splitlines() if l.strip()]
    ours = [l for l in lines if l.startswith("fastckpt: ")]
    return (ours[-1] if ours else lines[-1] if lines else "").removeprefix("fastckpt: ")


def _read_ready(proc: subprocess.Popen, timeout: float) -> int:
    """The port the destination's page server reports on its first line."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Error("the destination's page server did not start in time", errno=errno.ETIMEDOUT)
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait()
                why = _last_line(proc.stderr.read()) or f"exit status {proc.returncode}"
                raise Error(f"the destination's page server did not start: {why}")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace")
    if not line.startswith(READY_PREFIX):
        raise Error(f"unexpected answer from the destination's page server: {line!r}")
    return int(line[len(READY_PREFIX):].rsplit(":", 1)[1].split()[0])


def _probe(address: str, port: int, timeout: float) -> None:
    """Connect to the destination's page server and go (it takes that for a probe): CRIU's own
    connection, made with the container frozen, would wait up to two minutes for a silent network."""
    import socket

    try:
        socket.create_connection((address, port), timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise Error(f"the destination's page server at {address}:{port} cannot be reached from here: {why}; "
                    "nothing was done", errno=e.errno or errno.EHOSTUNREACH) from None


def _staging_dir() -> str:
    for root in STAGING_ROOTS:
        if os.path.isdir(root) and os.access(root, os.W_OK):
            return tempfile.mkdtemp(prefix="fastckpt-migrate-", dir=root)
    return tempfile.mkdtemp(prefix="fastckpt-migrate-")


def _tar_of(path: str) -> bytes:
    """The non-page images as a tar (numeric owners, modes kept)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full) and not os.path.islink(full):
                tar.add(full, arcname=name, recursive=False)
    return out.getvalue()


def _lock_connections(ct: runc.Container) -> "tcplock.TcpLock | None":
    """The frozen container's TCP connections held silent here until the migration ends (see tcplock)."""
    paths = ct.cgroup_paths
    procs = os.path.join(paths.get("freezer") or paths.get("", ""), "cgroup.procs")
    conns = tcplock.connections(cgroups._pids(procs))
    if not conns:
        return None
    lock = tcplock.TcpLock(ct.init_pid, conns)
    try:
        lock.hold()
    except BaseException:
        lock.abort()
        raise
    return lock


def _destroy_source(ct: runc.Container) -> None:
    """The source container goes, as `runc delete --force` does (it is frozen: killed, thawed, removed)."""
    paths = ct.cgroup_paths
    for key in ("freezer", ""):
        if paths.get(key):
            cgroups.kill_all(paths[key])
            break
    ct.destroy()


def migrate(container_id: str, *, address: str, bundle: str, remote: str | list[str] = "",
            remote_fastckpt: str = "fastckpt", port: int = 0, root: str = runc.DEFAULT_ROOT,
            dest_root: str | None = None, dest_id: str | None = None, dest_image_path: str | None = None,
            leave_running: bool = False, tcp_established: bool = False, ext_unix_sk: bool = False,
            file_locks: bool = False, manage_cgroups_mode: str | None = None, network_lock: str | None = None,
            keep_images: bool = False, lazy_pages: bool = False, source_address: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> MigrateResult:
    """Move runc container CONTAINER_ID (in runc root ROOT here) to the destination reached through
    REMOTE, where it runs as DEST_ID (default: the same id) in runc root DEST_ROOT from BUNDLE
    (a path on the destination: its config and its copy of the rootfs).

    ADDRESS: the destination's address the page server listens on and the source connects to.
    LAZY_PAGES: post-copy (see _migrate_lazy); the source's lazy page server then listens on
    SOURCE_ADDRESS (default: this host's address on the route to ADDRESS) and PORT.
    """
    t0 = time.monotonic()
    if not address:
        raise UsageError("migrate needs the destination's --address (where its page server listens)")
    if not bundle:
        raise UsageError("migrate needs -b/--bundle: the bundle on the destination")
    if timeout is None or timeout <= 0:
        raise UsageError(f"Invalid timeout {timeout!r} (seconds, > 0)")
    if source_address and not lazy_pages:
        raise UsageError("--source-address is where the destination pulls pages from: only with --lazy-pages")
    runc.validate_id(container_id)
    dest_id = dest_id or container_id
    runc.validate_id(dest_id)
    rem = Remote(remote, remote_fastckpt)
    dest_dir = dest_image_path or os.path.join(DEFAULT_DEST_DIR, f"{dest_id}.{uuid.uuid4().hex[:12]}")
    rem.argv(dest_dir, bundle, *([dest_root] if dest_root else []), address)  # shell-safe, or refused now
    privileges.require_privileges("migrate")
    if lazy_pages:
        usable, why = lazy_pages_usable()
        if not usable:
            raise FeatureUnavailable(why)
    ct, status = engine.load_checkpointable(container_id, root)
    if status != runc.RUNNING:
        raise ContainerStateError(f"container {container_id!r} is {status}: only a running container migrates")
    if not ct.freezer_state_file:
        raise ContainerStateError(f"container {container_id!r} has no freezer cgroup: it cannot be held "
                                  "frozen while it migrates")
    flags = _restore_flags(tcp_established=tcp_established, ext_unix_sk=ext_unix_sk, file_locks=file_locks,
                           manage_cgroups_mode=manage_cgroups_mode, network_lock=network_lock)
    if lazy_pages:
        from .migrate_lazy import migrate_lazy

        return migrate_lazy(
            ct, rem, address=source_address, dest_address=address, port=port, root=root, bundle=bundle,
            dest_root=dest_root, dest_id=dest_id, dest_dir=dest_dir, leave_running=leave_running,
            keep_images=keep_images, timeout=timeout, t0=t0, restore_flags=flags,
            checkpoint_kw=dict(tcp_established=tcp_established, ext_unix_sk=ext_unix_sk, file_locks=file_locks,
                               manage_cgroups_mode=manage_cgroups_mode, network_lock=network_lock))

    staging = _staging_dir()
    server = None
    listening = False
    lock = None
    frozen = False
    committed = False
    try:
        server = rem.popen(rem.fastckpt, "page-server", "--image-path", dest_dir, "--address", address,
                           "--port", str(port), "--timeout", f"{timeout:g}", "--stop-on-eof")
        port = _read_ready(server, min(timeout, 60.0))
        listening = True  # the directory there was empty or new: what it will hold is ours
        _probe(address, port, min(timeout, PROBE_TIMEOUT))  # before the freeze: an unreachable one costs nothing

        t_freeze = time.monotonic()
        ct.freeze_and_wait()
        frozen = True
        if tcp_established:
            lock = _lock_connections(ct)
        try:
            ckpt = engine.checkpoint(  # it uncorks CRIU's socket to the page server (pscork)
                container_id, root=root, image_path=staging, leave_running=True, page_server=(address, port),
                tcp_established=tcp_established, ext_unix_sk=ext_unix_sk, file_locks=file_locks,
                manage_cgroups_mode=manage_cgroups_mode, network_lock=network_lock)
        except Error as e:
            _raise_server_failure(server, e)
            raise
        t_dumped = time.monotonic()
        # the small images go while the page server finishes writing the pages (other files)
        untar = rem.popen("tar", "-x", "--no-same-owner", "-C", dest_dir)
        try:
            untar.stdin.write(_tar_of(staging))
            untar.stdin.close()
        except BrokenPipeError:
            pass
        try:
            pages_bytes = _wait_server(server, t_freeze + timeout)
            server = None
        finally:
            try:
                untar.wait(timeout=max(1.0, t_freeze + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                untar.kill()
                untar.wait()
        if untar.returncode:
            raise Error(f"the images could not be written on the destination: "
                        f"{_last_line(untar.stderr.read()) or f'tar exit status {untar.returncode}'}")

        t_restore = time.monotonic()
        with signals.deferred():  # the restore is bounded by its own watchdog there
            r = rem.run(rem.fastckpt, *(["--root", dest_root] if dest_root else []), "restore",
                        "--image-path", dest_dir, "-b", bundle, "-d", "--json", *flags, dest_id,
                        timeout=timeout)
            t_running = time.monotonic()
            if r.returncode:
                raise Error(f"the restore on the destination failed: "
                            f"{_last_line(r.stderr) or f'exit status {r.returncode}'}")
            committed = True
            # confirmed: the source goes (or is thawed: --leave-running)
            _finish_source(ct, lock, leave_running)
            frozen = False
        pid = _restored_pid(r.stdout)
        dump_stats = _dump_stats(staging)  # after the downtime: decoding costs an import
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C, SIGTERM, SIGHUP (also when the dump deferred it)
        raise interrupted(committed, container_id, dest_id) from None
    except BaseException as e:
        if committed:  # the container runs on the destination; only the source's removal failed
            raise source_not_removed(container_id, dest_id, e) from e
        raise
    finally:
        with signals.deferred():  # a second Ctrl-C does not cut the clean-up short
            if not committed:
                _abort(rem, server, dest_dir if listening else None)
                _release_source(ct, lock, frozen)
            elif not keep_images:
                _remove_remote_dir(rem, dest_dir)
            _clear_staging(staging, keep_logs=not committed)
    return MigrateResult(container_id=container_id, dest_id=dest_id, dest_image_path=dest_dir, pid=pid,
                         downtime=t_running - t_freeze, total_time=time.monotonic() - t0,
                         dump_time=t_dumped - t_freeze, restore_time=t_running - t_restore,
                         pages_bytes=pages_bytes, images_bytes=sum(ckpt.files.values()),
                         source_kept=leave_running, criu_dump=dump_stats)


def _finish_source(ct: runc.Container, lock: "tcplock.TcpLock | None", leave_running: bool) -> None:
    """The migration is confirmed: the source goes (or is thawed: --leave-running)."""
    if lock is not None:
        lock.commit()
    if leave_running:
        ct.thaw()
    else:
        _destroy_source(ct)


def _release_source(ct: runc.Container, lock: "tcplock.TcpLock | None", frozen: bool) -> None:
    """The migration failed: the source goes on running here, thawed, its connections let go."""
    if lock is not None:
        lock.abort()
    if frozen:
        ct.thaw()


def interrupted(committed: bool, container_id: str, dest_id: str, detail: str = "") -> Interrupted:
    if committed:
        return Interrupted(f"interrupted after the migration completed: container {container_id!r} runs on "
                           f"the destination as {dest_id!r}")
    return Interrupted(f"interrupted: nothing was migrated; container {container_id!r} runs here{detail}")


def source_not_removed(container_id: str, dest_id: str, e: BaseException) -> Error:
    return Error(f"container {container_id!r} runs on the destination as {dest_id!r}, but the source "
                 f"could not be removed: {e}")


def _restore_flags(*, tcp_established: bool, ext_unix_sk: bool, file_locks: bool,
                   manage_cgroups_mode: str | None, network_lock: str | None) -> list[str]:
    """The checkpoint's options the destination's restore must repeat."""
    return (["--tcp-established"] * tcp_established + ["--ext-unix-sk"] * ext_unix_sk
            + ["--file-locks"] * file_locks
            + (["--manage-cgroups-mode", manage_cgroups_mode] if manage_cgroups_mode else [])
            + (["--network-lock", network_lock] if network_lock else []))


def _clear_staging(staging: str, keep_logs: bool) -> None:
    """The non-page images go; after a failure CRIU's logs stay (the error names them)."""
    if not keep_logs:
        shutil.rmtree(staging, ignore_errors=True)
        return
    try:
        names = os.listdir(staging)
    except OSError:  # gone already: nothing to clear (and the migration's own error stays the one told)
        return
    for name in names:
        if not name.endswith(".log"):
            try:
                os.unlink(os.path.join(staging, name))
            except OSError:
                pass
    try:
        os.rmdir(staging)  # if empty
    except OSError:
        pass


def _dump_stats(staging: str) -> dict | None:
    from .images import read_stats

    try:
        return read_stats(staging, "dump")
    except Error:
        return None


def _restored_pid(stdout: bytes) -> int | None:
    import json

    try:
        return int(json.loads(stdout)["pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _wait_server(server: subprocess.Popen, deadline: float) -> int:
    """The destination's page server ends once the dump is done: bytes received, or its error."""
    try:  # its stdin stays open until it has finished (its end would stop it: --stop-on-eof)
        server.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise Error("the destination's page server did not finish in time", errno=errno.ETIMEDOUT) from None
    out, err = server.stdout.read(), server.stderr.read()
    server.stdin.close()
    if server.returncode:
        raise Error(f"the destination's page server failed: "
                    f"{_last_line(err) or f'exit status {server.returncode}'}")
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("received "):
            return int(line.split()[1])
    return 0


def _raise_server_failure(server: subprocess.Popen, dump_error: Error) -> None:
    """A dump that failed because the destination did (disk full, page server gone): its reason first."""
    try:
        server.wait(timeout=3)  # its stdin stays open: closing it would stop it
    except subprocess.TimeoutExpired:
        return
    # its log went with the destination's image directory: not named
    why = re.sub(r" \(log: [^)]*\)", "", _last_line(server.stderr.read()))
    if server.returncode and why:
        first = getattr(dump_error, "log_errors", None) or [str(dump_error)]
        raise Error(f"the destination's page server failed: {why} (the checkpoint here stopped: {first[0]})",
                    errno=dump_error.errno) from dump_error


def _abort(rem: Remote, server: subprocess.Popen | None, dest_dir: str | None) -> None:
    """The destination is left as it was: its page server stopped, its image directory (DEST_DIR,
    None when the page server never started in it) gone."""
    if server is not None:
        try:
            server.stdin.close()  # its --stop-on-eof: the page server stops, there or here
            server.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if server.poll() is None:
            server.kill()
            server.wait()
    if dest_dir:
        _remove_remote_dir(rem, dest_dir)


def _remove_remote_dir(rem: Remote, dest_dir: str) -> None:
    try:
        # its content first: the directory may be a mount point (then it stays, empty)
        rem.run("find", dest_dir, "-mindepth", "1", "-delete", timeout=60)
        rem.run("rmdir", dest_dir, timeout=60)
    except Error:
        pass
