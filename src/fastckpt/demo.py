"""`make demo`: a busybox container under runc, checkpointed and restored by fastckpt.

Shows the counter before, the checkpoint and what it wrote, the restore, and
the counter going on from where it stopped; removes everything it made.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import bundle, checkpoint, runc
from .errors import Error
from .restorer import restore


def _count(rootfs: str) -> int:
    try:
        with open(os.path.join(rootfs, "tmp", "count")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _wait_count(rootfs: str, above: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = _count(rootfs)
        if n > above:
            return n
        time.sleep(0.05)
    return _count(rootfs)


def _runc_list(root: str) -> str:
    return subprocess.run(["runc", "--root", root, "list"], capture_output=True, text=True).stdout.rstrip()


def main() -> int:
    if os.geteuid() != 0:
        print("fastckpt demo: must run as root (CRIU needs it)", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="fastckpt-demo-")
    root = os.path.join(work, "runc-root")
    cid = f"fastckpt-demo-{os.getpid()}"
    bdir = os.path.join(work, "bundle")
    images = os.path.join(work, "checkpoint")
    rootfs = os.path.join(bdir, "rootfs")
    started = False
    try:
        bundle.make_bundle(bdir)
        bundle.run_detached(cid, bdir, root=root)
        started = True
        before = _wait_count(rootfs, 3)
        print(f"1. container {cid} runs under runc (state root {root}); its counter is at {before}")
        print(_runc_list(root))

        res = checkpoint(cid, root=root, image_path=images)
        at = _count(rootfs)
        print(f"\n2. fastckpt checkpoint: {res.wall_time * 1000:.0f} ms; counter stopped at {at}; "
              f"images in {res.image_path} (mode {oct(os.stat(images).st_mode & 0o777)}):")
        total = sum(res.files.values())
        for name, size in res.files.items():
            print(f"   {size:>8}  {name}")
        print(f"   {total:>8}  bytes in {len(res.files)} files")
        print(f"   runc list now: {_runc_list(root).splitlines()[1:] or '(no containers)'}")
        time.sleep(0.3)
        print(f"   counter after 0.3 s: {_count(rootfs)} (nothing runs)")

        r = restore(cid, root=root, image_path=images, bundle=bdir, detach=True)
        after = _wait_count(rootfs, at)
        print(f"\n3. fastckpt restore: {r.wall_time * 1000:.0f} ms; the container is back under runc "
              f"(pid {r.pid}) and its counter goes on: {at} -> {after}")
        print(_runc_list(root))
        lo = subprocess.run(["runc", "--root", root, "exec", cid, "cat", "/tmp/count"], capture_output=True,
                            text=True)
        print(f"   runc exec {cid} cat /tmp/count: {lo.stdout.strip()}")
        ok = after > at
        print("\ndemo: OK" if ok else "\ndemo: FAILED (the counter did not advance)")
        return 0 if ok else 1
    except (Error, OSError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"fastckpt demo: {getattr(e, 'details', e)}", file=sys.stderr)
        return 1
    finally:
        if started:
            with open(os.devnull, "wb") as null:
                subprocess.run(["runc", "--root", root, "kill", cid, "KILL"], stderr=null)
                time.sleep(0.1)
                subprocess.run(["runc", "--root", root, "delete", "-f", cid], stderr=null)
        if os.path.isdir(os.path.join(root, cid)):
            runc.remove_state_dir(os.path.join(root, cid))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
