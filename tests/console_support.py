"""A --console-socket receiver for the tests (what runc's own tests use `recvtty` for).

It listens on an AF_UNIX socket, takes the pty master each connection sends
(SCM_RIGHTS), keeps it open (the container's shell would get a hangup
otherwise) and drains its output into a buffer, so a test can type into the
container's terminal and read what the shell answered.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import List


class ConsoleReceiver:
    def __init__(self, path: str):
        self.path = path
        self.masters: List[int] = []
        self.messages: List[bytes] = []
        self._out: dict[int, bytearray] = {}
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(8)
        self._stop = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        from fastckpt.console import receive_master

        while not self._stop:
            got = receive_master(self._sock)
            if got is None:
                if self._stop:
                    return
                continue
            msg, fds = got
            for fd in fds:
                with self._lock:
                    self.masters.append(fd)
                    self.messages.append(msg)
                    self._out[fd] = bytearray()
                t = threading.Thread(target=self._drain, args=(fd,), daemon=True)
                t.start()
                self._threads.append(t)

    def _drain(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._out[fd] += data

    def wait_masters(self, n: int, timeout: float = 30.0) -> int:
        """The n-th master received (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.masters) >= n:
                    return self.masters[n - 1]
            time.sleep(0.02)
        raise AssertionError(f"the console socket {self.path} got {len(self.masters)} pty masters, not {n}")

    def output(self, fd: int) -> bytes:
        with self._lock:
            return bytes(self._out.get(fd, b""))

    def run(self, fd: int, command: str, expect: str, timeout: float = 30.0) -> str:
        """Type COMMAND into the terminal of master FD; wait until EXPECT appears in what it prints after."""
        start = len(self.output(fd))
        os.write(fd, command.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output(fd)[start:].decode(errors="replace")
            if expect in out:
                return out
            time.sleep(0.02)
        raise AssertionError(f"the terminal did not answer {command!r} with {expect!r}; it printed "
                             f"{self.output(fd)[start:]!r}")

    def assert_shell_works(self, fd: int) -> None:
        """The shell on the terminal evaluates what it is given (6*7 comes back as 42, not as typed)."""
        self.run(fd, "echo fc-$((6*7))-ok", "fc-42-ok")

    def close(self) -> None:
        self._stop = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        # the drains end when the container's side hangs up (its processes are gone by now): waited
        # for, so that no thread of this test outlives it (other tests count this process's threads)
        for t in self._threads:
            t.join(timeout=10)
        for fd in self.masters:
            try:
                os.close(fd)
            except OSError:
                pass
        self.masters = []
        try:
            os.unlink(self.path)
        except OSError:
            pass
