"""What iterative (pre-dump, parent images) and lazy migration need from the host.

Checked before anything is frozen, so that a checkpoint that cannot work
fails with one line naming the missing piece and leaves the container as it was.

Lazy pages on this kind of host: CRIU's lazy page server (the dumping side)
sets up its tee pipe with ``F_SETPIPE_SZ`` to PIPE_MAX_SIZE pages (~3.2 MiB:
8 pages of pipe buffers at 40 bytes each, criu/include/page-pipe.h). Above
/proc/sys/fs/pipe-max-size (1 MiB by default) only CAP_SYS_RESOURCE may do
that; without it ``pipe_read_dest_init()`` fails, CRIU 4.2.1 ignores the
failure, and its first page request splices into fd -1: "page-pipe: splice:
-1: Bad file descriptor". ``lazy_pages_problem()`` tries exactly that pipe
size with fastckpt's own credentials (those CRIU gets), and
``probe_lazy_migration()`` migrates a tiny process lazily for real (once per
boot, CRIU binary, pipe limit and capability set; kept in /run/fastckpt).
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from .atomicfile import write_atomic
from .errors import Error, UsageError

F_SETPIPE_SZ = 1031
PIPE_MAX_SIZE_FILE = "/proc/sys/fs/pipe-max-size"
_KERNEL_PIPE_BUFFER = 40  # sizeof(struct pipe_buffer) on 64-bit kernels


def criu_lazy_pipe_bytes() -> int:
    """The pipe size CRIU's lazy page server asks for (PIPE_MAX_SIZE pages)."""
    page = os.sysconf("SC_PAGE_SIZE")
    return (8 * page // _KERNEL_PIPE_BUFFER) * page


def lazy_pages_problem(criu: str | None = None) -> str | None:
    """Why a lazy migration would fail here, or None. With CRIU (the binary), a real lazy migration of a
    tiny process decides (cached; a CRIU that copes with a smaller pipe passes it), and a pipe CRIU's page
    server cannot size is named as the reason; without, only the pipe is checked."""
    pipe = _pipe_problem()
    if criu is None:
        return pipe
    real = probe_lazy_migration(criu)
    if real is None:
        return None
    return pipe or real


def _pipe_problem() -> str | None:
    """Why CRIU's lazy page server cannot size its pipe here, or None."""
    want = criu_lazy_pipe_bytes()
    r, w = os.pipe()
    try:
        fcntl.fcntl(r, F_SETPIPE_SZ, want)
        return None
    except OSError as e:
        try:
            with open(PIPE_MAX_SIZE_FILE) as f:
                limit = f.read().strip()
        except OSError:
            limit = "?"
        if e.errno == errno.EPERM:
            return (f"CRIU's lazy page server needs a {want >> 10} KiB pipe, above {PIPE_MAX_SIZE_FILE} "
                    f"({limit}) without CAP_SYS_RESOURCE, which fastckpt (and so CRIU) lacks here: CRIU would "
                    "fail serving the first page ('page-pipe: splice: Bad file descriptor')")
        return f"CRIU's lazy page server cannot size its pipe to {want >> 10} KiB: {e.strerror}"
    finally:
        os.close(r)
        os.close(w)


def require_lazy_pages(features: dict[str, bool], criu: str | None = None) -> None:
    if not features.get("lazy_pages"):
        raise Error("--lazy-pages needs userfaultfd (non-cooperative), which this kernel lacks: "
                    "nothing was checkpointed", errno=errno.EOPNOTSUPP)
    problem = lazy_pages_problem(criu)
    if problem:
        raise Error(f"--lazy-pages cannot work on this host: {problem}; nothing was checkpointed",
                    errno=errno.EOPNOTSUPP)


# --- a real lazy migration of a tiny process, once per boot (and CRIU, and limits) -------------------

PROBE_CACHE = "/run/fastckpt/lazy-pages.probe"
PROBE_TIMEOUT = 15.0


def _probe_key(criu: str) -> str:
    """What the probe's answer depends on: the boot, the CRIU binary, the pipe limit, our capabilities."""
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return "?"
    caps = next((l.split()[1] for l in read("/proc/self/status").splitlines() if l.startswith("CapEff:")), "?")
    st = os.stat(criu)
    return (f"{read('/proc/sys/kernel/random/boot_id')} {criu} {st.st_mtime_ns} {st.st_size} "
            f"{read(PIPE_MAX_SIZE_FILE)} {caps}")


def probe_lazy_migration(criu: str) -> str | None:
    """None if CRIU migrates a tiny process lazily here (dump with a lazy page server, `criu lazy-pages`,
    `criu restore --lazy-pages`), else CRIU's first error; the answer is kept in PROBE_CACHE for this
    boot, CRIU binary, pipe limit and set of capabilities."""
    import json

    try:
        key = _probe_key(criu)
    except OSError as e:
        return f"cannot probe lazy pages: {e.strerror}"
    try:
        with open(PROBE_CACHE) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return cached.get("problem")
    except (OSError, ValueError, AttributeError):
        pass
    problem = _run_lazy_probe(criu)
    try:
        os.makedirs(os.path.dirname(PROBE_CACHE), mode=0o700, exist_ok=True)
        write_atomic(PROBE_CACHE, json.dumps({"key": key, "problem": problem}).encode())
    except OSError:
        pass
    return problem


def _run_lazy_probe(criu: str) -> str | None:
    """One lazy migration of `sleep` (the init of a pid namespace of its own, so that its restore does
    not collide with it) over a loopback port; everything it started is killed afterwards."""
    import select
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile
    import time

    from .errors import log_errors

    tmp = tempfile.mkdtemp(prefix="fastckpt-lazyprobe-")
    procs: list = []
    restored = None
    null = open(os.devnull, "r+b")

    def spawn(args, **kw):
        p = subprocess.Popen(args, stdin=null, stdout=null, stderr=null, start_new_session=True, cwd=tmp, **kw)
        procs.append(p)
        return p

    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        tree = spawn(["unshare", "--pid", "--fork", "--kill-child", "setsid", "sleep", "1000"])
        child = None
        deadline = time.monotonic() + 5
        while child is None and time.monotonic() < deadline:
            try:
                with open(f"/proc/{tree.pid}/task/{tree.pid}/children") as f:
                    kids = f.read().split()
                if kids and os.readlink(f"/proc/{kids[0]}/exe").endswith("/sleep"):
                    child = kids[0]
            except OSError:
                pass
            time.sleep(0.005)
        if child is None:
            return "cannot probe lazy pages: the probe's process did not start"
        r, w = os.pipe()
        try:
            dump = spawn([criu, "dump", "-t", child, "-D", tmp, "-o", "dump.log", "--lazy-pages", "--address",
                          "127.0.0.1", "--port", port, "--status-fd", str(w)], pass_fds=(w,))
            os.close(w)
            w = -1
            ready, _, _ = select.select([r], [], [], PROBE_TIMEOUT)
            if not ready or os.read(r, 1) != b"\0":
                return "lazy dump failed: " + "; ".join(log_errors(os.path.join(tmp, "dump.log"))[:1] or ["no word"])
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        daemon = spawn([criu, "lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", port, "-D", tmp,
                        "-o", "lazy.log"])
        deadline = time.monotonic() + 5  # the restore connects to the daemon's socket: wait for it
        while not os.path.exists(os.path.join(tmp, "lazy-pages.socket")) and daemon.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        rst = subprocess.run([criu, "restore", "-D", tmp, "-o", "restore.log", "--lazy-pages", "-d", "--pidfile",
                              "pid"], stdin=null, stdout=null, stderr=null, cwd=tmp, timeout=PROBE_TIMEOUT)
        try:
            with open(os.path.join(tmp, "pid")) as f:
                restored = int(f.read())
        except (OSError, ValueError):
            pass
        try:  # without a restore nobody asks the dump for its pages: it is not waited for long
            rc = dump.wait(PROBE_TIMEOUT if rst.returncode == 0 else 2)
        except subprocess.TimeoutExpired:
            rc = None
        if rc == 0 and restored:
            return None
        errors = ((log_errors(os.path.join(tmp, "dump.log")) if rc else [])
                  or log_errors(os.path.join(tmp, "restore.log")) or log_errors(os.path.join(tmp, "lazy.log")))
        return "a lazy migration fails here: " + (errors[0] if errors else "CRIU did not finish it")
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot probe lazy pages: {e}"
    finally:
        if restored:
            try:
                os.kill(restored, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        null.close()
        shutil.rmtree(tmp, ignore_errors=True)


def require_mem_track(features: dict[str, bool], flag: str) -> None:
    if not features.get("mem_track"):
        raise Error(f"{flag} needs the kernel's dirty memory tracking (soft-dirty bits, CONFIG_MEM_SOFT_DIRTY), "
                    "which this kernel lacks: nothing was checkpointed", errno=errno.EOPNOTSUPP)


def check_parent_path(image_path: str, parent_path: str) -> str:
    """runc's check of --parent-path: relative, and a directory relative to the image path."""
    if os.path.isabs(parent_path):
        raise UsageError("--parent-path must be relative (to the image path)")
    real = os.path.normpath(os.path.join(image_path, parent_path))  # lexically, as Go's filepath.Join
    try:
        is_dir = stat.S_ISDIR(os.stat(real).st_mode)
    except OSError as e:
        raise UsageError(f"invalid --parent-path: stat {real}: {e.strerror}") from None
    if not is_dir:
        raise UsageError(f"invalid --parent-path: {real}: {os.strerror(errno.ENOTDIR)}")
    return real


def check_status_fd(fd: int) -> None:
    """runc's check of --status-fd: an open descriptor, open for writing."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as e:
        raise UsageError(f"invalid --status-fd argument {fd}: {e.strerror}") from None
    if flags & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
        raise UsageError(f"invalid --status-fd argument {fd}: not writable")


def write_status(fd: int) -> None:
    """The lazy page server is ready: a \\0 to --status-fd, which is then closed (as runc does)."""
    try:
        os.write(fd, b"\0")
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


# --- container-specific CRIU configuration (runc's org.criu.config) ---------------------

CRIU_CONFIG_ANNOTATION = "org.criu.config"
RUNC_CRIU_CONFIG = "/etc/criu/runc.conf"


def annotations(labels) -> dict[str, str]:
    """runc's annotations from a container config's labels ("key=value"; "bundle=..." is runc's own)."""
    out = {}
    for label in labels or []:
        key, sep, value = label.partition("=")
        if sep and key != "bundle":
            out[key] = value
    return out


def criu_config_file(labels) -> str | None:
    """The CRIU configuration file runc gives CRIU: the container's org.criu.config annotation (set but
    empty: none), else runc's default /etc/criu/runc.conf. CRIU ignores a file that does not exist."""
    ann = annotations(labels)
    if CRIU_CONFIG_ANNOTATION in ann:
        return ann[CRIU_CONFIG_ANNOTATION] or None
    return RUNC_CRIU_CONFIG


def criu_own_config_files(env=None) -> list[str]:
    """The configuration files CRIU reads by itself, whoever runs it (criu/config.c; its environment is
    ENV, default ours: criu_proc.criu_env()): /etc/criu/default.conf, $HOME/.criu/default.conf and
    $CRIU_CONFIG_FILE, those that exist."""
    env = os.environ if env is None else env
    paths = ["/etc/criu/default.conf"]
    if env.get("HOME"):
        paths.append(os.path.join(env["HOME"], ".criu", "default.conf"))
    if env.get("CRIU_CONFIG_FILE"):
        paths.append(env["CRIU_CONFIG_FILE"])
    return [p for p in paths if os.path.exists(p)]


def lazy_config_file(work_path: str, base: str | None, page_server=None) -> str:
    """A CRIU configuration file asking for lazy pages (libcriu has no setter for it): the container's
    own configuration file's lines (if any), then `lazy-pages`, and the address and port the lazy page
    server listens on (CRIU reads a page server given over RPC before the file, as one to connect to).
    Written in the work directory."""
    lines = ""
    if base:
        try:
            with open(base) as f:
                lines = f.read()
        except OSError:
            lines = ""
    path = os.path.join(work_path, ".fastckpt-criu-lazy.conf")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(lines + ("\n" if lines and not lines.endswith("\n") else "") + "lazy-pages\n")
        if page_server is not None:
            f.write(f"address={page_server.address}\nport={page_server.port}\n")
    return path
