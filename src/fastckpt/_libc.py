"""The few system calls Python's os module lacks, through cffi (ABI mode).

Loaded on first use only: the checkpoint path does not need it.
"""
from __future__ import annotations

import os
from functools import lru_cache

MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000

_CDEF = """
int mount(const char *source, const char *target, const char *filesystemtype,
          unsigned long mountflags, const void *data);
int umount2(const char *target, int flags);
int setns(int fd, int nstype);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
"""


@lru_cache(maxsize=None)
def _lib():
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    return ffi, ffi.dlopen(None)


def _check(ret: int, what: str, path: str = None) -> None:
    if ret != 0:
        ffi, _ = _lib()
        e = ffi.errno
        raise OSError(e, f"{what}: {os.strerror(e)}", path)


def mount(source: str, target: str, fstype: str = None, flags: int = 0) -> None:
    ffi, lib = _lib()
    _check(lib.mount(source.encode() if source else ffi.NULL, target.encode(),
                     fstype.encode() if fstype else ffi.NULL, flags, ffi.NULL), "mount", target)


def bind_mount(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_PRIVATE | MS_REC)


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _, lib = _lib()
    _check(lib.umount2(target.encode(), flags), "umount", target)


def setns(fd: int, nstype: int) -> None:
    _, lib = _lib()
    _check(lib.setns(fd, nstype), "setns")


def set_child_subreaper(on: bool = True) -> None:
    _, lib = _lib()
    _check(lib.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
