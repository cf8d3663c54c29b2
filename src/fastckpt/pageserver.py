"""The receiving side of a migration: a one-shot CRIU page server.

``serve()`` (and ``fastckpt page-server``) listens on ADDRESS:PORT, takes one
connection from a dump made with ``--page-server`` and has CRIU write the
pages that arrive (``pagemap-*.img``, ``pages-*.img``) into the image
directory; it returns when that dump is done.

How CRIU is driven, and why: libcriu has no page-server call among its
``criu_local_*`` functions (CRIU's RPC has a PAGE_SERVER request, which
libcriu does not expose).  The RPC request would fork a daemonised page server
that is nobody's child: its exit status, and so whether the pages all arrived,
would be lost.  fastckpt therefore runs ``criu page-server`` in the foreground,
in a session of its own (a Ctrl-C at the terminal is fastckpt's to handle),
and accepts the connection itself, handing CRIU the connected socket
(``--ps-socket``).  That gives:

* a bound on the wait for the sender (``timeout``: no connection, no page
  server left listening for ever) and on the whole transfer;
* a sender that dies is noticed: a dead process closes its socket (CRIU's read
  ends); a host that vanishes is found by TCP keepalive and TCP_USER_TIMEOUT
  set on the accepted socket (~30 s without an acknowledgement);
* CRIU's exit status: 0 only when the dump closed the transfer properly;
  then every ``pages-*.img`` is checked against its pagemap.

On any failure (CRIU's, the timeout, Ctrl-C) the images that arrived are
removed and CRIU is stopped; its log (``page-server.log``) stays.
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess
import time

from ._record import Record, factory
from . import criu_proc, engine, images, manifest
from .errors import CriuError, DiskFull, Error, ImageDirError, Interrupted, UsageError, log_errors

LOG_FILE = "page-server.log"
DEFAULT_TIMEOUT = 600.0  # seconds for a dump to connect and send everything
KEEPALIVE = (10, 5, 3)  # idle s, interval s, probes: a silent peer is given up after ~25 s
USER_TIMEOUT_MS = 30_000  # unacknowledged data for this long: the peer is gone
_POLL = 0.2


class PageServerResult(Record):
    image_path: str
    address: str
    port: int
    peer: str  # ADDRESS:PORT of the dump that connected
    log_path: str
    wall_time: float = 0.0  # seconds from the connection to the end of the transfer
    files: dict[str, int] = factory(dict)  # the images written: name -> bytes

    @property
    def bytes(self) -> int:
        """Bytes of memory pages received (the pages images; their pagemaps aside)."""
        return sum(size for name, size in self.files.items() if name.startswith("pages-"))


def _held_images(path: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(path) if manifest.is_checkpoint_file(n))
    except FileNotFoundError:
        return []


def _listen(address: str, port: int) -> socket.socket:
    if not 0 <= port < 65536:
        raise UsageError(f"Invalid port number {port} for the page server (1-65535)")
    try:
        infos = socket.getaddrinfo(address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"invalid page server address {address!r}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    sk = socket.socket(family, socket.SOCK_STREAM)
    try:
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sk.bind(sockaddr)
        sk.listen(1)
    except OSError as e:
        sk.close()
        raise Error(f"cannot listen on {address or '*'}:{port}: {e.strerror}", errno=e.errno) from None
    return sk


def _watch_peer(conn: socket.socket) -> None:
    """A peer that vanishes without closing (host down, link cut) ends CRIU's read."""
    idle, interval, count = KEEPALIVE
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    # CRIU's page server answers small requests: no reply waits for an acknowledgement (Nagle)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _eof(fd: int) -> bool:
    """FD (the controller's pipe) reached its end: whoever drove us is gone."""
    try:
        return os.read(fd, 4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _accept(sk: socket.socket, deadline: float, stop_fd: int | None) -> socket.socket:
    """The dump's connection.  One that closes before it sends anything is a probe (a sender
    checking the way here before it freezes its container): it is let go, and the wait goes on."""
    conn = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Error("no dump connected to the page server in time; it stopped", errno=errno.ETIMEDOUT)
            fds = [conn or sk] + ([stop_fd] if stop_fd is not None else [])
            ready, _, _ = select.select(fds, [], [], min(left, _POLL))
            if stop_fd is not None and stop_fd in ready and _eof(stop_fd):
                raise Interrupted("the page server's controller went away before a dump connected; it stopped")
            if conn is None and sk in ready:
                conn, _ = sk.accept()
            elif conn is not None and conn in ready:
                try:
                    first = conn.recv(1, socket.MSG_PEEK)
                except OSError:
                    first = b""
                if first:
                    found, conn = conn, None
                    return found
                conn.close()  # a probe
                conn = None
    finally:
        if conn is not None:
            conn.close()


def check_pages(image_path: str, page_size: int | None = None) -> None:
    """Each ``pages-<id>.img`` that arrived holds exactly the pages its pagemap says
    (:class:`~fastckpt.errors.DamagedImage` otherwise)."""
    page_size = page_size or os.sysconf("SC_PAGE_SIZE")
    problems = []
    for name in sorted(os.listdir(image_path)):
        if not (name.startswith("pagemap-") and name.endswith(".img")):
            continue
        try:
            pagemap = images.read_pagemap(os.path.join(image_path, name))
            pages_id, n = pagemap.pages_id, pagemap.stored_pages
        except Exception as e:  # noqa: BLE001 -- any decoding failure is a damaged image
            problems.append((name, f"unreadable: {e}"))
            continue
        pages = f"pages-{pages_id}.img"
        try:
            size = os.stat(os.path.join(image_path, pages)).st_size
        except FileNotFoundError:
            size = -1 if n else 0
        if size != n * page_size:
            got = "missing" if size < 0 else f"{size} bytes"
            problems.append((pages, f"{got}, but {name} says it holds {n} pages ({n * page_size} bytes)"))
    if problems:
        raise manifest._damaged(image_path, problems)


def _remove_images(image_path: str) -> None:
    for name in _held_images(image_path):
        try:
            os.unlink(os.path.join(image_path, name))
        except OSError:
            pass


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # CRIU and anything it started, in its own session
        except ProcessLookupError:
            pass
    proc.wait()


def serve(image_path: str, port: int, address: str = "", *, timeout: float = DEFAULT_TIMEOUT,
          ready=None, stop_fd: int | None = None, log_level: int = 4) -> PageServerResult:
    """Receive the pages of one dump into IMAGE_PATH, listening on ADDRESS:PORT
    (ADDRESS "": every address; PORT 0: one the kernel picks).

    READY(address, port), if given, is called once the socket listens.
    TIMEOUT bounds the wait for the dump and the transfer together.
    STOP_FD: a descriptor whose end (EOF) stops the page server, as Ctrl-C does
    (the pipe of a controller such as ``fastckpt migrate``).
    """
    if not image_path:
        raise UsageError("the page server needs --image-path")
    if timeout is None or timeout <= 0:
        raise UsageError(f"Invalid timeout {timeout!r} (seconds, > 0)")
    image_path = os.path.abspath(image_path)
    engine.require_privileges("page-server")
    criu = engine.criu_binary()
    engine.make_private_dir(image_path, "image directory")
    # empty: whatever is in it afterwards came from the dump (and a failed migration may clear it)
    held = sorted(os.listdir(image_path))
    if held:
        what = "a checkpoint" if _held_images(image_path) else "files"
        raise ImageDirError(f"image directory {image_path} already holds {what} ({held[0]}, ...): "
                            "refused (give an empty or new directory)", errno=errno.EEXIST)
    log_path = os.path.join(image_path, LOG_FILE)
    deadline = time.monotonic() + timeout
    sk = _listen(address, port)
    proc = None
    ok = False
    try:
        bound = sk.getsockname()
        if ready is not None:
            ready(bound[0], bound[1])
        try:  # the pagemaps' decoder, ready before the dump comes (its import would count in the downtime)
            images.message_class("pagemap_head")
            images.message_class("pagemap_entry")
        except Error:
            pass
        conn = _accept(sk, deadline, stop_fd)
        sk.close()
        t0 = time.monotonic()
        peer = conn.getpeername()
        try:
            _watch_peer(conn)
            argv = [criu, "page-server", "--ps-socket", str(conn.fileno()), "--images-dir", image_path,
                    "-o", LOG_FILE, f"-v{log_level}"]
            old_umask = os.umask(0o077)  # the pages are process memory
            try:
                with open(os.devnull, "r+b") as null:
                    proc = subprocess.Popen(argv, stdin=null, stdout=null, stderr=null, pass_fds=[conn.fileno()],
                                            start_new_session=True, env=criu_proc.criu_env())
            finally:
                os.umask(old_umask)
        finally:
            conn.close()  # CRIU holds it now
        stopped = _wait(proc, deadline, stop_fd)
        if stopped:
            raise Error(f"the page server {stopped}; the pages received were removed (log: {log_path})",
                        errno=errno.ETIMEDOUT)
        if proc.returncode != 0:
            lines = log_errors(log_path)
            if any("No space le" in l for l in lines) or engine._free_bytes(image_path) in range(0, 4 << 20):
                raise DiskFull(f"criu page-server failed: no space left on the disk holding {image_path}; "
                               f"the pages received were removed (log: {log_path})", errno=errno.ENOSPC)
            raise CriuError("page-server", -1, 0, log_path, lines,
                            detail=(lines[0] if lines else f"exit status {proc.returncode}")
                            + "; the pages received were removed")
        check_pages(image_path)
        files = {n: os.stat(os.path.join(image_path, n)).st_size for n in _held_images(image_path)}
        ok = True
        return PageServerResult(image_path=image_path, address=bound[0], port=bound[1],
                                peer=f"{peer[0]}:{peer[1]}", log_path=log_path,
                                wall_time=time.monotonic() - t0, files=files)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: the page server stopped; the pages received were removed") from None
    finally:
        sk.close()
        if proc is not None:
            _stop(proc)
        if not ok:
            _remove_images(image_path)


def _wait(proc: subprocess.Popen, deadline: float, stop_fd: int | None) -> str | None:
    """Wait for CRIU's page server; why it was stopped, or None when it ended by itself."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _stop(proc)
            return "did not get the whole dump in time and stopped"
        try:
            proc.wait(min(left, _POLL))
            return None
        except subprocess.TimeoutExpired:
            pass
        if stop_fd is not None:
            ready, _, _ = select.select([stop_fd], [], [], 0)
            if ready and _eof(stop_fd):
                _stop(proc)
                return "was stopped: its controller went away"
