"""Terminal containers: their pty at checkpoint, runc's --console-socket at restore.

A container made with ``terminal: true`` has its stdio on the slave of a pty
whose master runc handed to the --console-socket receiver (it is outside the
container). CRIU dumps such an "orphan" slave (fastckpt asks it to, as runc
does); at restore CRIU makes a new pty, restores the slave on it and sends
the new master over its RPC socket with the notification "orphan-pts-master";
fastckpt, like runc, passes that master on to the --console-socket, with
SCM_RIGHTS, and closes its own copy.

Such a container is always restorable by fastckpt: detached with
--console-socket (CLI, or ``console_socket=`` in the API), or in the
foreground, where fastckpt relays the terminal to its own stdio as runc does
(``Relay``). A detached restore without a console socket is refused (runc's
message) before anything is made, so the checkpoint of a terminal container
needs no refusal of its own.
"""
from __future__ import annotations

import json
import os

from .errors import UsageError

NOTIFY_ACTION = "orphan-pts-master"  # CRIU's notification carrying the new master (runc's name for it too)
_PTS_PREFIX = "/dev/pts/"


# --- restore ------------------------------------------------------------------------------------

def spec_terminal(bundle: str) -> bool:
    """process.terminal of the bundle's config.json (what runc's restore goes by)."""
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            return bool((json.load(f).get("process") or {}).get("terminal"))
    except (OSError, ValueError, AttributeError):
        return False


def has_terminal(bundle: str, descriptors: list[str]) -> bool:
    """A terminal container: its bundle says so, or its checkpointed stdio is a pty."""
    return spec_terminal(bundle) or any(d.startswith(_PTS_PREFIX) for d in descriptors[:3])


def check_terminal(terminal: bool, detach: bool, console_socket: str | None) -> None:
    """runc's checks of a restore's terminal flags (checkTerminal), before anything is made."""
    if terminal and detach and not console_socket:
        raise UsageError("cannot allocate tty if fastckpt will detach without setting console socket: "
                         "the container has a terminal (restore it with --console-socket PATH)")
    if console_socket and not (terminal and detach):
        raise UsageError("cannot use console socket if fastckpt will not detach or allocate tty"
                         + ("" if terminal else " (the container has no terminal)"))


class ConsoleSocket:
    """A connection to the --console-socket receiver, made before the restore (as runc does)."""

    def __init__(self, path: str):
        import socket  # here, not at the top: a restore without a console would pay ~1 ms for it
        self.path = path
        self.sent = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise UsageError(f"--console-socket {path}: cannot connect: {e.strerror}") from None

    def send_master(self, master_fd: int) -> None:
        """Send the new pty master (SCM_RIGHTS, with runc's message), then close our copy."""
        import socket
        try:
            socket.send_fds(self._sock, [NOTIFY_ACTION.encode()], [master_fd])
            self.sent = True
        finally:
            os.close(master_fd)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "ConsoleSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Relay:
    """A foreground restore of a terminal container without --console-socket (runc's own console):
    fastckpt's stdin goes to the new pty master, the master's output to fastckpt's stdout, until
    the container ends (stop()). A terminal on stdin is put in raw mode meanwhile."""

    def __init__(self, master_fd: int, stdin: int = 0, stdout: int = 1):
        import threading

        self.master = master_fd
        self._saved = None
        if os.isatty(stdin):
            import termios
            import tty

            self._saved = (stdin, termios.tcgetattr(stdin))
            tty.setraw(stdin)
        self._threads = [threading.Thread(target=self._copy, args=(stdin, master_fd), daemon=True),
                         threading.Thread(target=self._copy, args=(master_fd, stdout), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _copy(src: int, dst: int) -> None:
        while True:
            try:
                data = os.read(src, 65536)
            except OSError:  # EIO: the pty's last slave is gone
                return
            if not data:
                return
            try:
                while data:
                    data = data[os.write(dst, data):]
            except OSError:
                return

    def stop(self) -> None:
        self._threads[1].join(timeout=1.0)  # what the container wrote last
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._saved[0], termios.TCSADRAIN, self._saved[1])
        try:
            os.close(self.master)
        except OSError:
            pass


def receive_master(listener: socket.socket) -> tuple[bytes, list[int]] | None:
    """The other end of a console socket: one connection's message and descriptors (the pty master),
    or None when the listener was closed or the sender sent nothing."""
    import socket
    try:
        conn, _ = listener.accept()
    except OSError:
        return None
    with conn:
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 4096, 4)
        except OSError:
            return None
    return msg, fds


class Discard:
    """A console socket that takes pty masters and closes them, for `runc create` of a terminal bundle
    whose container is deleted at once (runc's config conversion): ``with Discard() as path:``."""

    def __enter__(self) -> str:
        import socket
        import tempfile
        import threading

        self._fds: list[int] = []
        self._dir = tempfile.mkdtemp(prefix="fastckpt-tty-")
        self.path = os.path.join(self._dir, "sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(self.path)
        self._sock.listen(1)
        self._thread = threading.Thread(target=self._take, daemon=True)
        self._thread.start()
        return self.path

    def _take(self) -> None:
        got = receive_master(self._sock)
        if got is not None:
            self._fds = got[1]  # held until the container is deleted

    def __exit__(self, *exc) -> None:
        import socket
        import shutil

        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=2)
        for fd in self._fds:
            os.close(fd)
        shutil.rmtree(self._dir, ignore_errors=True)
