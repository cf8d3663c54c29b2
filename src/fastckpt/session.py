"""A long-lived CRIU for repeated API operations (CRIU's service mode).

Each libcriu call otherwise forks and execs a new ``criu swrk``, which loads
and initializes itself every time.  A :class:`Session` starts ``criu service``
once; each operation is then served by a fork of that warm process.
Containers' restores still run through ``criu swrk`` (libcriu needs it to make
the restored container a child of the caller).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from . import criu, criu_proc, engine, kdat, runc
from .errors import CriuError

RUN_DIR = "/run/fastckpt"


class Session:
    """``with fastckpt.Session() as s: s.checkpoint(pid=..., leave_running=True, ...)``"""

    def __init__(self, *, root: str = runc.DEFAULT_ROOT, start_timeout: float = 10.0):
        self.root = root
        binary = criu.criu_binary()
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        self._dir = tempfile.mkdtemp(prefix="criu-service-", dir=RUN_DIR)
        self.address = os.path.join(self._dir, "criu.sock")
        pidfile = os.path.join(self._dir, "criu.pid")
        self.log_path = os.path.join(self._dir, "service.log")
        kdat.ensure(binary)
        with open(os.devnull, "r+b") as null:
            # umask 077: the service's workers write images that hold process memory
            r = subprocess.run([binary, "service", "--address", self.address, "--daemon", "--pidfile", pidfile,
                                "-W", self._dir, "-o", "service.log", "-v3"],
                               stdin=null, stdout=null, stderr=subprocess.PIPE, timeout=start_timeout,
                               env=criu_proc.criu_env(), preexec_fn=lambda: os.umask(0o077))
        self.pid: int | None = None
        if r.returncode == 0:
            # criu binds its socket, then daemonizes, then writes its pid: wait for both
            deadline = time.monotonic() + start_timeout
            while time.monotonic() < deadline:
                try:
                    with open(pidfile) as f:
                        self.pid = int(f.read().strip())
                except (OSError, ValueError):
                    self.pid = None
                if self.pid is not None and os.path.exists(self.address):
                    break
                time.sleep(0.002)
        if self.pid is None or not os.path.exists(self.address):
            self.close()
            raise CriuError("service", -1, 0, self.log_path, detail=(r.stderr or b"").decode(errors="replace")
                            .strip() or "criu service did not start")

    def checkpoint(self, container_id: str | None = None, options=None, **kwargs):
        """:func:`fastckpt.checkpoint` (the same arguments) done by this session's warm CRIU."""
        kwargs.setdefault("root", self.root)
        return engine.checkpoint(container_id, options, session=self, **kwargs)

    def restore(self, container_id: str | None = None, options=None, **kwargs):
        """:func:`fastckpt.restore` (the same arguments) done by this session's warm CRIU."""
        from .restorer import restore

        kwargs.setdefault("root", self.root)
        return restore(container_id, options, session=self, **kwargs)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the session's criu service (waiting for it to go) and remove its files."""
        if self.pid is not None:
            pid, self.pid = self.pid, None
            try:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.002)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "pid", None) is not None:
            self.close()


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (the daemon's parent is init, which reaps it later)."""
    from .proctree import stat

    st = stat(pid)
    return st is not None and st[1][0] not in (b"Z", b"X")
