"""Lazy migration (post-copy): the container runs on the destination before its memory is there.

``fastckpt migrate --lazy-pages`` (``migrate.migrate(lazy_pages=True)``), on the flow of CRIU's lazy
migration:

1. source: the container is frozen and dumped with ``--lazy-pages``: CRIU writes the non-page images
   (and the few pages it cannot leave behind) into the staging directory on /dev/shm, says so
   (CRIU's "status-ready"), and then serves the memory from a page server of its own on
   SOURCE_ADDRESS:PORT, the container still frozen, until everything has been pulled;
2. the non-page images go to the destination (a tar stream into ``tar -x`` through the prefix);
3. destination: ``criu lazy-pages --page-server`` (the daemon that pulls the pages from the source's
   page server and hands them to the restored tasks' userfaultfd on demand, and the rest in the
   background) and ``fastckpt restore --lazy-pages -d``: its exit status 0 is the confirmation, and
   the container runs there from then on: that ends the downtime;
4. the daemon pulls all the remaining pages; then the source's CRIU exits, and only then is the source
   container destroyed (or thawed: --leave-running).

Failure semantics. Before the destination's restore is confirmed, any failure (or Ctrl-C) leaves the
source container running, thawed, and the destination clean, as without --lazy-pages. After it, the
container runs on the destination while part of its memory is still only here: if the pages cannot
all be pulled (the source's CRIU or the network fails, the time bound passes, Ctrl-C), the
destination's copy is removed (it would fault on a page that never comes) and the source, frozen
all along and whole, is thawed: it goes on from the instant of the freeze, and what the destination's
copy did meanwhile (answers sent, files written) is lost. If the source HOST dies after the restore,
the destination's copy dies too: post-copy trades a shorter downtime for that window.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import subprocess
import threading
import time

from . import engine, runc, signals
from .errors import Error, Interrupted
from .migrate import (MigrateResult, Remote, _clear_staging, _dump_stats, _finish_source, _last_line,
                      _lock_connections, _release_source, _remove_remote_dir, _restored_pid, _staging_dir,
                      _tar_of, interrupted, source_not_removed)

LAZY_LOG = "lazy-pages.log"  # the destination's daemon's log, in the image directory


def source_address(dest_address: str) -> str:
    """This host's address on the route to DEST_ADDRESS (where the destination's daemon connects)."""
    family = socket.AF_INET6 if ":" in dest_address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dest_address, 9))  # no packet is sent: the kernel only picks the route
        except OSError as e:
            raise Error(f"no route to the destination {dest_address}: {e.strerror}", errno=e.errno) from None
        return s.getsockname()[0]


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError as e:
            raise Error(f"cannot listen on {address} for the destination: {e.strerror}", errno=e.errno) from None
        return s.getsockname()[1]


class _Dump(threading.Thread):
    """engine.checkpoint with --lazy-pages, in a thread: it returns once all pages were pulled."""

    def __init__(self, container_id: str, root: str, staging: str, page_server: tuple[str, int],
                 status_fd: int, kw: dict):
        super().__init__(name="fastckpt-lazy-dump", daemon=True)
        self.args = (container_id, root, staging, page_server, status_fd, kw)
        self.result = None
        self.error: BaseException | None = None
        # waited on instead of join(): a join interrupted by Ctrl-C marks a live thread as ended (CPython 3.11)
        self.finished = threading.Event()

    def run(self) -> None:
        container_id, root, staging, page_server, status_fd, kw = self.args
        try:
            self.result = engine.checkpoint(container_id, root=root, image_path=staging, leave_running=True,
                                            lazy_pages=True, page_server=page_server, status_fd=status_fd, **kw)
        except BaseException as e:  # handed to the caller
            self.error = e
        finally:
            self.finished.set()

    def running(self) -> bool:
        return self.is_alive() and not self.finished.is_set()

    def wait(self, timeout: float) -> bool:
        """Whether the dump ended within TIMEOUT seconds."""
        return self.finished.wait(timeout) if self.is_alive() or self.finished.is_set() else True


def _wait_ready(fd: int, what: str, alive, deadline: float, why) -> None:
    """A \\0 on FD (CRIU's --status-fd) while ALIVE() holds; else an Error naming WHY()."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Error(f"{what} did not start in time", errno=errno.ETIMEDOUT)
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            if os.read(fd, 1) == b"\0":
                return
            raise Error(f"{what} did not start: {why()}")
        if not alive():
            raise Error(f"{what} did not start: {why()}")


def _dump_failure(dump: _Dump) -> str:
    dump.wait(10)
    e = dump.error
    return str(e) if e is not None else "it stopped without a word"


def _stop_dump(dump: _Dump, address: str, port: int, bound: float) -> None:
    """The source's CRIU ends: a connection that closes at once is an error to its lazy page server
    (once its daemon is gone), whose dump then fails and lets the (still frozen) tasks go."""
    deadline = time.monotonic() + bound
    while dump.running() and time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=2).close()
        except OSError:
            pass
        dump.wait(1.0)


def _send_images(rem: Remote, staging: str, dest_dir: str, timeout: float) -> None:
    r = rem.run("tar", "-x", "--no-same-owner", "-C", dest_dir, input=_tar_of(staging), timeout=timeout)
    if r.returncode:
        raise Error(f"the images could not be written on the destination: "
                    f"{_last_line(r.stderr) or f'tar exit status {r.returncode}'}")


def _make_remote_dir(rem: Remote, dest_dir: str) -> None:
    """DEST_DIR there: made (0700) if missing, and empty (what it will hold is ours to remove)."""
    r = rem.run("mkdir", "-p", "-m", "0700", dest_dir, timeout=60)
    if r.returncode:
        raise Error(f"cannot make the image directory {dest_dir} on the destination: "
                    f"{_last_line(r.stderr) or f'exit status {r.returncode}'}; nothing was done")
    r = rem.run("find", dest_dir, "-mindepth", "1", "-maxdepth", "1", "-print", "-quit", timeout=60)
    if r.returncode or r.stdout.strip():
        raise Error(f"the image directory {dest_dir} on the destination already holds files: nothing was done")


def _lazy_bytes(staging: str) -> int:
    """Bytes of the pages the dump left to the destination to pull (PE_LAZY runs of its pagemaps)."""
    from .images import PE_LAZY, read_pagemap

    pages = 0
    for name in os.listdir(staging):
        if name.startswith("pagemap-") and name.endswith(".img"):
            try:
                pages += sum(r.nr_pages for r in read_pagemap(os.path.join(staging, name)).runs
                             if r.flags & PE_LAZY)
            except Error:
                pass
    return pages * os.sysconf("SC_PAGE_SIZE")


def _stop_process(p: subprocess.Popen | None) -> None:
    if p is not None and p.poll() is None:
        p.kill()
    if p is not None:
        p.wait()


def migrate_lazy(ct: runc.Container, rem: Remote, *, address: str | None, dest_address: str, port: int, root: str,
                 bundle: str, dest_root: str | None, dest_id: str, dest_dir: str, leave_running: bool,
                 keep_images: bool, timeout: float, t0: float, restore_flags: list[str],
                 checkpoint_kw: dict) -> MigrateResult:
    """The post-copy flow of the module's docstring, for migrate.migrate (which checked its input)."""
    container_id = ct.id
    address = address or source_address(dest_address)
    rem.argv(address)  # shell-safe, or refused now
    port = port or _free_port(address)
    _make_remote_dir(rem, dest_dir)  # before the freeze; from here on the directory is ours
    staging = _staging_dir()
    status_r, status_w = os.pipe()
    dump = _Dump(container_id, root, staging, (address, port), status_w, checkpoint_kw)
    status_sent = False
    daemon = None
    lock = None
    frozen = restored = done = False
    pid = None
    try:
        t_freeze = time.monotonic()
        deadline = t_freeze + timeout
        ct.freeze_and_wait()
        frozen = True
        if checkpoint_kw.get("tcp_established"):
            lock = _lock_connections(ct)
        dump.start()
        _wait_ready(status_r, "the lazy checkpoint here", dump.running, deadline, lambda: _dump_failure(dump))
        status_sent = True  # CRIU's notification wrote it and closed status_w
        t_dumped = time.monotonic()
        _send_images(rem, staging, dest_dir, max(1.0, deadline - time.monotonic()))
        daemon = rem.popen("criu", "lazy-pages", "--page-server", "--address", address, "--port", str(port),
                           "-D", dest_dir, "-o", LAZY_LOG, "--status-fd", "1")
        _wait_ready(daemon.stdout.fileno(), "the destination's lazy-pages daemon", lambda: daemon.poll() is None,
                    deadline, lambda: (_last_line(daemon.stderr.read()) if daemon.poll() is not None else "")
                    or f"see {LAZY_LOG} in {dest_dir} there")
        t_restore = time.monotonic()
        with signals.deferred():  # the restore is bounded by its own watchdog there
            r = rem.run(rem.fastckpt, *(["--root", dest_root] if dest_root else []), "restore",
                        "--image-path", dest_dir, "--work-path", dest_dir, "-b", bundle, "-d", "--json",
                        "--lazy-pages", *restore_flags, dest_id, timeout=timeout)
            t_running = time.monotonic()
            if r.returncode:
                raise Error(f"the restore on the destination failed: "
                            f"{_last_line(r.stderr) or f'exit status {r.returncode}'}")
            restored = True
        pid = _restored_pid(r.stdout)
        # it runs there; the rest of its memory is pulled from here meanwhile
        if not dump.wait(max(1.0, deadline - time.monotonic())):
            raise Error("the destination did not pull all pages in time", errno=errno.ETIMEDOUT)
        if dump.error is not None:
            raise Error(f"the pages could not all be pulled: {dump.error}")
        try:
            rc = daemon.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise Error("the destination's lazy-pages daemon did not finish in time", errno=errno.ETIMEDOUT) from None
        if rc:
            raise Error(f"the destination's lazy-pages daemon failed: "
                        f"{_last_line(daemon.stderr.read()) or f'exit status {rc}'}")
        t_pulled = time.monotonic()
        with signals.deferred():
            done = True
            _finish_source(ct, lock, leave_running)
            frozen = False
        dump_stats = _dump_stats(staging)
        lazy_bytes = _lazy_bytes(staging)
    except (KeyboardInterrupt, Interrupted):
        raise interrupted(done, container_id, dest_id,
                          " (its copy on the destination was removed)" if restored else "") from None
    except BaseException as e:
        if done:
            raise source_not_removed(container_id, dest_id, e) from e
        if restored and isinstance(e, Error):
            raise Error(f"{e}: the container's copy on the destination was removed, and the source goes on "
                        "from where it was frozen", errno=e.errno) from e
        raise
    finally:
        with signals.deferred():
            if not done:
                if restored:  # it would fault on a page that never comes
                    rem.run("runc", *(["--root", dest_root] if dest_root else []), "delete", "--force", dest_id,
                            timeout=60)
                _stop_process(daemon)
                _stop_dump(dump, address, port, bound=120.0)
                _remove_remote_dir(rem, dest_dir)
                _release_source(ct, lock, frozen)
            else:
                _stop_process(daemon)
                if not keep_images:
                    _remove_remote_dir(rem, dest_dir)
            os.close(status_r)
            if not status_sent and not dump.running():
                try:
                    os.close(status_w)  # CRIU never said it was ready: its notification did not close it
                except OSError:
                    pass
            _clear_staging(staging, keep_logs=not done)
    images = dump.result.files if dump.result is not None else {}
    return MigrateResult(container_id=container_id, dest_id=dest_id, dest_image_path=dest_dir, pid=pid,
                         downtime=t_running - t_freeze, total_time=time.monotonic() - t0,
                         dump_time=t_dumped - t_freeze, restore_time=t_running - t_restore,
                         pages_bytes=lazy_bytes, images_bytes=sum(images.values()),
                         source_kept=leave_running, criu_dump=dump_stats, lazy=True, pull_time=t_pulled - t_running)
