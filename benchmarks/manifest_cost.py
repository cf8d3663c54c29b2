"""What fastckpt-manifest.json costs on a checkpoint of SIZE MiB (default 1024): needs root and CRIU.

A process holding SIZE MiB of written memory is checkpointed (--leave-running)
REPS times with the manifest and REPS times without it; then manifest.write()
and manifest.verify() are timed on the images alone, hot (page cache) and cold
(the images' pages dropped from the cache with posix_fadvise), and the
structural check of images without a manifest; last, the checksums alone with
each algorithm a manifest can hold (XXH3-64 now, CRC32 before).

    .venv/bin/python benchmarks/manifest_cost.py [SIZE_MIB] [REPS]
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import fastckpt
from fastckpt import manifest

HOLDER = ("import os, sys, time\n"
          "b = bytearray(b'\\x5a') * ({size} << 20)\n"
          "open(sys.argv[1], 'w').write('ready')\n"
          "while True: time.sleep(1)\n")


def drop_cache(d: str) -> None:
    for name in os.listdir(d):
        fd = os.open(os.path.join(d, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn, reps: int, before=None) -> list:
    out = []
    for _ in range(reps):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def show(what: str, times: list) -> None:
    ms = [t * 1000 for t in times]
    print(f"{what:48s} median {statistics.median(ms):8.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f}, n={len(ms)})")


def many_small(base: str, reps: int, processes: int = 200) -> None:
    """write() and verify() of the ~1,400 small images of a PROCESSES-process checkpoint (sizes as CRIU's
    for busybox `sleep`s), wall and CPU time: what a many-process container's checkpoint and restore pay."""
    d = os.path.join(base, "many")
    os.mkdir(d)
    kinds = {"core": 1200, "fs": 20, "ids": 40, "mm": 1500, "pagemap": 90, "pages": 20480, "fdinfo": 60}
    for pid in range(1, processes + 1):
        for kind, size in kinds.items():
            with open(os.path.join(d, f"{kind}-{pid}.img"), "wb") as f:
                f.write(os.urandom(size))
    n = len(os.listdir(d))
    manifest.write(d)
    for what, fn in (("write", lambda: manifest.write(d)), ("verify", lambda: manifest.verify(d))):
        cpu = []

        def run():
            t0 = time.process_time()
            fn()
            cpu.append(time.process_time() - t0)

        show(f"manifest.{what}() of {n} small images (hot cache)", timed(run, reps))
        show(f"  its CPU time", cpu)


def main() -> int:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    base = tempfile.mkdtemp(prefix="fastckpt-manifest-bench-", dir="/var/tmp")
    ready = os.path.join(base, "ready")
    with open(os.devnull, "r+b") as null:
        p = subprocess.Popen([sys.executable, "-c", HOLDER.format(size=size), ready], stdin=null, stdout=null,
                             stderr=null, start_new_session=True)
    try:
        while not os.path.exists(ready):
            if p.poll() is not None:
                raise SystemExit(f"the memory holder exited with {p.returncode}")
            time.sleep(0.05)
        images = os.path.join(base, "images")

        def checkpoint():
            shutil.rmtree(images, ignore_errors=True)
            fastckpt.checkpoint(pid=p.pid, image_path=images, leave_running=True)

        real_write = manifest.write
        inside: list = []

        def timed_write(path, known=None):
            t0 = time.perf_counter()
            real_write(path, known)
            inside.append(time.perf_counter() - t0)

        with_m, without = [], []
        try:
            for _ in range(reps):  # interleaved: writeback of the previous images weighs on both alike
                manifest.write = timed_write
                with_m += timed(checkpoint, 1)
                manifest.write = lambda path, known=None: None
                without += timed(checkpoint, 1)
        finally:
            manifest.write = real_write
        checkpoint()
        pages = sum(os.path.getsize(os.path.join(images, n)) for n in os.listdir(images) if n.startswith("pages-"))
        total = sum(os.path.getsize(os.path.join(images, n)) for n in os.listdir(images))
        print(f"checkpoint of a process holding {size} MiB: {total / 2**20:.0f} MiB of images "
              f"({pages / 2**20:.0f} MiB of pages), {len(os.listdir(images))} files; "
              f"{os.cpu_count()} CPUs, {manifest.THREADS} threads, chunks of {manifest.CHUNK_SIZE >> 20} MiB")
        show("checkpoint with the manifest", with_m)
        show("checkpoint without the manifest", without)
        show("manifest.write() within those checkpoints", inside)
        show("manifest.write() (hot cache)", timed(lambda: manifest.write(images), reps))
        show("manifest.verify() (hot cache)", timed(lambda: manifest.verify(images), reps))
        show("manifest.verify() (images dropped from cache)",
             timed(lambda: manifest.verify(images), reps, lambda: drop_cache(images)))
        show("manifest.check_structure() (no manifest)", timed(lambda: manifest.check_structure(images), reps))
        sizes = {n: os.path.getsize(os.path.join(images, n)) for n in os.listdir(images)
                 if manifest.is_checkpoint_file(n)}
        for algorithm in manifest._ALGORITHMS:  # the one written now and the earlier CRC32, side by side
            show(f"checksums, {algorithm} (hot cache)",
                 timed(lambda: manifest.checksums(images, sizes, algorithm=algorithm), reps))
        many_small(base, max(reps, 15))
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
