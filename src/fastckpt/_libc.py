"""The few system calls Python's os module lacks, and the cgroup warm-up thread (ext/warm.h), through cffi.

The cffi module is compiled at install time (ext/_libc_build.py, API mode),
so loading it parses no C at run time.
"""
from __future__ import annotations

import os

MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000

def _lib():
    from ._libc_cffi import ffi, lib

    return ffi, lib


def _check(ret: int, what: str, path: str = None) -> None:
    if ret != 0:
        ffi, _ = _lib()
        e = ffi.errno
        raise OSError(e, f"{what}: {os.strerror(e)}", path)


def mount(source: str, target: str, fstype: str = None, flags: int = 0) -> None:
    ffi, lib = _lib()
    _check(lib.mount(os.fsencode(source) if source else ffi.NULL, os.fsencode(target),
                     os.fsencode(fstype) if fstype else ffi.NULL, flags,
                     ffi.NULL), "mount", target)


def overlay_detached(lowerdir: str) -> int:
    """An fd of the root of a read-only overlayfs of LOWERDIR (overlayfs's lowerdir= value, top layer
    first), mounted nowhere: made with fsopen()/fsmount() and never attached, it is seen by no mount
    namespace and goes when the fd is closed."""
    ffi, lib = _lib()
    fd = lib.fastckpt_overlay_detached(os.fsencode(lowerdir))
    if fd < 0:
        e = ffi.errno
        raise OSError(e, f"overlayfs: {os.strerror(e)}")
    return fd


def bind_mount(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_PRIVATE | MS_REC)


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _, lib = _lib()
    _check(lib.umount2(os.fsencode(target), flags), "umount", target)


def setns(fd: int, nstype: int) -> None:
    _, lib = _lib()
    _check(lib.setns(fd, nstype), "setns")


def set_child_subreaper(on: bool = True) -> None:
    _, lib = _lib()
    _check(lib.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def warm_start(procs_path, period_us: int = 3000, limit_ms: int = 600_000, user: bool = True) -> int:
    """Keep cgroup migrations fast: rewrite "0" into PROCS_PATH every PERIOD_US (ext/warm.h).

    PROCS_PATH is the cgroup.procs of a cgroup this process is in. Calls nest:
    each one (USER true) needs one warm_stop(), whatever it returned. USER
    false primes it ahead of the operation instead: not counted, the thread
    ends LIMIT_MS from now at the latest, or with the last warm_stop() of the
    users that come meanwhile. Returns 0, or -errno when no thread could be started.
    """
    _, lib = _lib()
    return lib.fc_warm_run(os.fsencode(procs_path), period_us, limit_ms, 1 if user else 0)


def warm_stop() -> None:
    """One warm_start() done; the last one stops the thread (waits for it, at most one write)."""
    _, lib = _lib()
    lib.fc_warm_stop()


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A duplicate of descriptor FD of the process behind PIDFD (Linux >= 5.6), close-on-exec."""
    ffi, lib = _lib()
    ret = lib.fastckpt_pidfd_getfd(pidfd, fd)
    if ret < 0:
        e = ffi.errno
        raise OSError(e, f"pidfd_getfd: {os.strerror(e)}")
    return ret


def fs_type(path: str) -> int:
    """statfs(2)'s f_type of PATH: the magic number of the filesystem mounted there."""
    ffi, lib = _lib()
    ret = lib.fastckpt_fs_type(os.fsencode(path))
    if ret == -1:
        e = ffi.errno
        raise OSError(e, os.strerror(e), path)
    return ret & 0xFFFFFFFF


def bpf(cmd: int, attr: bytearray) -> int:
    """bpf(2) with ATTR (a union bpf_attr, read back into ATTR); the result, or OSError."""
    ffi, lib = _lib()
    buf = ffi.from_buffer(attr)
    ret = lib.fastckpt_bpf(cmd, buf, len(attr))
    if ret < 0:
        e = ffi.errno
        raise OSError(e, f"bpf: {os.strerror(e)}")
    return ret


def buffer(data, copy: bool = True):
    """(keep-alive object, address) of a C buffer: a copy of DATA, or DATA's own memory (a bytearray)."""
    ffi, _ = _lib()
    p = ffi.new("char[]", bytes(data)) if copy else ffi.from_buffer(data)
    return p, int(ffi.cast("uintptr_t", p))
