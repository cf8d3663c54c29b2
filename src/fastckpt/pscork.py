"""CRIU's page-server socket, uncorked while a dump to a page server runs.

CRIU's dump corks its connection to the page server (TCP_CORK) as soon as it
connects, "the smartest mode ever" (criu/page-xfer.c), and never uncorks it:
its last command, the 24-byte PS_IOV_CLOSE, then waits in the socket for the
kernel's cork ceiling (200 ms) before it leaves, and the dump waits for the
page server's answer to it, with the container frozen.  Measured here: ~150 ms
more frozen time with a page server than without, the gap in CRIU's log sitting
right after "Disconnect from the page server".

While the dump runs, :class:`Uncork` finds CRIU's socket to the page server
(CRIU is a child of this process: libcriu's ``criu swrk``), takes a duplicate
of it (pidfd_getfd) and clears TCP_CORK every few milliseconds (CRIU sets it
once, just after connecting; clearing it pushes what waits).  CRIU's socket
already has TCP_NODELAY: uncorked, each write goes at once, and the pages go
in splices of a pipe's size, so nothing is lost by it.
"""
from __future__ import annotations

import os
import threading

from . import _libc

INTERVAL = 0.005


def uncork(page_server):
    """``with uncork(page_server):`` around a dump: an :class:`Uncork` for a page server the dump sends
    to (an object with ``address`` and ``port``; None: nothing to do); FASTCKPT_UNCORK=0 leaves CRIU's
    socket as CRIU sets it."""
    if page_server is None or os.environ.get("FASTCKPT_UNCORK", "1") == "0":
        return _NOTHING
    try:
        return Uncork(page_server.address, page_server.port)
    except ValueError:  # a host name: CRIU resolves it (or says it cannot); its socket is left as it is
        return _NOTHING


class _Nothing:
    """contextlib.nullcontext(), without contextlib's import (~0.5 ms of every dump without a page server)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> bool:
        return False


_NOTHING = _Nothing()


def _children() -> list[int]:
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


def _hex_endpoint(address: str, port: int) -> set[str]:
    """How /proc/net/tcp{,6} write ADDRESS:PORT as a remote end."""
    import ipaddress  # here: a dump without a page server does not pay for it (nor for socket's ~4 ms)

    ip = ipaddress.ip_address(address)
    forms = []
    if ip.version == 4:
        forms.append(ip.packed[::-1].hex().upper())
        ip = ipaddress.IPv6Address("::ffff:" + address)
    raw = ip.packed
    forms.append(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)).hex().upper())
    return {f"{f}:{port:04X}" for f in forms}


def _socket_to(pid: int, remote: set[str]) -> int | None:
    """The descriptor number in PID of its TCP socket connected to REMOTE, if any."""
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if parts[2] in remote:
                        inodes.add(parts[9])
        except OSError:
            pass
    if not inodes:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return int(fd)
    return None


class Uncork(threading.Thread):
    """``with Uncork(address, port):`` around a dump that sends its pages to ADDRESS:PORT."""

    def __init__(self, address: str, port: int):
        super().__init__(name="fastckpt-uncork", daemon=True)
        self.remote = _hex_endpoint(address, port)
        self.stopped = threading.Event()
        self.found = False

    def __enter__(self) -> "Uncork":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.join()

    def run(self) -> None:
        import socket

        sock = None
        try:
            while not self.stopped.wait(INTERVAL):
                if sock is None:
                    sock = self._find()
                    if sock is None:
                        continue
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                except OSError:
                    return
        except Exception:  # noqa: BLE001 -- an optimisation: never the dump's failure
            return
        finally:
            if sock is not None:
                sock.close()

    def _find(self) -> "socket.socket | None":
        import socket

        for pid in _children():
            fd = _socket_to(pid, self.remote)
            if fd is None:
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                dup = _libc.pidfd_getfd(pidfd, fd)
            except OSError:
                continue
            finally:
                os.close(pidfd)
            self.found = True
            return socket.socket(fileno=dup)
        return None
