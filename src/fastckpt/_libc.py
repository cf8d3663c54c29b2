"""The few system calls Python's os module lacks, through cffi.

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


def fs_type(path: str) -> int:
    """statfs(2)'s f_type of PATH: the magic number of the filesystem mounted there."""
    ffi, lib = _lib()
    ret = lib.fastckpt_fs_type(path.encode())
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
