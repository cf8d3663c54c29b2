"""Terminal containers: their pty at checkpoint, runc's --console-socket at restore.

A container made with ``terminal: true`` has its stdio on the slave of a pty
whose master runc handed to the --console-socket receiver (it is outside the
container). CRIU dumps such an "orphan" slave (fastckpt asks it to, as runc
does); at restore CRIU makes a new pty, restores the slave on it and sends
the new master over its RPC socket with the notification "orphan-pts-master";
fastckpt, like runc, passes that master on to the --console-socket, with
SCM_RIGHTS, and closes its own copy.

CRIU can restore one such slave only ("Only one slave external peer is
allowed"): a container holding two ptys whose masters are outside (say its
init's console and a `runc exec -t` shell's) could be dumped but never
restored, so ``check_restorable()`` refuses to checkpoint it (unless it is
left running) before anything is frozen.
"""
from __future__ import annotations

import errno
import json
import os
import socket

from .errors import ContainerStateError, UsageError

NOTIFY_ACTION = "orphan-pts-master"  # CRIU's notification carrying the new master (runc's name for it too)
_PTS_PREFIX = "/dev/pts/"
_MASTERS = ("/dev/ptmx", "/dev/pts/ptmx")


# --- checkpoint -----------------------------------------------------------------------------

def _pty_fds(pid: int) -> tuple[set[int], set[int]]:
    """(slave indexes, master indexes) of the ptys PID holds open."""
    slaves, masters = set(), set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return slaves, masters
    for fd in fds:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target in _MASTERS:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    for line in f:
                        if line.startswith("tty-index:"):
                            masters.add(int(line.split()[1]))
            except (OSError, ValueError):
                pass
        elif target.startswith(_PTS_PREFIX) and target[len(_PTS_PREFIX):].isdigit():
            slaves.add(int(target[len(_PTS_PREFIX):]))
    return slaves, masters


def orphan_slaves(pids) -> set[int]:
    """The pty slaves held by PIDS whose master none of them holds (the pty indexes)."""
    slaves, masters = set(), set()
    for pid in pids:
        s, m = _pty_fds(pid)
        slaves |= s
        masters |= m
    return slaves - masters


def check_restorable(container_id: str, pids) -> None:
    """Refuse a checkpoint that CRIU could dump but never restore: more than one outside pty."""
    orphans = orphan_slaves(pids)
    if len(orphans) > 1:
        names = ", ".join(f"/dev/pts/{n}" for n in sorted(orphans))
        raise ContainerStateError(
            f"container {container_id!r} holds {len(orphans)} terminals whose masters are outside it ({names}; "
            "e.g. a `runc exec -t` session besides its console): CRIU restores one only, so this checkpoint "
            "could not be restored; end the other sessions first, or use --leave-running. Nothing was "
            "checkpointed", errno=errno.EBUSY)


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
