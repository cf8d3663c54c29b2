"""Holding a frozen container's TCP connections silent while it migrates.

A migration keeps the source container (frozen) until the destination has
restored it.  CRIU's dump with leave-running takes the container's sockets
out of repair mode and lifts its network lock when it ends: from then on the
source's kernel would answer the peer for the frozen sockets (acknowledge data
the destination never gets, send a reset when the source is removed), and the
connection would break once it moves.  So fastckpt holds a lock of its own
from the freeze to the end: nftables rules, in the container's network
namespace, that drop every packet of those connections, both ways.

* abort (the migration failed): the rules go, the container thaws, the peer's
  retransmissions reach the source again and the connection goes on there;
* commit (the destination runs it): the source's sockets are destroyed while
  the rules still drop what that sends (`ss -K`: no reset, no FIN reaches the
  peer), then the rules go.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import uuid

from ._record import Record
from .errors import Error

_LISTEN = 0x0A


class Conn(Record, frozen=True):
    family: int  # socket.AF_INET or AF_INET6
    laddr: str
    lport: int
    raddr: str
    rport: int


def _addr(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hexaddr)
    # the kernel prints each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(raw)
    # an IPv4 peer of a dual-stack socket: its packets are IPv4 ones
    return getattr(addr, "ipv4_mapped", None) or addr


def _socket_inodes(pids: list[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    return out


def connections(pids: list[int]) -> list[Conn]:
    """The connected TCP sockets (not listening ones) the processes PIDS hold, from their network namespace."""
    if not pids:
        return []
    inodes = _socket_inodes(pids)
    out = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pids[0]}/net/{name}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], int(parts[3], 16), int(parts[9])
            if inode not in inodes or state == _LISTEN:
                continue
            la, lp = local.split(":")
            ra, rp = remote.split(":")
            lad, rad = _addr(la), _addr(ra)
            fam = socket.AF_INET if lad.version == 4 else socket.AF_INET6
            out.append(Conn(fam, str(lad), int(lp, 16), str(rad), int(rp, 16)))
    return sorted(set(out), key=lambda c: (c.laddr, c.lport, c.raddr, c.rport))


def _match(c: Conn, inbound: bool) -> str:
    ip = "ip" if c.family == socket.AF_INET else "ip6"
    if inbound:
        return f"{ip} saddr {c.raddr} tcp sport {c.rport} {ip} daddr {c.laddr} tcp dport {c.lport} drop"
    return f"{ip} saddr {c.laddr} tcp sport {c.lport} {ip} daddr {c.raddr} tcp dport {c.rport} drop"


class TcpLock:
    """Drop the packets of CONNS in the network namespace of PID, until commit() or abort()."""

    def __init__(self, pid: int, conns: list[Conn]):
        self.conns = conns
        self.table = f"fastckpt_migrate_{uuid.uuid4().hex[:12]}"
        self.netns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        self.held = False

    def _in_netns(self, *argv: str, input: str | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["nsenter", f"--net=/proc/self/fd/{self.netns_fd}", *argv], input=input,
                                  pass_fds=[self.netns_fd], capture_output=True, text=True, timeout=30)
        except FileNotFoundError as e:
            raise Error(f"cannot lock the container's TCP connections: {e.filename} is not installed") from None

    def hold(self) -> None:
        rules_in = "\n".join(f"    {_match(c, True)}" for c in self.conns)
        rules_out = "\n".join(f"    {_match(c, False)}" for c in self.conns)
        ruleset = (f"table inet {self.table} {{\n"
                   f"  chain input {{ type filter hook input priority -300; policy accept;\n{rules_in}\n  }}\n"
                   f"  chain output {{ type filter hook output priority -300; policy accept;\n{rules_out}\n  }}\n"
                   "}\n")
        r = self._in_netns("nft", "-f", "-", input=ruleset)
        if r.returncode:
            raise Error(f"cannot lock the container's TCP connections with nftables: {r.stderr.strip()}")
        self.held = True

    def commit(self) -> None:
        """The connections live elsewhere now: the source's sockets go silently, then the rules."""
        for c in self.conns:
            self._in_netns("ss", "-K", "-t", "-n", "state", "all", "src", f"[{c.laddr}]:{c.lport}",
                           "dst", f"[{c.raddr}]:{c.rport}")
        self.abort()

    def abort(self) -> None:
        if self.held:
            self._in_netns("nft", "delete", "table", "inet", self.table)
            self.held = False
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
