"""Running one CRIU operation in a criu process of fastckpt's own making.

libcriu would fork ``criu swrk`` itself, in the caller's session and process
group, so a Ctrl-C at the terminal would reach CRIU and the helpers it runs
(tar for tmpfs contents, iptables...) half-way through a dump.  Here fastckpt
spawns ``criu swrk`` in a session of its own and hands libcriu the socket
(CRIU_COMM_FD), which also gives it CRIU's pid: a watchdog bounds how long
CRIU may run and how large its log may grow, and kills it past either bound.
"""
from __future__ import annotations

import _signal  # not `signal`: its IntEnum set-up costs ~0.4 ms of every command's start
import _socket
import os
import threading
import time

# A log that grows past this is a CRIU gone wrong (a restore of a damaged
# pages image can loop writing ~25 MB/s of log); a normal one is < 10 MiB.
LOG_LIMIT = 256 << 20


class Watchdog(threading.Thread):
    def __init__(self, pid: int, log_path: str | None, timeout: float | None, log_limit: int, on_stop=None,
                 watch=None):
        super().__init__(name="fastckpt-criu-watchdog", daemon=True)
        self.pid, self.log_path, self.timeout, self.log_limit = pid, log_path, timeout, log_limit
        self.on_stop = on_stop
        self.watch = watch  # called at each look: a reason to stop CRIU, or None
        self.reason: str | None = None
        self._stop_event = threading.Event()
        # held while CRIU is stopped; stop() takes it: an operation that ended first is not stopped after it
        self._lock = threading.Lock()
        self._ended = False

    def run(self) -> None:
        start = time.monotonic()
        interval = 0.05
        # a watch looks often: the freezer's thawed spell it waits for may be short
        longest = 0.02 if self.watch is not None else 0.5
        while not self._stop_event.wait(interval):
            interval = min(interval * 2, longest)
            if callable(self.timeout):  # worked out here, while CRIU runs, rather than before it starts
                try:
                    self.timeout = self.timeout()
                except Exception:
                    self.timeout = None
            if self.watch is not None:
                why = self.watch()
                if why:
                    self._kill(why)
                    return
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
        with self._lock:
            if not self._ended:  # the operation ended while the watchdog looked: CRIU and its tasks stay
                self._stop_criu(reason)

    def _stop_criu(self, reason: str) -> None:
        self.reason = reason
        # CRIU first stops forking, then what it forked goes (the tasks it was
        # restoring hold its socket open), then CRIU itself
        try:
            os.kill(self.pid, _signal.SIGSTOP)
        except ProcessLookupError:
            pass
        for _ in range(10):
            found = descendants(self.pid)
            if not found:
                break
            for pid in found:
                try:
                    os.kill(pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.kill(self.pid, _signal.SIGKILL)
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
        with self._lock:
            self._ended = True
        self._stop_event.set()
        self.join()


# --- the bounds of a dump ------------------------------------------------------------------

def tree_rss(pid: int, enough: int | None = None) -> int:
    """The resident memory of the tree rooted at PID, in bytes (about what a dump of it writes); with
    ENOUGH, the walk stops once the sum reaches it (for a yes/no question about a big tree)."""
    page = os.sysconf("SC_PAGE_SIZE")
    rss = 0
    for p in _walk(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
        if enough is not None and rss >= enough:
            break
    return rss


def dump_bound(pid: int, rss: int | None = None) -> float:
    """How long a dump of the tree rooted at PID may take before CRIU is stopped: a minute plus 20 s a GB
    of the tree's resident memory (what CRIU writes; RSS: tree_rss(PID), when known), as a restore is
    bounded by its pages."""
    if rss is None:
        rss = tree_rss(pid)
    return 60.0 + rss / 50e6


class OutsidePause:
    """Watches a container's freezer while CRIU dumps it, for a pause by someone else (`runc pause`).

    CRIU thaws the cgroup once it has seized the tasks, and works on them thawed; frozen again under
    it, they cannot run CRIU's parasite code and CRIU waits for ever. Frozen again for longer than
    GRACE (CRIU itself freezes a cgroup it found frozen again just before it lets the tasks go, and
    exits at once) is a pause by someone else: CRIU is stopped, and the pause is left in place.
    """

    GRACE = 2.0

    def __init__(self, is_frozen, image_dir: str | None = None):
        self.is_frozen = is_frozen
        # CRIU's images of this dump in IMAGE_DIR also tell that CRIU seized the tasks and thawed the
        # cgroup: its thawed spell may end (a quick pause) before the watchdog's first look
        self.image_dir = image_dir
        self.since = time.time() - 1.0  # files' times come from a coarser clock
        self.seen_thawed = False
        self.frozen_since: float | None = None
        self.paused = False  # someone else paused the container during the dump

    def _criu_wrote_images(self) -> bool:
        if self.image_dir is None:
            return False
        try:
            with os.scandir(self.image_dir) as it:
                return any(e.name.endswith(".img") and e.stat(follow_symlinks=False).st_mtime >= self.since
                           for e in it)
        except OSError:
            return False

    def __call__(self) -> str | None:
        try:
            frozen = self.is_frozen()
        except OSError:
            return None
        if not frozen:
            self.seen_thawed, self.frozen_since = True, None
            return None
        if not self.seen_thawed and not self._criu_wrote_images():
            return None  # still fastckpt's own freeze: CRIU has not seized the tasks yet
        self.seen_thawed = True
        now = time.monotonic()
        if self.frozen_since is None:
            self.frozen_since = now
        elif now - self.frozen_since > self.GRACE:
            self.paused = True
            return ("the container was paused (frozen) by someone else while CRIU dumped it, and CRIU cannot "
                    "go on with frozen tasks: the checkpoint was stopped; the container stays paused")
        return None


def descendants(pid: int) -> list[int]:
    """All live descendants of PID (children of each of its threads, recursively)."""
    return list(_walk(pid))[1:]


def _walk(pid: int):
    """PID, then its live descendants (children of each of its threads, recursively), as found."""
    yield pid
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
            yield from kids
            todo.extend(kids)


LIBEXEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libexec")
LIBEXEC_XTABLES = os.path.join(LIBEXEC, "xtables")


def criu_env() -> dict[str, str]:
    """CRIU's environment: ours, with fastckpt's `tar` (ext/tar_shim.c) and iptables-save/-restore
    (ext/xtables_shim.c) first on PATH.

    CRIU runs `tar` for the content of every tmpfs mount; the shim does CRIU's
    two tar commands itself for the small content of a container's tmpfs
    mounts, and hands anything else to the real tar. FASTCKPT_TAR_SHIM=0: off.
    CRIU asks the iptables tools for their version (-V) on every dump and restore
    of a network namespace, and dumps its legacy tables: the shim replays the
    real tools' own answers (cached by their identity; tables loaded: the real
    tool). FASTCKPT_XTABLES_SHIM=0: off.
    """
    env = dict(os.environ)
    # glibc's fatal messages ("free(): invalid pointer") go to CRIU's stderr, /dev/null, not to a tty
    env["LIBC_FATAL_STDERR_"] = "1"
    for switch, directory, tool in (("FASTCKPT_XTABLES_SHIM", LIBEXEC_XTABLES, "iptables-save"),
                                    ("FASTCKPT_TAR_SHIM", LIBEXEC, "tar")):
        if env.get(switch, "1") != "0" and os.access(os.path.join(directory, tool), os.X_OK):
            env["PATH"] = directory + os.pathsep + env.get("PATH", os.defpath)
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
                             # CRIU logs to its log file; its stdout would only say "Looks good.", its
                             # stderr what it prints before its log is open (or glibc's abort message
                             # when it crashes): fastckpt says what went wrong, from CRIU's log
                             file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                           (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
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
            from .signals import deferred

            with deferred():  # a Ctrl-C between its start and its record would leave it unknown to discard_spare()
                _local.spare = (binary, *_spawn(binary))


def discard_spare() -> None:
    spare = getattr(_local, "spare", None)
    if spare is not None:
        _, pid, ours = spare
        _local.spare = None
        try:  # killed before its socket closes: it would say "Can't recv request" on our stderr
            os.kill(pid, _signal.SIGKILL)
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


def call(opts, op: str):
    """OPTS.run(OP) (or its feature_check), libcriu's own prints held back: libcriu reports a broken
    connection with perror() on our stderr; fastckpt says what went wrong in its own line instead."""
    with _LibcriuStderr():
        if op == "feature_check":
            return opts.feature_check()
        return opts.run(op)


def run(opts, op: str, binary: str, *, log_path: str | None = None, timeout: float | None = None,
        log_limit: int = LOG_LIMIT, setup=None, on_stop=None, watch=None, fresh: bool = False):
    """Run OP ("dump", "restore", "check", ...) of OPTS in a ``criu swrk`` of its own (the spare one
    prespawn() started, or a new one).

    TIMEOUT: seconds, or a function that returns them (called on the watchdog's thread once CRIU runs);
    SETUP(pid), if given, runs once criu exists and before it gets its request;
    ON_STOP(), if given, when the watchdog stops CRIU: it kills all CRIU started; WATCH(), if given,
    at each look of the watchdog: a reason to stop CRIU now, or None.
    FRESH: a criu started now, not the spare: it inherits the descriptors opened since (the
    namespace files given to CRIU as inherit fds exist in CRIU only if they were there at its start).
    Returns (ret, errno, why CRIU was stopped or None) -- feature_check: its dict.
    """
    if fresh:
        discard_spare()
    pid, ours = _take_spare(binary) or _spawn(binary)
    try:
        # OPTS owns the socket from here: libcriu closes it after the request, OPTS if none is made
        opts.set_service_fd(ours.fileno())
    except BaseException:
        ours.close()
        os.kill(pid, _signal.SIGKILL)
        _reap(pid)
        raise
    ours.detach()
    dog = Watchdog(pid, log_path, timeout, log_limit, on_stop, watch)
    dog.start()
    try:
        if setup is not None:
            try:
                setup(pid)
            except BaseException:
                os.kill(pid, _signal.SIGKILL)
                raise
        result = call(opts, op)
    finally:
        opts.close_service_fd()  # the request was never made: the socket is closed here
        dog.stop()
        _reap(pid)
    if isinstance(result, dict):  # feature_check's answer
        return result
    return (*result, dog.reason)


class _LibcriuStderr:
    """Holds back libcriu's perror() lines (written on fd 2 by libcriu, in this process) during a
    libcriu call: fd 2 goes to a memory file meanwhile, and what else was written there (by other
    threads) is written to the real stderr afterwards. Calls from several threads share one
    redirection (the first one in makes it, the last one out undoes it)."""

    # libcriu's messages (lib/c/criu.c), each whole: perror()s ("MESSAGE: strerror") and two fprintf()s
    # without a newline; a line of the caller's own that merely starts alike ("Can't ...") gets through
    LIBCRIU = tuple(m + ": " for m in (
        "Can't allocate memory for criu RPC opts", "Can't allocate memory for criu opts",
        "Can't allocate memory for criu service setting", "Can't read request", "Can't receive response",
        "Failed unpacking response", "Can't send request", "Failed packing request",
        "Can't detach for a self-dump", "Can't write swrk pid", "Can't exec criu swrk", "Can't read swrk pid",
        "Can't create socket", "Can't connect to socket", "Unexpected response type", "Can't connect to criu",
        "Can't allocate memory for ns", "Can't allocate memory for ns_file",
        "Can't allocate memory for extra_opt", "Can't allocate memory for join_ns",
        "Can't allocate memory for join_ns_arr")) + ("The service address ", "ns parameter for join_ns is not")
    _lock = threading.Lock()
    _users = 0
    _saved = -1
    _mem = -1

    def __enter__(self):
        cls = _LibcriuStderr
        with cls._lock:
            if cls._users == 0:
                try:
                    mem = os.memfd_create("fastckpt-libcriu-stderr", os.MFD_CLOEXEC)
                except OSError:
                    return self  # nothing held back
                cls._saved = os.dup(2)
                os.dup2(mem, 2, inheritable=True)
                cls._mem = mem
            cls._users += 1
            self.counted = True
        return self

    def __exit__(self, *exc):
        cls = _LibcriuStderr
        if not getattr(self, "counted", False):
            return
        with cls._lock:
            cls._users -= 1
            if cls._users:
                return
            os.dup2(cls._saved, 2, inheritable=True)
            os.close(cls._saved)
            mem, cls._mem, cls._saved = cls._mem, -1, -1
        try:
            data = b""
            os.lseek(mem, 0, os.SEEK_SET)
            while True:
                chunk = os.read(mem, 1 << 16)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(mem)
        others = b"".join(l for l in data.splitlines(keepends=True)
                          if not l.decode("utf-8", "replace").startswith(self.LIBCRIU))
        if others:
            try:
                os.write(2, others)
            except OSError:
                pass


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return
