"""Device access of a container on cgroup v2: an eBPF program attached to its cgroup.

cgroup v2 has no devices controller; runc confines a container's device
access with a BPF_PROG_TYPE_CGROUP_DEVICE program generated from the config's
device rules and attached to the container's cgroup (BPF_F_ALLOW_MULTI).
This module does the same for a restored container, with runc's semantics:

- the rules are first reduced as cgroup v1 would apply them in order (an
  ``a`` rule resets to allow-all or deny-all; the other rules are exceptions
  merged per device, a rule of the opposite action subtracts permissions, and
  punching a hole into a wildcard exception is refused);
- the program then checks each exception (type, access, major, minor; a
  wildcard or ``rwm`` skips its check) and returns the default otherwise.
"""
from __future__ import annotations

import errno
import os
import struct
import sys

from .errors import Error

# bpf(2) commands, program and attach types, flags (linux/bpf.h)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

# struct bpf_cgroup_dev_ctx: access_type = access << 16 | type
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}

# instruction codes used (class | op | source)
_LDXW = 0x61      # BPF_LDX | BPF_MEM | BPF_W
_AND32_K = 0x54   # BPF_ALU | BPF_AND | BPF_K
_RSH32_K = 0x74   # BPF_ALU | BPF_RSH | BPF_K
_MOV32_K = 0xB4   # BPF_ALU | BPF_MOV | BPF_K
_MOV32_X = 0xBC   # BPF_ALU | BPF_MOV | BPF_X
_JNE_K = 0x55     # BPF_JMP | BPF_JNE | BPF_K
_JNE_X = 0x5D     # BPF_JMP | BPF_JNE | BPF_X
_EXIT = 0x95      # BPF_JMP | BPF_EXIT

LICENSE = b"Apache\0"  # what runc declares for the same program
PROG_NAME = b"fastckpt_dev"


def _kind(rule: dict) -> str:
    t = rule.get("type", "a")
    return chr(t) if isinstance(t, int) else str(t)


class Rules:
    """The device rules reduced as cgroup v1 applies them: a default and exceptions."""

    def __init__(self, rules: list[dict] | None):
        self.default_allow = False
        self.exceptions: dict[tuple[str, int, int], set[str]] = {}
        for r in rules or []:
            self.apply(r)

    def apply(self, rule: dict) -> None:
        kind = _kind(rule)
        allow = bool(rule.get("allow"))
        if kind == "a":
            self.default_allow, self.exceptions = allow, {}
            return
        if kind not in _TYPES:
            raise Error(f"device rule of type {kind!r} cannot be applied to a cgroup")
        perms = set(rule.get("permissions") or "")
        if not perms or perms - set(_ACCESS):
            raise Error(f"device rule {kind} {rule.get('major')}:{rule.get('minor')} has invalid permissions "
                        f"{rule.get('permissions')!r}")
        key = (kind, int(rule.get("major", -1)), int(rule.get("minor", -1)))
        if allow != self.default_allow:
            self.exceptions[key] = self.exceptions.get(key, set()) | perms
            return
        # the default's own action: take permissions away from the exact exception; a wildcard
        # exception it only partly matches would be left as it is by cgroup v1 (refused, as runc does)
        for partial in ((kind, -1, key[2]), (kind, key[1], -1), (kind, -1, -1)):
            if partial != key and self.exceptions.get(partial, set()) & perms:
                raise Error(f"device rule {_show(key, perms)} cannot punch a hole in the wildcard rule "
                            f"{_show(partial, self.exceptions[partial])}")
        left = self.exceptions.get(key, set()) - perms
        if left:
            self.exceptions[key] = left
        else:
            self.exceptions.pop(key, None)

    def allows(self, kind: str, major: int, minor: int, access: str) -> bool:
        """What the program answers (for tests and for reading)."""
        for (k, ma, mi), perms in self.ordered():
            if k == kind and set(access) <= perms and ma in (-1, major) and mi in (-1, minor):
                return not self.default_allow
        return self.default_allow

    def ordered(self) -> list[tuple[tuple[str, int, int], set[str]]]:
        return sorted(self.exceptions.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0]))


def _show(key: tuple[str, int, int], perms: set[str]) -> str:
    kind, ma, mi = key
    return f"{kind} {'*' if ma < 0 else ma}:{'*' if mi < 0 else mi} {''.join(c for c in 'rwm' if c in perms)}"


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn in the host's byte order (its register nibbles follow the bitfield order)."""
    if sys.byteorder == "little":
        return struct.pack("<BBhi", code, dst | src << 4, off, imm)
    return struct.pack(">BBhi", code, dst << 4 | src, off, imm)


def program(rules: list[dict] | None) -> bytes:
    """The eBPF instructions (struct bpf_insn) for these device rules."""
    r = Rules(rules)
    # r2 = type, r3 = access, r4 = major, r5 = minor
    out = [_insn(_LDXW, 2, 1, 0), _insn(_AND32_K, 2, imm=0xFFFF),
           _insn(_LDXW, 3, 1, 0), _insn(_RSH32_K, 3, imm=16),
           _insn(_LDXW, 4, 1, 4), _insn(_LDXW, 5, 1, 8)]
    verdict = 0 if r.default_allow else 1
    for (kind, major, minor), perms in r.ordered():
        access = 0
        for p in perms:
            access |= _ACCESS[p]
        # a block per exception; each failed check jumps past the block's end (None: filled below)
        block: list[tuple[int, int, int, int | None, int]] = [(_JNE_K, 2, 0, None, _TYPES[kind])]
        if access != ACC_MKNOD | ACC_READ | ACC_WRITE:
            # r1 = access & allowed; not allowed by this rule when r1 != access
            block += [(_MOV32_X, 1, 3, 0, 0), (_AND32_K, 1, 0, 0, access), (_JNE_X, 1, 3, None, 0)]
        if major >= 0:
            block.append((_JNE_K, 4, 0, None, major))
        if minor >= 0:
            block.append((_JNE_K, 5, 0, None, minor))
        block += [(_MOV32_K, 0, 0, 0, verdict), (_EXIT, 0, 0, 0, 0)]
        n = len(block)
        out += [_insn(code, dst, src, n - i - 1 if off is None else off, imm)
                for i, (code, dst, src, off, imm) in enumerate(block)]
    out += [_insn(_MOV32_K, 0, imm=1 if r.default_allow else 0), _insn(_EXIT)]
    return b"".join(out)


# --- loading and attaching ------------------------------------------------------------

def _bpf(cmd: int, attr: bytearray) -> int:
    from . import _libc

    return _libc.bpf(cmd, attr)


def load(insns: bytes) -> int:
    """BPF_PROG_LOAD a cgroup device program; its fd."""
    from . import _libc

    code, code_addr = _libc.buffer(insns)
    lic, lic_addr = _libc.buffer(LICENSE)
    attr = bytearray(128)
    struct.pack_into("=IIQQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8, code_addr, lic_addr)
    attr[48:48 + len(PROG_NAME)] = PROG_NAME
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        if e.errno != errno.EPERM:
            raise
        # kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (runc lifts it too)
        import resource

        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return _bpf(BPF_PROG_LOAD, attr)
    finally:
        del code, lic


def attached(cgroup_fd: int) -> list[int]:
    """The ids of the device programs attached to a cgroup."""
    from . import _libc

    ids = bytearray(4 * 64)
    ids_buf, ids_addr = _libc.buffer(ids, copy=False)
    attr = bytearray(32)
    struct.pack_into("=IIIIQI", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0, ids_addr, 64)
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("=I", attr, 24)[0]
    del ids_buf
    return list(struct.unpack_from(f"={count}I", ids))


def tags(cgroup_dir: str) -> list[str]:
    """The tags (hashes of the instructions, hex) of the device programs attached to a cgroup."""
    from . import _libc

    dfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = []
        for pid in attached(dfd):
            fd = _prog_fd(pid)
            try:
                info = bytearray(256)
                keep, addr = _libc.buffer(info, copy=False)
                attr = bytearray(16)
                struct.pack_into("=IIQ", attr, 0, fd, len(info), addr)
                _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
                del keep
                out.append(bytes(info[8:16]).hex())
            finally:
                os.close(fd)
        return out
    finally:
        os.close(dfd)


def _prog_fd(prog_id: int) -> int:
    attr = bytearray(12)
    struct.pack_into("=I", attr, 0, prog_id)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr)


def attach(cgroup_dir: str, rules: list[dict] | None) -> None:
    """Confine the devices of the cgroup at CGROUP_DIR to RULES, as runc does on cgroup v2:
    the new program is attached (BPF_F_ALLOW_MULTI), then the ones found before are detached."""
    insns = program(rules)
    dfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    prog = -1
    try:
        try:
            old = attached(dfd)
            prog = load(insns)
            attr = bytearray(20)
            struct.pack_into("=IIII", attr, 0, dfd, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            _bpf(BPF_PROG_ATTACH, attr)
            for pid in old:
                _detach(dfd, pid)
        except OSError as e:
            raise Error(f"cannot confine the devices of cgroup {cgroup_dir} (BPF device program): "
                        f"{os.strerror(e.errno)}", errno=e.errno) from e
    finally:
        if prog >= 0:
            os.close(prog)  # the cgroup holds the program now
        os.close(dfd)


def _detach(cgroup_fd: int, prog_id: int) -> None:
    fd = _prog_fd(prog_id)
    try:
        attr = bytearray(20)
        struct.pack_into("=III", attr, 0, cgroup_fd, fd, BPF_CGROUP_DEVICE)
        _bpf(BPF_PROG_DETACH, attr)
    finally:
        os.close(fd)
