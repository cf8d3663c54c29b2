"""Migration benchmark: page-server migration vs checkpoint-to-disk + copy + restore, side by side.

Two "hosts" (network namespaces joined by a veth pair, tests/migrate_support.py).
For each size (64 MiB and 1 GiB of dirty anonymous memory, tests/patmem.c),
every round runs both methods on a fresh container, alternating which goes first:

* **migrate**: ``fastckpt migrate --remote 'nsenter --net=DST'``: pages go from
  the dump straight to the destination's page server; the small images follow
  through the remote prefix; the destination restores; the source goes.
  Downtime: from the freeze on the source to the restore's return on the
  destination (fastckpt's own measurement, ``--json``); total: the command's wall time.
* **lazy**: ``fastckpt migrate --lazy-pages`` (post-copy): the source's CRIU serves the pages from a
  lazy page server; the destination restores at once and pulls them (on demand, the rest in the
  background). Downtime as for migrate (the pages mostly come after it); total: until the last page
  was pulled and the source removed. Where CRIU's lazy page server cannot size its pipe
  (/proc/sys/fs/pipe-max-size), FASTCKPT_TEST_RAISE_PIPE_MAX=1 raises the limit for the run (put back
  at its end); without it the lazy rows are left out, with the reason.
* **disk**: ``fastckpt checkpoint`` into a directory on the source's disk, a socket
  copy of that directory to the destination (one TCP connection over the veth,
  files sent with sendfile), ``fastckpt restore -d`` there.  The container is stopped
  from (just after) the start of the checkpoint to the end of the restore, so
  downtime = total = the sum of the three.

Every migrated container's memory is checked on the destination (untimed).
The ceiling: a plain socket copy of the same number of bytes between the two
namespaces (sender writes from memory, receiver discards), GB/s.
The migration's transfer rate is the pages' bytes over CRIU's memwrite time
(its statistics of the dump: the sending of the pages to the page server).

    .venv/bin/python benchmarks/migrate_bench.py [--rounds N] [--big-rounds N] [--sizes 64,1024]

Results: benchmarks/results/migrate-<time>.{md,json} and migrate-latest.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import benchlib  # noqa: F401 -- first: it makes tests/ importable
import ckpt_support as cs  # noqa: E402
import migrate_support as ms  # noqa: E402

RESULTS = os.path.join(HERE, "results")

RECEIVER = r"""
import os, socket, struct, sys
sk = socket.socket(); sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sk.bind((sys.argv[1], 0)); sk.listen(1)
print(sk.getsockname()[1], flush=True)
c, _ = sk.accept()
out = sys.argv[2]
discard = out == "-"
buf = bytearray(1 << 20)
def readn(n):
    b = bytearray()
    while len(b) < n:
        k = c.recv_into(memoryview(buf)[:min(len(buf), n - len(b))])
        if not k: raise SystemExit("short")
        b += buf[:k]
    return bytes(b)
while True:
    head = c.recv(4, socket.MSG_WAITALL)
    if len(head) < 4: break
    nlen, = struct.unpack("!I", head)
    if nlen == 0: break
    name = readn(nlen).decode(); size, = struct.unpack("!Q", c.recv(8, socket.MSG_WAITALL))
    fd = None if discard else os.open(os.path.join(out, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    left = size
    while left:
        k = c.recv_into(buf, min(len(buf), left))
        if not k: raise SystemExit("short")
        if fd is not None: os.write(fd, memoryview(buf)[:k])
        left -= k
    if fd is not None: os.close(fd)
c.sendall(b"k")
"""

SENDER = r"""
import os, socket, struct, sys
import time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
t0 = time.monotonic()
src = sys.argv[3]
if src.startswith("zero:"):
    n = int(src[5:]); chunk = b"\x5a" * (1 << 20)
    c.sendall(struct.pack("!I", 4) + b"blob" + struct.pack("!Q", n))
    while n:
        k = min(n, len(chunk)); c.sendall(chunk[:k]); n -= k
else:
    for name in sorted(os.listdir(src)):
        p = os.path.join(src, name)
        if not os.path.isfile(p): continue
        size = os.path.getsize(p)
        c.sendall(struct.pack("!I", len(name)) + name.encode() + struct.pack("!Q", size))
        with open(p, "rb") as f:
            c.sendfile(f)
c.sendall(struct.pack("!I", 0)); c.recv(1)
print(time.monotonic() - t0)
"""


def socket_copy(hosts: ms.Hosts, what: str, dest: str) -> float:
    """Copy WHAT (a directory, or zero:N bytes) from src to dst over one TCP connection; the seconds
    from the connection to the receiver's acknowledgement (the programs' start excluded)."""
    rx = subprocess.Popen(hosts.dst.cmd(sys.executable, "-c", RECEIVER, hosts.dst.address, dest),
                          stdout=subprocess.PIPE, text=True)
    try:
        port = rx.stdout.readline().strip()
        r = subprocess.run(hosts.src.cmd(sys.executable, "-c", SENDER, hosts.dst.address, port, what), check=True,
                           capture_output=True, text=True)
        rx.wait(120)
        assert rx.returncode == 0, "socket copy failed"
        return float(r.stdout.strip())
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()


class Bench:
    def __init__(self, hosts: ms.Hosts, binary: str):
        self.h, self.binary = hosts, binary
        self.n = 0

    def container(self, mib: int):
        self.n += 1
        cid = cs.new_id()
        sb = self.h.src.bundle(f"b{self.n}", ms.patmem_args(mib), files=[(self.binary, "/patmem")])
        db = self.h.dst.bundle(f"b{self.n}", ms.patmem_args(mib), files=[(self.binary, "/patmem")])
        self.h.src.run_container(cid, sb)
        cs.wait_until(lambda: os.path.exists(self.h.src.rootfs_file(sb, "/tmp/ready")), "memory filled",
                      timeout=300)
        return cid, sb, db

    def finish(self, cid: str, db: str) -> None:
        dest = cid + "-d"
        answer = ms.check_pattern(self.h.dst, db, dest, timeout=300)
        assert answer.startswith("ok "), f"memory differs on the destination: {answer}"
        for c in self.h.dst.ids():
            self.h.dst.container(c).destroy()
        for c in self.h.src.ids():
            self.h.src.container(c).destroy()
        shutil.rmtree(os.path.join(self.h.src.dir, f"b{self.n}"), ignore_errors=True)
        shutil.rmtree(os.path.join(self.h.dst.dir, f"b{self.n}"), ignore_errors=True)

    def lazy(self, mib: int) -> dict:
        return self.migrate(mib, "--lazy-pages")

    def migrate(self, mib: int, *extra: str) -> dict:
        cid, sb, db = self.container(mib)
        t = time.monotonic()
        r = subprocess.run(self.h.src.fastckpt("migrate", "--json", *extra, "--remote", self.h.dst.remote(),
                                               "--remote-fastckpt", ms.FASTCKPT, "--address", self.h.dst.address,
                                               "-b", db, "--dest-root", self.h.dst.root, "--dest-id", cid + "-d",
                                               "--dest-image-path", os.path.join(self.h.dst.dir, "mig"), cid),
                           capture_output=True, text=True, timeout=900)
        wall = time.monotonic() - t
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        self.finish(cid, db)
        crit = res.get("criu_dump") or {}
        return {"downtime": res["downtime"], "total": wall, "dump": res["dump_time"],
                "restore": res["restore_time"], "bytes": res["pages_bytes"], "pull": res.get("pull_time"),
                "memwrite": (crit.get("memwrite_time") or 0) / 1e6 or res["dump_time"]}

    def disk(self, mib: int) -> dict:
        cid, sb, db = self.container(mib)
        src_img = os.path.join(self.h.src.dir, "ckpt")
        dst_img = os.path.join(self.h.dst.dir, "ckpt")
        os.makedirs(dst_img, mode=0o700)
        try:
            t = time.monotonic()
            r = subprocess.run(self.h.src.fastckpt("checkpoint", "--image-path", src_img, cid),
                               capture_output=True, text=True, timeout=900)
            t_ckpt = time.monotonic()
            assert r.returncode == 0, r.stderr
            wire = socket_copy(self.h, src_img, dst_img)
            t_copy = time.monotonic()
            r = subprocess.run(self.h.dst.fastckpt("restore", "--image-path", dst_img, "-b", db, "-d", cid + "-d"),
                               capture_output=True, text=True, timeout=900)
            t_end = time.monotonic()
            assert r.returncode == 0, r.stderr
            size = sum(os.path.getsize(os.path.join(src_img, n)) for n in os.listdir(src_img)
                       if n.startswith("pages-"))
            self.finish(cid, db)
        finally:
            shutil.rmtree(src_img, ignore_errors=True)
            shutil.rmtree(dst_img, ignore_errors=True)
        return {"downtime": t_end - t, "total": t_end - t, "checkpoint": t_ckpt - t, "copy": t_copy - t_ckpt,
                "restore": t_end - t_copy, "wire": wire, "bytes": size}


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="rounds for 64 MiB (default 5)")
    ap.add_argument("--big-rounds", type=int, default=3, help="rounds for 1 GiB (default 3)")
    ap.add_argument("--sizes", default="64,1024", help="MiB, comma-separated")
    args = ap.parse_args()
    reason = ms.prerequisites()
    if reason:
        print(f"migrate_bench: cannot run: {reason}", file=sys.stderr)
        return 2
    put_back = cs.raise_pipe_max_size()
    lazy_reason = cs.lazy_pages_unavailable()
    if lazy_reason:
        print(f"migrate_bench: no lazy rows: {lazy_reason}", file=sys.stderr)
    work = tempfile.mkdtemp(prefix="fastckpt-migbench-", dir="/var/tmp")
    hosts = ms.Hosts(work).setup()
    out = {"host": os.uname().nodename, "kernel": os.uname().release, "time": time.strftime("%Y%m%d-%H%M%S"),
           "sizes": {}, "lazy_unavailable": lazy_reason}
    try:
        binary = ms.patmem_binary(work)
        bench = Bench(hosts, binary)
        for mib in (int(s) for s in args.sizes.split(",")):
            rounds = args.rounds if mib < 1024 else args.big_rounds
            rows = {"migrate": [], "disk": [], "lazy": []}
            methods = [bench.migrate, bench.disk] + ([] if lazy_reason else [bench.lazy])
            ceiling = []
            # warm-up round (not counted): page cache, CRIU's kdat, the bundles' first copies
            bench.migrate(mib)
            if not lazy_reason:
                bench.lazy(mib)
            for i in range(rounds):
                order = methods[i % len(methods):] + methods[:i % len(methods)]  # who goes first rotates
                for fn in order:
                    rows[fn.__name__].append(fn(mib))
                mig, disk, lazy = rows["migrate"], rows["disk"], rows["lazy"]
                n = mig[-1]["bytes"]
                ceiling.append({"seconds": socket_copy(hosts, f"zero:{n}", "-"), "bytes": n})
                print(f"{mib} MiB round {i + 1}/{rounds}: migrate {mig[-1]['downtime']:.3f}/{mig[-1]['total']:.3f} s,"
                      + (f" lazy {lazy[-1]['downtime']:.3f}/{lazy[-1]['total']:.3f} s," if lazy else "")
                      + f" disk {disk[-1]['total']:.3f} s, socket {ceiling[-1]['seconds']:.3f} s", flush=True)
            out["sizes"][mib] = {**rows, "socket": ceiling}
    finally:
        if put_back is not None:
            put_back()
        problems = hosts.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        if problems:
            print("cleanup: " + "; ".join(problems), file=sys.stderr)
    md = report(out)
    print(md)
    os.makedirs(RESULTS, exist_ok=True)
    for name in (f"migrate-{out['time']}", "migrate-latest"):
        with open(os.path.join(RESULTS, name + ".json"), "w") as f:
            json.dump(out, f, indent=1)
        with open(os.path.join(RESULTS, name + ".md"), "w") as f:
            f.write(md)
    return 0


def report(out: dict) -> str:
    lines = [f"# Migration: page server vs checkpoint-to-disk + copy + restore ({out['time']}, {out['kernel']})", "",
             "Two network namespaces joined by a veth pair on one 2-core VM (shared with other work). Medians of "
             "the rounds; every migrated container's memory verified on the destination.", "",
             "| size | method | downtime s | total s | parts (median s) | transfer GB/s | socket ceiling GB/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for mib, d in out["sizes"].items():
        m, k, s = d["migrate"], d["disk"], d["socket"]
        ceiling = med([{"r": x["bytes"] / x["seconds"] / 1e9} for x in s], "r")
        rate_m = med([{"r": x["bytes"] / x["memwrite"] / 1e9} for x in m], "r")
        rate_k = med([{"r": x["bytes"] / x["wire"] / 1e9} for x in k], "r")
        lines.append(f"| {mib} MiB | page-server migrate | {med(m, 'downtime'):.3f} | {med(m, 'total'):.3f} | "
                     f"dump+send {med(m, 'dump'):.3f}, restore {med(m, 'restore'):.3f} | {rate_m:.2f} (pages / CRIU's memwrite time) | "
                     f"{ceiling:.2f} |")
        lines.append(f"| {mib} MiB | disk + copy + restore | {med(k, 'downtime'):.3f} | {med(k, 'total'):.3f} | "
                     f"checkpoint {med(k, 'checkpoint'):.3f}, copy {med(k, 'copy'):.3f}, restore "
                     f"{med(k, 'restore'):.3f} | {rate_k:.2f} (copy on the wire) | {ceiling:.2f} |")
        z = d.get("lazy") or []
        if z:
            rate_z = med([{"r": x["bytes"] / x["pull"] / 1e9} for x in z], "r")
            lines.append(f"| {mib} MiB | lazy migrate (post-copy) | {med(z, 'downtime'):.3f} | {med(z, 'total'):.3f} | "
                         f"dump {med(z, 'dump'):.3f}, restore {med(z, 'restore'):.3f}, pages pulled after it "
                         f"{med(z, 'pull'):.3f} | {rate_z:.2f} (pages / pull time) | {ceiling:.2f} |")
    if out.get("lazy_unavailable"):
        lines += ["", f"No lazy rows: {out['lazy_unavailable']}"]
    lines += ["", "downtime: migrate (and lazy), from the freeze on the source to the restore's return on the destination; "
              "lazy total: until the last page was pulled and the source removed; "
              "disk, the three steps (the container stops at the checkpoint's freeze and runs again at the "
              "restore's end). Socket ceiling: the same number of bytes from memory to a discarding reader, "
              "one TCP connection between the namespaces.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
