"""One fastckpt operation per container (or process tree) at a time.

A lock file per (runc root, container id) -- or per pid, or per image
directory for a process-tree restore -- held with flock
for the length of the operation; a second operation on the same target is
refused at once with a "busy" error, operations on different targets run in
parallel.  The lock dies with its process, so a crash leaves none behind.
"""
from __future__ import annotations

import errno
import fcntl
import zlib
import os

from .errors import ContainerStateError

LOCK_DIR = "/run/fastckpt/locks"  # root's; another user's are in its own runtime directory


def lock_dir() -> str:
    if os.geteuid() == 0:
        return LOCK_DIR
    return os.path.join(user_run_dir(), "locks")


def user_run_dir() -> str:
    """A directory of this (non-root) user's own for fastckpt's run-time files."""
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/fastckpt-{os.geteuid()}"
    path = os.path.join(base, "fastckpt") if os.environ.get("XDG_RUNTIME_DIR") else base
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} is not private to uid {os.geteuid()}")
    return path


class Lock:
    __slots__ = ("fd", "what", "path")

    def __init__(self, key: str, what: str):
        self.what = what
        directory = lock_dir()
        self.path = os.path.join(directory, key + ".lock")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(self.fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ContainerStateError(
                        f"{what} is busy: another fastckpt checkpoint or restore is working on it") from None
                raise
            # the holder before us removes the file when it is done: make sure
            # the file we locked is still the one at the path
            try:
                same = _same(self.fd, self.path)
            except FileNotFoundError:
                same = False
            if same:
                return
            os.close(self.fd)

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.unlink(self.path)  # while still held: no lock files pile up
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same(fd: int, path: str) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _digest(path: str) -> str:
    return f"{zlib.crc32(os.fsencode(os.path.realpath(path))):08x}"  # hashlib would load OpenSSL: ~2 ms


def container(root: str, container_id: str) -> Lock:
    return Lock(f"ct-{_digest(root)}-{container_id}", f"container {container_id!r}")


def process(pid: int) -> Lock:
    return Lock(f"pid-{pid}", f"process {pid}")


def process_images(image_path: str) -> Lock:
    """A process-tree restore: the tree has no pid before it is restored (and comes back with the
    pids its images hold), so its images are what one restore at a time works on."""
    return Lock(f"tree-{_digest(image_path)}", f"the process tree in {image_path}")
