"""The one exception hierarchy of fastckpt.

Every error is an :class:`Error` (an :class:`OSError`), so ``except OSError``
catches them all and ``e.errno`` is always meaningful.  CRIU failures keep the
operation, the errno and the ``Error`` lines of CRIU's log with its path.
"""
from __future__ import annotations

import errno as _errno
import os
import re
from collections.abc import Sequence

# CRIU prints this on every run in a VM without CAP_SYS_RESOURCE; it never
# causes a failure, so it is never shown as one.
_HARMLESS = ("Can't setup RLIMIT_NOFILE for self",)
# "(00.064840)      1: Error (criu/mount-v2.c:634): mnt-v2: Can't stat ...": time, task, text
# (patterns, compiled by re at their first use: a command that reads no log pays nothing for them)
_LOG_LINE = r"^\(\s*[\d.]+\)\s+(?:\d+:\s+)?(.*)$"
_ERROR = r"^Error \([^)]*\):\s*(.*)$"


def _rebuild(cls, message, errno, attrs):
    e = cls.__new__(cls)
    Error.__init__(e, message, errno=errno)
    e.__dict__.update(attrs)
    return e


class Error(OSError):
    """Base class of fastckpt's errors."""

    default_errno = _errno.EIO

    def __init__(self, message: str, *, errno: int | None = None):
        super().__init__(errno if errno is not None else self.default_errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.errno, dict(self.__dict__)))


class UsageError(Error, ValueError):
    """An option or argument is invalid; nothing was touched."""

    default_errno = _errno.EINVAL


class ContainerNotFound(Error, LookupError):
    """No container of that id in the runc root."""

    default_errno = _errno.ENOENT


class ProcessNotFound(Error, LookupError):
    """No running process has the pid given to a process-tree checkpoint."""

    default_errno = _errno.ESRCH


class ContainerStateError(Error):
    """The container is not in a state that allows the operation."""

    default_errno = _errno.EBUSY


class ImageDirError(Error):
    """The image or work directory cannot be created or used."""


class DiskFull(ImageDirError):
    """The disk holding the images filled up; the partial images were removed."""

    default_errno = _errno.ENOSPC


class CriuNotFound(Error):
    default_errno = _errno.ENOENT



class PermissionDenied(Error, PermissionError):
    """fastckpt lacks the privileges CRIU needs (root, or CAP_CHECKPOINT_RESTORE + CAP_SYS_ADMIN)."""

    default_errno = _errno.EPERM


class Interrupted(Error):
    """A signal (Ctrl-C, SIGTERM) stopped fastckpt; the message says in which state it left things."""

    default_errno = 4  # EINTR


class FeatureUnavailable(Error):
    """The kernel (or CRIU) lacks a feature the request needs."""

    default_errno = _errno.EOPNOTSUPP


class ImageError(Error):
    """A CRIU image file (its statistics, say) is missing or cannot be decoded.

    ``path`` is the file.  A missing file has errno ENOENT, a damaged one
    (wrong magic, truncated, undecodable) EBADMSG.
    """

    default_errno = _errno.EBADMSG

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None):
        super().__init__(message, errno=errno)
        self.path = path


class DamagedImage(ImageError):
    """A checkpoint is damaged (a file missing, truncated or altered): refused before CRIU runs.

    ``path`` is the (first) damaged file, ``problems`` every (file name,
    what is wrong) pair found; errno is EBADMSG.
    """

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None,
                 problems: Sequence = ()):
        super().__init__(message, path=path, errno=errno)
        self.problems = list(problems)


class CriuError(Error):
    """CRIU ran and failed.

    ``op`` is the operation (dump, restore, ...), ``ret`` libcriu's return
    value, ``log_path`` CRIU's log and ``log_errors`` its error lines.
    """

    def __init__(self, op: str, ret: int, err: int, log_path: str | None = None,
                 log_errors: Sequence[str] = (), detail: str = ""):
        self.op = op
        self.ret = ret
        self.log_path = log_path
        self.log_errors = list(log_errors)
        if detail:
            why = detail
        elif self.log_errors:
            # CRIU logs the root cause first and its consequences after it.
            why = self.log_errors[0]
        elif ret == -_errno.ECONNREFUSED:
            why = "could not start or connect to criu"
        elif ret == -_errno.ECOMM:
            why = "the connection to criu broke (did it crash?)"
        elif ret in (-_errno.EINVAL, -_errno.EBADMSG):
            why = "criu does not understand the request (too old a CRIU?)"
        else:
            why = os.strerror(err) if err else f"libcriu returned {ret}"
        msg = f"criu {op} failed: {why}"
        if log_path:
            msg += f" (log: {log_path})"
        Error.__init__(self, msg, errno=err or _errno.EIO)

    @property
    def details(self) -> str:
        """The message followed by every error line of CRIU's log."""
        lines = [self.message] + [f"  {l}" for l in self.log_errors]
        return "\n".join(lines)


class CriuVersionError(CriuError):
    """CRIU failed, and it is older than fastckpt needs (4.1): the likely reason, said first.

    A CriuError: code that catches those catches this too.
    """


def libcriu_error(what: str, ret: int, value=None) -> Error:
    """The error for a libcriu setter that returned RET (< 0) for WHAT (VALUE): the one place
    where libcriu's return codes become fastckpt's errors (the binding raises what this gives)."""
    if ret == -_errno.ENOMEM:
        return Error(f"out of memory while giving libcriu {what}", errno=_errno.ENOMEM)
    shown = "" if value is None else f" {value!r}"
    return UsageError(f"libcriu refused {what}{shown} ({os.strerror(-ret) if ret < -1 else 'invalid value'})")


def log_errors(path: str | None, limit: int = 20) -> list:
    """The error lines of a CRIU log, without their prefixes, harmless ones left out.

    CRIU reports some root causes (a refused connection, say) as plain lines
    just before its first ``Error`` line: such "Can't ..." lines come first.
    """
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 20)))  # failures are at the end
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    out: list = []
    recent: list = []  # plain lines seen since the last Error line
    log_line, error = re.compile(_LOG_LINE), re.compile(_ERROR)
    for line in data.splitlines():
        m = log_line.match(line)
        text = m.group(1) if m else line.strip()
        e = error.match(text)
        if not e:
            recent = (recent + [text])[-10:]
            continue
        msg = e.group(1).strip()
        if not msg or any(h in msg for h in _HARMLESS):
            continue
        if not out:
            out.extend(r for r in recent if r.startswith(("Can't", "Unable", "Cannot")))
        out.append(msg)
        recent = []
    return out[:limit]
