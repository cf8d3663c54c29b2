"""A kernel-probe cache for CRIU on hosts whose /run is not a tmpfs.

CRIU probes the kernel at every start (~40 ms) unless it finds its cache,
/run/criu.kdat; it only *writes* that cache on a tmpfs (so that a reboot,
perhaps into another kernel, drops it), but it reads it from anywhere.  On a
host whose /run is a disk, fastckpt has CRIU write the cache in a private
mount namespace with a tmpfs on /run, copies it to /run/criu.kdat and keys it
to the boot id and the criu binary: a reboot or another CRIU makes it anew.

FASTCKPT_KDAT_CACHE=0 turns this off.  Where /run is a tmpfs, CRIU's own
cache is used and nothing here runs.
"""
from __future__ import annotations

import os

from .atomicfile import write_atomic

RUN = "/run"
KDAT = os.path.join(RUN, "criu.kdat")
STAMP = os.path.join(RUN, "criu.kdat.fastckpt")
ENV = "FASTCKPT_KDAT_CACHE"

_ready: str | None = None  # the key this process already checked


def _run_is_tmpfs() -> bool:
    with open("/proc/self/mountinfo") as f:
        fstype = None
        for line in f:
            parts = line.split()
            if parts[4] == RUN:
                fstype = parts[parts.index("-") + 1]
    return fstype == "tmpfs"


def _key(criu: str) -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    st = os.stat(criu)
    return f"{boot} {criu} {st.st_mtime_ns} {st.st_size}\n"


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read())  # the key holds a path: its bytes, as os.fsencode wrote them
    except OSError:
        return None


def generate(criu: str) -> bool:
    """Have CRIU probe the kernel once and keep the result in /run/criu.kdat."""
    import subprocess

    script = ('mount -t tmpfs -o size=1m,mode=0700 fastckpt-kdat /run && "$0" check >/dev/null 2>&1; '
              'cat /run/criu.kdat')
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, criu],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    if r.returncode != 0 or len(r.stdout) < 16:
        return False
    write_atomic(KDAT, r.stdout)
    return True


def ensure(criu: str) -> None:
    """Make sure CRIU will find a valid kernel-probe cache (no-op after the first call)."""
    global _ready
    if _ready is not None or os.environ.get(ENV, "1") == "0" or os.geteuid() != 0:
        return
    try:
        key = _key(criu)
        if _run_is_tmpfs():
            _ready = key
            return
        if _read(STAMP) == key and os.path.exists(KDAT):
            _ready = key
            return
        try:
            os.unlink(KDAT)  # stale: another boot or another CRIU
        except FileNotFoundError:
            pass
        if generate(criu):
            write_atomic(STAMP, os.fsencode(key))
        _ready = key
    except OSError:
        _ready = ""  # no cache: CRIU probes as usual
