"""A failed CRIU operation told as the error that says why: disk full, a pid the restored tree needs
taken (and by whom), a session leader outside the pid namespace, a CRIU too old."""
from __future__ import annotations

import errno
import os
import re

from . import criu
from .constants import MIN_CRIU_VERSION
from .errors import CriuError, CriuVersionError, DiskFull, Error, log_errors


def raise_criu_failure(op: str, ret: int, err: int, log_path: str | None,
                       image_path: str | None = None, disk_full: bool = False) -> None:
    lines = log_errors(log_path)
    detail = ""
    # CRIU's message may be cut short ("No space lef"), or missing when its log
    # had no room either: the free space measured after the failure decides then
    if image_path and (disk_full or err == errno.ENOSPC or any("No space le" in l for l in lines)):
        raise DiskFull(f"criu {op} failed: no space left on the disk holding {image_path}; the partial "
                       f"images were removed ({free_bytes(image_path) >> 20} MiB free now)"
                       + (f" (log: {log_path})" if log_path else ""), errno=errno.ENOSPC)
    taken = next((m for m in map(re.compile(_FORK_EXISTS).search, lines) if m), None)
    if taken:
        detail = f"{taken.group(0)}: pid {taken.group(1)}, which the restored tree needs, {_pid_holder(int(taken.group(1)))}"
    elif any("session leader" in l and "outside of its pid namespace" in l for l in lines):
        # CRIU refuses this whatever the options, so say what does help
        detail = (f"{lines[0]}: the tree's session leader is in an outer pid namespace; start the tree "
                  "with setsid (--shell-job does not help here)")
    elif not lines:
        try:
            v = criu.criu_version()
        except Error:
            v = None
        if v is not None and v < MIN_CRIU_VERSION:
            raise CriuVersionError(op, ret, err, log_path, lines,
                                   f"CRIU {'.'.join(map(str, v))} is too old (need >= 4.1)")
    raise CriuError(op, ret, err, log_path, lines, detail)


_FORK_EXISTS = r"Can't fork for (\d+): File exists"  # compiled at its first use, after a failure


def _pid_holder(pid: int) -> str:
    """Who holds PID, as said after "pid N, which the restored tree needs, ..."."""
    st = _stat(pid)
    if st is None:  # no process of that pid; its id may still be another's process group or session
        for other in filter(str.isdigit, os.listdir("/proc")):
            ost = _stat(int(other))
            if ost is not None and str(pid) in (ost[3], ost[4]):
                comm, state, ppid = ost[0], ost[1], ost[2]
                what = "session" if ost[4] == str(pid) else "process group"
                if state in ("Z", "X"):
                    return (f"is the {what} of {comm!r} (pid {other}), a dead process (zombie) that its parent "
                            f"(pid {ppid}) has not reaped yet: try again once it has")
                return f"is the {what} of {comm!r} (pid {other}, parent pid {ppid}), a running process"
        return "was taken and is free now: try again"
    comm, state, ppid = st[:3]
    if state in ("Z", "X"):
        return (f"is held by {comm!r}, a dead process (zombie) that its parent (pid {ppid}) has not reaped yet: "
                "try again once it has")
    return f"is taken by {comm!r} (parent pid {ppid}), a running process"


def _stat(pid: int) -> tuple[str, ...] | None:
    """PID's (comm, state, ppid, pgrp, session) from /proc, or None."""
    from .proctree import stat

    st = stat(pid)
    if st is None:
        return None
    comm, fields = st
    return (comm.decode(errors="replace"), *(f.decode(errors="replace") for f in fields[:4]))


def free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1


def disk_full(*paths: str) -> bool:
    """Less room left than one of CRIU's page pipes holds: a dump that failed here ran out of disk."""
    return any(0 <= free_bytes(p) < (4 << 20) for p in paths)
