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
size with fastckpt's own credentials (those CRIU gets).
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from .errors import Error, UsageError

F_SETPIPE_SZ = 1031
PIPE_MAX_SIZE_FILE = "/proc/sys/fs/pipe-max-size"
_KERNEL_PIPE_BUFFER = 40  # sizeof(struct pipe_buffer) on 64-bit kernels


def criu_lazy_pipe_bytes() -> int:
    """The pipe size CRIU's lazy page server asks for (PIPE_MAX_SIZE pages)."""
    page = os.sysconf("SC_PAGE_SIZE")
    return (8 * page // _KERNEL_PIPE_BUFFER) * page


def lazy_pages_problem() -> str | None:
    """Why a lazy dump would fail here (CRIU's page server cannot size its pipe), or None."""
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


def require_lazy_pages(features: dict[str, bool]) -> None:
    if not features.get("lazy_pages"):
        raise Error("--lazy-pages needs userfaultfd (non-cooperative), which this kernel lacks: "
                    "nothing was checkpointed", errno=errno.EOPNOTSUPP)
    problem = lazy_pages_problem()
    if problem:
        raise Error(f"--lazy-pages cannot work on this host: {problem}; nothing was checkpointed",
                    errno=errno.EOPNOTSUPP)


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
