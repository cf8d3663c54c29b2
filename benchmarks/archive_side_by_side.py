#!/usr/bin/env python3
"""Checkpoint archives: fastckpt side by side with podman, and with `tar | zstd` (`make bench-archive`).

Rows (BENCH_ROUNDS rounds, default 7, each tool once a round, the first tool
rotating; one warm-up round not counted):

  export  a tiny busybox counter, the same rootfs and command under runc
          (fastckpt) and under podman 4.3 (private storage, --network none):
          `fastckpt checkpoint --export F --compress C` (the whole rootfs in the
          archive, and with --ignore-rootfs) vs `podman container checkpoint
          --export F --compress C` (its rootfs changes), zstd and gzip; a fresh
          container per tool and round, the command alone timed
  import  `fastckpt restore -d --import F --bundle NEW` of its own archive vs
          `podman container restore --import F` of its own (zstd)
  big     a 1 GiB container's image directory (1 GiB of non-zero, incompressible
          pages) to an archive and back: fastckpt.archive.export() vs
          `tar -C DIR -c . | zstd -3` (and gzip -6, none) into a file;
          fastckpt.archive.unpack() (read, check, CRCs, manifest) vs
          `zstd -dc | tar -x`; BENCH_BIG_ROUNDS rounds (default 3), files on the
          same disk; throughput = bytes of the image directory / wall time

Results: a markdown table on stdout and benchmarks/results/archive-latest.{md,json}.
BENCH_ONLY=export,import,big runs a subset.  Everything started is taken down
(containers by id in private roots, podman's private storage, temp dirs).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))

import benchlib as bl  # first: it makes tests/ importable (podman_support)

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"
IMAGE = "localhost/fastckpt-bench-busybox:latest"


def log(msg: str) -> None:
    print(f"[archive-bench] {msg}", file=sys.stderr, flush=True)


def rotate(tools: List[str], r: int) -> List[str]:
    k = r % len(tools)
    return tools[k:] + tools[:k]


def timed(cmd: List[str], env=None, shell: bool = False) -> float:
    t = time.monotonic()
    with open(os.devnull, "r+b") as null:
        r = subprocess.run(cmd, stdin=null, stdout=null, stderr=subprocess.PIPE, env=env, shell=shell)
    dt = time.monotonic() - t
    if r.returncode != 0:
        raise bl.CommandFailed(f"{cmd if shell else ' '.join(cmd)}: exit {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()[-400:]}")
    return dt


class Bench:
    def __init__(self, jan: bl.Janitor, rounds: int, big_rounds: int):
        self.jan, self.rounds, self.big_rounds = jan, rounds, big_rounds
        self.work = jan.mkdtemp("fcb-archive-")
        self.root = os.path.join(self.work, "runc-root")
        self.samples: Dict[str, Dict[str, List[float]]] = {}
        self.sizes: Dict[str, int] = {}
        self.podman = None

    def add(self, section: str, tool: str, value: float, warm: bool) -> None:
        if not warm:
            self.samples.setdefault(section, {}).setdefault(tool, []).append(value)

    def setup_podman(self) -> None:
        import podman_support as ps

        reason = ps.why_not()
        if reason:
            raise bl.CommandFailed(f"podman: {reason}")
        self.podman = ps.Podman(tempfile.mkdtemp(prefix="fcbpod-"))
        self.jan.on_close(lambda: self.podman.cleanup())
        self.rootfs = os.path.join(self.work, "image-rootfs")
        from fastckpt import bundle

        bundle.make_rootfs(self.rootfs)
        self.image_id = self.podman.import_rootfs(self.rootfs, IMAGE)

    def runc_container(self) -> str:
        b = bl.make_bundle(os.path.join(self.work, f"b-{bl.new_id('')}"), ["sh", "-c", COUNTER])
        os.chmod(os.path.join(b, "rootfs"), 0o555)
        cid = bl.start_container(self.jan, self.root, b)
        bl.wait_until(lambda: os.path.exists(os.path.join(b, "rootfs", "tmp", "count")), "the counter")
        return cid

    def podman_container(self) -> str:
        name = self.podman.run(IMAGE, "sh", "-c", COUNTER)
        bl.wait_until(lambda: self.podman.exec_cat(name, "/tmp/count"), "podman's counter")
        return name

    # --- rows
    def export_import(self, do_import: bool) -> None:
        tools = ["fastckpt", "fastckpt-ignore-rootfs", "podman"]
        for compress in ("zstd", "gzip"):
            for r in range(self.rounds + 1):
                warm = r == 0
                made = {}
                for tool in rotate(tools, r):
                    out = os.path.join(self.work, f"{tool}-{r}.tar.{compress}")
                    if tool == "podman":
                        name = self.podman_container()
                        dt = timed(self.podman.cmd("container", "checkpoint", "--export", out, "--compress",
                                                   compress, name), env=self.podman.env)
                        self.podman.ok("rm", "-f", "-t", "0", name)
                        made[tool] = (out, name)
                    else:
                        cid = self.runc_container()
                        extra = ["--ignore-rootfs"] if tool.endswith("ignore-rootfs") else []
                        dt = timed([bl.FASTCKPT, "--root", self.root, "checkpoint", "--export", out, "--compress",
                                    compress, "--podman-image", IMAGE, "--podman-image-id", self.image_id,
                                    *extra, cid])
                        made[tool] = (out, cid)
                    self.add(f"export {compress}", tool, dt, warm)
                    self.sizes[f"export {compress} {tool}"] = os.path.getsize(out)
                if do_import and compress == "zstd":
                    for tool in rotate(["fastckpt", "podman"], r):
                        out, name = made[tool]
                        if tool == "podman":
                            dt = timed(self.podman.cmd("container", "restore", "--import", out), env=self.podman.env)
                            self.podman.ok("rm", "-f", "-t", "0", name)
                        else:
                            new = bl.new_id()
                            self.jan.add_container(self.root, new)
                            bundle = os.path.join(self.work, f"imp-{new}")
                            dt = timed([bl.FASTCKPT, "--root", self.root, "restore", "-d", "--import", out,
                                        "--bundle", bundle, new])
                            self.jan.release_container(self.root, new)
                            shutil.rmtree(bundle, ignore_errors=True)
                        self.add("import zstd", tool, dt, warm)
                for out, _ in made.values():
                    os.unlink(out)

    def big(self) -> None:
        from fastckpt import archive

        binary = bl.build_bigmem(self.work)
        b = bl.make_bundle(os.path.join(self.work, "big"), ["/bigmem", "1024", "/tmp/ready"])
        shutil.copy2(binary, os.path.join(b, "rootfs", "bigmem"))
        cid = bl.start_container(self.jan, self.root, b)
        bl.wait_until(lambda: os.path.exists(os.path.join(b, "rootfs", "tmp", "ready")), "1 GiB written", 120)
        images = os.path.join(self.work, "big-images")
        timed([bl.FASTCKPT, "--root", self.root, "checkpoint", "--image-path", images, cid])
        size = sum(os.path.getsize(os.path.join(images, n)) for n in os.listdir(images))
        self.sizes["big image directory"] = size
        with open(os.path.join(b, "config.json")) as f:
            spec = json.load(f)
        levels = {"zstd": "zstd -3 -q", "gzip": "gzip -6", "none": "cat"}
        for r in range(self.big_rounds + 1):
            warm = r == 0
            for compress in ("zstd", "none", "gzip"):
                out = os.path.join(self.work, f"big.{compress}")
                for tool in rotate(["fastckpt", "tar"], r):
                    if tool == "fastckpt":
                        t = time.monotonic()
                        archive.export(images, out, spec=spec, container_id=cid, compress=compress)
                        dt = time.monotonic() - t
                    else:
                        dt = timed(f"tar -C {images} -c . | {levels[compress]} > {out}.tar", shell=True)
                    self.add(f"big export {compress}", tool, size / dt / 1e6, warm)
                if compress == "zstd":
                    for tool in rotate(["fastckpt", "tar"], r):
                        dest = tempfile.mkdtemp(prefix="unpack-", dir=self.work)
                        if tool == "fastckpt":
                            t = time.monotonic()
                            archive.unpack(out, dest)
                            dt = time.monotonic() - t
                        else:
                            dt = timed(f"zstd -dc {out}.tar | tar -C {dest} -x", shell=True)
                        shutil.rmtree(dest)
                        self.add("big import zstd", tool, size / dt / 1e6, warm)
                for p in (out, out + ".tar"):
                    if os.path.exists(p):
                        os.unlink(p)


def render(b: Bench, meta: dict) -> tuple:
    rep = {"meta": meta, "sizes": b.sizes, "rows": {}}
    lines = [f"# Checkpoint archives: fastckpt, podman, tar ({meta['date']})", "",
             f"{meta['rounds']} rounds (big: {meta['big_rounds']}); podman {meta['podman']}; "
             f"median [min-max]. Export/import: wall time of the command (ms). Big: MB/s "
             "(bytes of the 1 GiB image directory / wall time), higher is better.", ""]
    for section, tools in b.samples.items():
        unit = "MB/s" if section.startswith("big") else "ms"
        lines += [f"## {section}", "", f"| tool | median {unit} | min | max | n |", "|---|---|---|---|---|"]
        rep["rows"][section] = {}
        for tool, xs in tools.items():
            s = bl.summarize([x * 1000 if unit == "ms" else x for x in xs])
            rep["rows"][section][tool] = s
            lines.append(f"| {tool} | {s['median']:.0f} | {s['min']:.0f} | {s['max']:.0f} | {s['n']} |")
        lines.append("")
    if b.sizes:
        lines += ["## archive sizes (bytes)", "", "| archive | bytes |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in b.sizes.items()] + [""]
    return rep, "\n".join(lines)


def main() -> int:
    reason = bl.why_not_runnable()
    if reason:
        print(f"archive benchmark: {reason}", file=sys.stderr)
        return 1
    only = set(filter(None, os.environ.get("BENCH_ONLY", "export,import,big").split(",")))
    rounds = max(3, int(os.environ.get("BENCH_ROUNDS") or 7))
    big_rounds = max(1, int(os.environ.get("BENCH_BIG_ROUNDS") or 3))
    jan = bl.Janitor()
    b = Bench(jan, rounds, big_rounds)
    try:
        if only & {"export", "import"}:
            b.setup_podman()
            log("export/import rows")
            b.export_import("import" in only)
        if "big" in only:
            log("1 GiB rows")
            b.big()
    finally:
        problems = jan.close()
        if problems:
            log(f"cleanup problems: {problems}")
    podman = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.strip()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "rounds": rounds, "big_rounds": big_rounds, "podman": podman, "only": sorted(only)}
    rep, md = render(b, meta)
    print(md)
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "archive-latest.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "archive-latest.json"), "w") as f:
        json.dump(rep, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
