"""Running one CRIU operation in a criu process of fastckpt's own making.

libcriu would fork ``criu swrk`` itself, in the caller's session and process
group, so a Ctrl-C at the terminal would reach CRIU and the helpers it runs
(tar for tmpfs contents, iptables...) half-way through a dump.  Here fastckpt
spawns ``criu swrk`` in a session of its own and hands libcriu the socket
(CRIU_COMM_FD), which also gives it CRIU's pid: a watchdog bounds how long
CRIU may run and how large its log may grow, and kills it past either bound.
"""
from __future__ import annotations

import _socket
import os
import signal
import threading
import time

# libcriu reports broken connections with perror() on our stderr; the command
# says it in its own one line instead (cli sets this; an API caller's stderr is
# left alone)
MUTE_LIBCRIU_STDERR = False

# A log that grows past this is a CRIU gone wrong (a restore of a damaged
# pages image can loop writing ~25 MB/s of log); a normal one is < 10 MiB.
LOG_LIMIT = 256 << 20


class Watchdog(threading.Thread):
    def __init__(self, pid: int, log_path: str | None, timeout: float | None, log_limit: int, on_stop=None):
        super().__init__(name="fastckpt-criu-watchdog", daemon=True)
        self.pid, self.log_path, self.timeout, self.log_limit = pid, log_path, timeout, log_limit
        self.on_stop = on_stop
        self.reason: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        interval = 0.05
        while not self._stop_event.wait(interval):
            interval = min(interval * 2, 0.5)
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                self._kill(f"CRIU did not finish within {self.timeout:g} s and was stopped")
                return
            if self.log_path:
                try:
                    size = os.stat(self.log_path).st_size
                except OSError:
                    size = 0
                if size > self.log_limit:
                    self._kill(f"CRIU's log grew past {self.log_limit >> 20} MiB (CRIU looping?) and CRIU "
                               "was stopped")
                    return

    def _kill(self, reason: str) -> None:
        self.reason = reason
        # CRIU first stops forking, then what it forked goes (the tasks it was
        # restoring hold its socket open), then CRIU itself
        try:
            os.kill(self.pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
        for _ in range(10):
            found = descendants(self.pid)
            if not found:
                break
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.on_stop is not None:
            # what CRIU forked (the tasks it was restoring) holds its socket open and
            # may go on writing its log: all of it goes too, or libcriu waits for ever
            try:
                self.on_stop()
            except Exception:
                pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def descendants(pid: int) -> list[int]:
    """All live descendants of PID (children of each of its threads, recursively)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


LIBEXEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libexec")


def criu_env() -> dict[str, str]:
    """CRIU's environment: ours, with fastckpt's `tar` (ext/tar_shim.c) first on PATH.

    CRIU runs `tar` for the content of every tmpfs mount; the shim does CRIU's
    two tar commands itself for the small content of a container's tmpfs
    mounts, and hands anything else to the real tar. FASTCKPT_TAR_SHIM=0: off.
    """
    env = dict(os.environ)
    if env.get("FASTCKPT_TAR_SHIM", "1") != "0" and os.access(os.path.join(LIBEXEC, "tar"), os.X_OK):
        env["PATH"] = LIBEXEC + os.pathsep + env.get("PATH", os.defpath)
    return env


CRIU_ENV = "FASTCKPT_CRIU"  # the criu binary to run, instead of `criu` from PATH


def criu_name() -> str:
    return os.environ.get(CRIU_ENV) or "criu"


def which(name: str) -> str | None:
    """shutil.which() for one name (shutil's import costs ~1.7 ms of every command's start)."""
    dirs = [""] if os.sep in name else os.environ.get("PATH", os.defpath).split(os.pathsep)
    for d in dirs:
        path = os.path.join(d, name) if d else name
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _spawn(binary: str) -> tuple[int, _socket.socket]:
    """`criu swrk` in a session of its own, umask 077; returns its pid and our end of its socket."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    old_umask = os.umask(0o077)  # CRIU's images hold process memory: 0600, not 0644
    try:
        os.set_inheritable(theirs.fileno(), True)
        pid = os.posix_spawn(binary, [binary, "swrk", str(theirs.fileno())], criu_env(),
                             setsid=True, setsigmask=(),
                             # CRIU logs to its log file; its stdout would only say "Looks good."
                             file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
    except BaseException:
        ours.close()
        raise
    finally:
        os.umask(old_umask)
        theirs.close()
    return pid, ours


# a criu swrk started ahead of its operation, per thread: (binary, pid, our end of its socket)
_local = threading.local()


def prespawn() -> None:
    """Start the `criu swrk` of this thread's next run() now: its exec and start-up (~3 ms) then
    overlap the caller's own work (a command line importing its modules, a checkpoint setting up its
    directories). It waits for its request meanwhile; discard_spare() ends it if it is not used.
    A missing criu is left for the operation to report, in its place among the other checks."""
    if getattr(_local, "spare", None) is None:
        binary = which(criu_name())
        if binary:
            _local.spare = (binary, *_spawn(binary))


def discard_spare() -> None:
    spare = getattr(_local, "spare", None)
    if spare is not None:
        _, pid, ours = spare
        _local.spare = None
        try:  # killed before its socket closes: it would say "Can't recv request" on our stderr
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)
        ours.close()


def _take_spare(binary: str) -> tuple[int, _socket.socket] | None:
    """This thread's spare criu, if it runs BINARY and is still there."""
    spare = getattr(_local, "spare", None)
    if spare is None or spare[0] != binary:
        return None
    _, pid, ours = spare
    _local.spare = None
    try:
        alive = os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        alive = False
    if alive:
        return pid, ours
    ours.close()
    return None


def run(opts, op: str, binary: str, *, log_path: str | None = None, timeout: float | None = None,
        log_limit: int = LOG_LIMIT, setup=None, on_stop=None, fresh: bool = False):
    """Run OP ("dump", "restore", "check", ...) of OPTS in a ``criu swrk`` of its own (the spare one
    prespawn() started, or a new one).

    SETUP(pid), if given, runs once criu exists and before it gets its request;
    ON_STOP(), if given, when the watchdog stops CRIU: it kills all CRIU started.
    FRESH: a criu started now, not the spare: it inherits the descriptors opened since (the
    namespace files given to CRIU as inherit fds exist in CRIU only if they were there at its start).
    Returns (ret, errno, why CRIU was stopped or None) -- feature_check: its dict.
    """
    if fresh:
        discard_spare()
    pid, ours = _take_spare(binary) or _spawn(binary)
    opts.set_service_fd(ours.detach())  # libcriu closes it when the operation is over
    dog = Watchdog(pid, log_path, timeout, log_limit, on_stop)
    dog.start()
    try:
        if setup is not None:
            try:
                setup(pid)
            except BaseException:
                os.kill(pid, signal.SIGKILL)
                raise
        saved = _mute_stderr() if MUTE_LIBCRIU_STDERR else None
        try:
            result = getattr(opts, op)()
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
    finally:
        dog.stop()
        _reap(pid)
    if isinstance(result, dict):  # feature_check's answer
        return result
    return (*result, dog.reason)


def _mute_stderr() -> int:
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    return saved


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return
