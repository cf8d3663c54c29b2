"""Write a file whole or not at all: a temporary file beside it, renamed over it.

A reader (runc, podman, a second fastckpt, CRIU) sees the old contents or the new ones, never a part;
a failure (a full disk, an interruption) leaves the old file as it was and no temporary file behind.
"""

from __future__ import annotations

import os


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace PATH's contents with DATA atomically.

    MODE is the new file's permissions as os.open takes them (the umask applies: 0o666 gives what
    open(path, "w") would); they are the new file's whatever the temporary file's name held before.
    A link at PATH is replaced, not followed. Raises OSError with PATH untouched.
    """
    head, base = os.path.split(path)
    tmp = os.path.join(head, f".{base}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)  # a crashed writer's: O_EXCL below gives the new file MODE, not the old one's
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
