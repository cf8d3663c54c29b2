"""Process trees the tests start (their roots are our children) and the network they use."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
from typing import List, Optional, Sequence

from .waiting import WAIT, proc_alive, read_int, wait_advancing, wait_until

# A counter like fastckpt.bundle's, writing to COUNT_FILE every 0.1 s.
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > {path}; sleep 0.1; done"


# --- plain process trees -----------------------------------------------------------

class ProcTree:
    """A process tree the test started (its root is our child)."""

    def __init__(self, popen: subprocess.Popen, new_session: bool, count_file: Optional[str]):
        self.popen = popen
        self.pid = popen.pid
        self.new_session = new_session
        self.count_file = count_file
        self.reaped = False

    def alive(self) -> bool:
        return not self.reaped and proc_alive(self.pid)

    def count(self) -> Optional[int]:
        assert self.count_file, "this tree has no counter"
        return read_int(self.count_file)

    def wait_advancing(self) -> int:
        return wait_advancing(self.count, f"the counter of pid {self.pid}")

    def wait_gone(self, timeout: float = WAIT) -> int:
        """Wait for the root process to die; returns its returncode (-9: SIGKILL)."""
        rc = self.popen.wait(timeout)
        self.reaped = True
        return rc

    def kill(self) -> None:
        if self.reaped:
            return
        # The pid (and its group id) cannot be reused before we reap the root.
        try:
            if self.new_session:
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                os.kill(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(10)
        finally:
            self.reaped = True


class ProcTreeFactory:
    def __init__(self):
        self.trees: List[ProcTree] = []

    def __call__(self, args: Sequence[str], *, new_session: bool = True, count_file: Optional[str] = None,
                 ready_file: Optional[str] = None) -> ProcTree:
        """Start ARGS with stdio on /dev/null (in a new session unless NEW_SESSION is False).

        With COUNT_FILE, wait until the counter it writes exists; with READY_FILE,
        until that file exists.
        """
        with open(os.devnull, "r+b") as null:
            p = subprocess.Popen(list(args), stdin=null, stdout=null, stderr=null,
                                 start_new_session=new_session, close_fds=True)
        tree = ProcTree(p, new_session, count_file)
        self.trees.append(tree)
        if count_file:
            wait_until(lambda: read_int(count_file), f"pid {p.pid} to write {count_file}")
        if ready_file:
            wait_until(lambda: os.path.exists(ready_file) or p.poll() is not None, f"pid {p.pid} to be ready")
            assert p.poll() is None, f"pid {p.pid} exited with {p.returncode} before it was ready"
        return tree

    def counter(self, count_file: str, *, new_session: bool = True, prefix: str = "") -> ProcTree:
        """A busybox shell counter (PREFIX runs first in the same shell)."""
        script = prefix + COUNTER.format(path=count_file)
        return self(["busybox", "sh", "-c", script], new_session=new_session, count_file=count_file)

    def shell_job(self, count_file: str) -> ProcTree:
        """A counter that is not its session's leader: a job of a shell that leads a session we started.

        Inheriting pytest's own session would not do: where the test runs in a pid
        namespace of its own, that session's leader is invisible, which CRIU
        refuses whatever the options.
        """
        pid_file = count_file + ".pid"
        leader = ("busybox sh -c \"$0\" & echo $! > " + shlex.quote(pid_file) + "; wait")
        script = COUNTER.format(path=count_file)
        # setsid runs the shell in place (Popen's child is no group leader): it leads the session
        tree = self(["busybox", "setsid", "busybox", "sh", "-c", leader, script], new_session=False,
                    count_file=count_file)
        tree.new_session = True  # kill() takes the whole session's group
        tree.pid = wait_until(lambda: read_int(pid_file), f"the pid of the job in {pid_file}")
        assert os.getsid(tree.pid) == tree.popen.pid != tree.pid
        return tree

    def cleanup(self) -> None:
        for t in reversed(self.trees):
            t.kill()
        self.trees.clear()


# --- network -------------------------------------------------------------------------

def free_port() -> int:
    """A loopback TCP port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_sockets(pid: Optional[int] = None) -> List[dict]:
    """IPv4 TCP sockets of the network namespace of PID (default: ours), from /proc/net/tcp."""
    path = f"/proc/{pid}/net/tcp" if pid else "/proc/net/tcp"
    out = []
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.split()
            laddr, raddr, st = parts[1], parts[2], parts[3]
            out.append({"lport": int(laddr.split(":")[1], 16), "rport": int(raddr.split(":")[1], 16),
                        "state": int(st, 16)})
    return out


TCP_ESTABLISHED, TCP_LISTEN = 0x01, 0x0A


def listening(port: int, pid: Optional[int] = None) -> bool:
    return any(s["lport"] == port and s["state"] == TCP_LISTEN for s in tcp_sockets(pid))


def established(port: int, pid: Optional[int] = None) -> bool:
    return any(s["state"] == TCP_ESTABLISHED and port in (s["lport"], s["rport"]) for s in tcp_sockets(pid))
