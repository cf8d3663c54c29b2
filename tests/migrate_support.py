"""Two "hosts" on one machine for the migration tests and benchmarks.

Each host is a network namespace of its own (entered with ``nsenter --net=``:
``ip netns exec`` would hide /sys/fs/cgroup), with its own runc state root and
its own copies of the bundles (rootfs).  A veth pair joins them, with
link-local addresses 169.254.N.1 (src) and 169.254.N.2 (dst) on a random N:
traffic flows only between those two addresses.  Names are unique; cleanup
removes containers, namespaces (and so the veth) and directories, also when
the test failed.

Both hosts share this machine's cgroup hierarchy: a container restored on dst
must get another id than the source's (its cgroups are named after it), which
separate hosts would not need.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import List, Optional

import ckpt_support as cs
from fastckpt_testing import cli
from fastckpt_testing.cli import Result
from fastckpt_testing.plugin import skip_or_fail  # noqa: F401 (ms.skip_or_fail)

HERE = os.path.dirname(os.path.abspath(__file__))
PATMEM_C = os.path.join(HERE, "patmem.c")
FASTCKPT = os.path.join(os.path.dirname(sys.executable), "fastckpt")


def prerequisites() -> Optional[str]:
    from fastckpt_testing.plugin import integration_skip_reason

    reason = integration_skip_reason()
    if reason:
        return reason
    for tool in ("ip", "nsenter", "gcc", "tar"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not os.access(FASTCKPT, os.X_OK):
        return f"no fastckpt command at {FASTCKPT} (run `make deps`)"
    return None


def run(cmd: List[str], timeout: float = 60, check: bool = True, input: Optional[str] = None, **kw) -> Result:
    """CMD to its end (the tests' runner); CHECK: it must succeed."""
    r = cli.run(cmd, timeout=timeout, input=input, **kw)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Host:
    def __init__(self, name: str, address: str, workdir: str):
        self.name, self.address, self.dir = name, address, workdir
        self.root = os.path.join(workdir, "runc-root")
        os.makedirs(self.root, exist_ok=True)

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    def prefix(self) -> List[str]:
        return ["nsenter", f"--net={self.netns}"]

    def remote(self) -> str:
        """This host as migrate's --remote."""
        return " ".join(self.prefix())

    def cmd(self, *argv: str) -> List[str]:
        return self.prefix() + list(argv)

    def fastckpt(self, *args: str) -> List[str]:
        return self.cmd(FASTCKPT, "--root", self.root, *args)

    def bundle(self, name: str, args=None, files=(), network_ns: Optional[str] = "", mounts=()) -> str:
        from fastckpt import bundle

        path = os.path.join(self.dir, name)
        kw = {"network_ns": network_ns, "mounts": list(mounts)}
        bundle.make_bundle(path, args, **kw) if args else bundle.make_bundle(path, **kw)
        for src, dest in files:
            shutil.copy2(src, os.path.join(path, "rootfs", dest.lstrip("/")))
        return path

    def rootfs_file(self, bundle: str, path: str) -> str:
        return os.path.join(bundle, "rootfs", path.lstrip("/"))

    def run_container(self, cid: str, bundle: str) -> None:
        with open(os.devnull, "r+b") as null:
            rc = subprocess.run(self.cmd("runc", "--root", self.root, "run", "-d", "-b", bundle, cid),
                                stdin=null, stdout=null, stderr=null, timeout=60).returncode
        assert rc == 0, f"runc run {cid} failed on {self.name}"

    def container(self, cid: str) -> "cs.Container":
        return cs.Container(cid, "", self.root)

    def ids(self) -> List[str]:
        return cs.runc_ids(self.root)


class Hosts:
    """src and dst, joined by a veth pair."""

    def __init__(self, workdir: str):
        tag = uuid.uuid4().hex[:6]
        n = random.randint(16, 250)
        self.subnet = f"169.254.{n}"
        self.tag = tag
        self.src = Host(f"fcm-{tag}-s", f"{self.subnet}.1", os.path.join(workdir, "src"))
        self.dst = Host(f"fcm-{tag}-d", f"{self.subnet}.2", os.path.join(workdir, "dst"))
        self.veth = (f"fcm{tag}s", f"fcm{tag}d")
        self.extra_netns: List[str] = []
        self.mounts: List[str] = []

    def setup(self) -> "Hosts":
        for h in (self.src, self.dst):
            run(["ip", "netns", "add", h.name])
        a, b = self.veth
        run(["ip", "link", "add", a, "netns", self.src.name, "type", "veth", "peer", "name", b,
             "netns", self.dst.name])
        for h, dev in ((self.src, a), (self.dst, b)):
            run(h.cmd("ip", "addr", "add", f"{h.address}/24", "dev", dev))
            run(h.cmd("ip", "link", "set", dev, "up"))
            run(h.cmd("ip", "link", "set", "lo", "up"))
        return self

    def add_peer(self) -> "Peer":
        """A third place: a peer netns linked to src and to dst, and a service address V on src's and dst's
        loopback (a floating address, provisioned on both); the peer routes V via src until told otherwise."""
        m, l, k = random.sample([n for n in range(16, 250) if f"169.254.{n}" != self.subnet], 3)
        peer = Peer(f"fcm-{self.tag}-p", f"169.254.{k}.3", f"169.254.{k}.9", self)
        self.extra_netns.append(peer.name)
        run(["ip", "netns", "add", peer.name])
        for h, side, net in ((self.src, "s", m), (self.dst, "d", l)):
            a, b = f"fcm{self.tag}{side}p", f"fcm{self.tag}p{side}"
            run(["ip", "link", "add", a, "netns", h.name, "type", "veth", "peer", "name", b, "netns", peer.name])
            host_ip, peer_ip = f"169.254.{net}.1", f"169.254.{net}.3"
            run(h.cmd("ip", "addr", "add", f"{host_ip}/24", "dev", a))
            run(h.cmd("ip", "link", "set", a, "up"))
            run(h.cmd("ip", "addr", "add", f"{peer.vip}/32", "dev", "lo"))
            run(h.cmd("ip", "route", "add", f"{peer.address}/32", "via", peer_ip))
            run(peer.cmd("ip", "addr", "add", f"{peer_ip}/24", "dev", b))
            run(peer.cmd("ip", "link", "set", b, "up"))
            peer.via[h.name] = host_ip
        run(peer.cmd("ip", "link", "set", "lo", "up"))
        run(peer.cmd("ip", "addr", "add", f"{peer.address}/32", "dev", "lo"))
        peer.route_to(self.src)
        return peer

    def link(self, up: bool) -> None:
        run(self.src.cmd("ip", "link", "set", self.veth[0], "up" if up else "down"))

    def tmpfs(self, path: str, size: str) -> str:
        os.makedirs(path, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path])
        self.mounts.append(path)
        return path

    def cleanup(self) -> List[str]:
        problems: List[str] = []
        for h in (self.src, self.dst):
            for cid in h.ids():
                problems += h.container(cid).destroy()
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", m], capture_output=True)
        for name in [self.src.name, self.dst.name] + self.extra_netns:
            if os.path.exists(f"/run/netns/{name}"):
                r = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
                if r.returncode:
                    problems.append(f"ip netns del {name}: {r.stderr.strip()}")
        return problems


PEER_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60, source_address=(sys.argv[3], 0))
print("connected", flush=True)
for line in sys.stdin:
    s.sendall(line.encode())
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            print("EOF", flush=True)
            sys.exit(1)
        got += chunk
    print(got.decode().strip(), flush=True)
"""


class Peer:
    """The far end of a TCP connection, in a netns of its own: a client that echoes lines through it."""

    def __init__(self, name: str, address: str, vip: str, hosts: "Hosts"):
        self.name, self.address, self.vip, self.hosts = name, address, vip, hosts
        self.via: dict = {}
        self.client: Optional[subprocess.Popen] = None

    def cmd(self, *argv: str) -> List[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}", *argv]

    def route_to(self, host: Host) -> None:
        run(self.cmd("ip", "route", "replace", f"{self.vip}/32", "via", self.via[host.name]))
        run(self.cmd("ip", "neigh", "flush", "all"), check=False)

    def connect(self, port: int) -> None:
        self.client = subprocess.Popen(self.cmd(sys.executable, "-c", PEER_CLIENT, self.vip, str(port), self.address),
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        line = self.client.stdout.readline().strip()
        assert line == "connected", f"the peer could not connect: {line} {self.client.stderr.read() if not line else ''}"

    def echo(self, text: str) -> str:
        self.client.stdin.write(text + "\n")
        self.client.stdin.flush()
        return self.client.stdout.readline().strip()

    def close(self) -> None:
        if self.client and self.client.poll() is None:
            self.client.kill()
            self.client.wait()


_PATMEM: dict = {}


def patmem_binary(outdir: str) -> str:
    if "bin" not in _PATMEM or not os.path.exists(_PATMEM["bin"]):
        out = os.path.join(outdir, "patmem")
        r = subprocess.run(["gcc", "-static", "-O2", "-o", out, PATMEM_C], capture_output=True, text=True)
        assert r.returncode == 0, f"gcc -static patmem.c: {r.stderr[-500:]}"
        _PATMEM["bin"] = out
    return _PATMEM["bin"]


def patmem_args(mib: int) -> List[str]:
    return ["/patmem", str(mib), "/tmp/ready", "/tmp/result"]


def check_pattern(host: Host, bundle: str, cid: str, timeout: float = 120) -> str:
    """Ask the patmem process of container CID to check its memory: its answer."""
    result = host.rootfs_file(bundle, "/tmp/result")
    if os.path.exists(result):
        os.unlink(result)
    pid = host.container(cid).pid
    os.kill(pid, signal.SIGUSR1)
    cs.wait_until(lambda: os.path.exists(result), f"the memory check of {cid}", timeout=timeout)
    with open(result) as f:
        return f.read().strip()


def procs_mentioning(text: str) -> List[int]:
    """Live processes whose command line contains TEXT (a unique path of the test)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(p))
        except OSError:
            pass
    return [p for p in out if p != os.getpid()]


def criu_procs(text: str, command: str) -> List[int]:
    """Live `criu COMMAND ...` processes whose command line contains TEXT."""
    out = []
    for pid in procs_mentioning(text):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[1:2] == [command.encode()]:
                    out.append(pid)
        except OSError:
            pass
    return out


def staging_dirs() -> set:
    return {n for n in os.listdir("/dev/shm") if n.startswith("fastckpt-migrate-")}


def mentions(directory: str, text: str) -> bool:
    """Whether a file in DIRECTORY (a staging directory's CRIU logs) names TEXT (a test's own path)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                if text.encode() in f.read():
                    return True
        except OSError:
            pass
    return False


def wait_pages(dest_dir: str, at_least: int, timeout: float = 60) -> None:
    def arrived() -> int:
        try:
            return sum(os.path.getsize(os.path.join(dest_dir, n)) for n in os.listdir(dest_dir)
                       if n.startswith("pages-"))
        except OSError:
            return 0
    cs.wait_until(lambda: arrived() >= at_least, f"{at_least >> 20} MiB of pages in {dest_dir}",
                  timeout=timeout, interval=0.005)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def now() -> float:
    return time.monotonic()
