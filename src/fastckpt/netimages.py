"""Network images that record nothing, left out of a checkpoint.

CRIU saves a network namespace with iproute2 and iptables and restores it by
running them again: `ip route restore`, `ip rule flush` + `ip rule delete
table local` + `ip rule restore`, iptables-restore and ip6tables-restore,
~1.5-2 ms each. CRIU (any version, and so runc) restores a *missing* image as
empty and runs nothing for it. So a checkpoint drops the images whose restore
would change nothing in a new namespace:

- an empty iptables or ip6tables dump;
- a route dump without routes (iproute2's header alone);
- a rule dump holding exactly the rules every new namespace starts with
  (compared with `ip rule save` of a fresh namespace, once per boot, the
  netlink sequence numbers and port ids aside). Restored elsewhere, such a
  namespace gets that kernel's own starting rules (local, main, default:
  the same on every Linux of the last twenty years).
"""
from __future__ import annotations

import os
import struct

from .atomicfile import write_atomic

# `ip route save` of no route: iproute2's header alone
EMPTY_ROUTE_DUMP = b"\x24\x12\x31\x45"
_RULE_DUMP_MAGIC = b"\x86\x69\x70\x71"
_CACHE_DIR = "/run/fastckpt"
_default_rules: bytes | None = None


def _normalized_rules(data: bytes) -> bytes | None:
    """A rule dump with each netlink message's sequence number and port id zeroed; None if malformed."""
    if not data.startswith(_RULE_DUMP_MAGIC):
        return None
    out = bytearray(data)
    off = len(_RULE_DUMP_MAGIC)
    while off < len(out):
        if off + 16 > len(out):
            return None
        (length,) = struct.unpack_from("=I", out, off)
        if length < 16 or off + length > len(out):
            return None
        out[off + 8:off + 16] = bytes(8)  # nlmsg_seq, nlmsg_pid
        off += (length + 3) & ~3
    return bytes(out)


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def default_rules() -> bytes | None:
    """The normalized `ip rule save` of a new network namespace (cached per boot); None if unknown."""
    global _default_rules
    if _default_rules is not None:
        return _default_rules or None
    _default_rules = b""
    try:
        cache = os.path.join(_CACHE_DIR, f"default-ip-rules.{_boot_id()}")
        try:
            with open(cache, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            import subprocess

            r = subprocess.run(["unshare", "--net", "ip", "rule", "save"], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=10)
            if r.returncode != 0:
                return None
            data = r.stdout
            os.makedirs(_CACHE_DIR, mode=0o700, exist_ok=True)
            for old in os.listdir(_CACHE_DIR):  # earlier boots'
                if old.startswith("default-ip-rules.") and old != os.path.basename(cache):
                    os.unlink(os.path.join(_CACHE_DIR, old))
            write_atomic(cache, data)
        _default_rules = _normalized_rules(data) or b""
    except Exception:  # no reference (OSError, a timeout...): rule dumps are kept, nothing worse
        pass
    return _default_rules or None


def _records_nothing(name: str, data_size: int, read) -> bool:
    if name.startswith(("iptables-", "ip6tables-")):
        return data_size == 0
    if name.startswith(("route-", "route6-")):
        return data_size == len(EMPTY_ROUTE_DUMP) and read() == EMPTY_ROUTE_DUMP
    if name.startswith("rule-"):
        ref = default_rules()
        return ref is not None and data_size == len(ref) and _normalized_rules(read()) == ref
    return False


def prune(image_path: str) -> list[str]:
    """Remove the network images of IMAGE_PATH that record nothing; returns their names."""
    pruned = []
    try:
        names = os.listdir(image_path)
    except OSError:
        return pruned
    for name in names:
        if not name.endswith(".img") or not name.startswith(("iptables-", "ip6tables-", "route", "rule-")):
            continue
        path = os.path.join(image_path, name)

        def read(path=path) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        try:
            if _records_nothing(name, os.path.getsize(path), read):
                os.unlink(path)
                pruned.append(name)
        except OSError:
            pass  # kept: CRIU restores it as it is
    return pruned
