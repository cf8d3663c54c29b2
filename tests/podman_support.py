"""A private podman for the archive tests: its own containers.conf, storage, run and tmp directories.

podman 4.3 (Debian 12, installed by `make deps`) runs here without systemd
with a containers.conf of the test's own (passed by CONTAINERS_CONF):
cgroupfs, the file events logger, runc (Debian's crun has no CRIU support),
ulimits this host's hard limits allow and no pids limit (the simulated
cgroup v2 host has no pids controller).  Every command gets
``--root/--runroot/--tmpdir`` below the test's directory and containers run
with ``--network none``: nothing of the host's podman is touched, and
``cleanup()`` removes every container, unmounts what podman mounted there and
deletes the directory.

Its stdout/stderr go to files, never pipes: conmon outlives ``podman run -d``
and would keep a pipe open.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from typing import List, Optional

from fastckpt_testing.cli import Result, run
from fastckpt_testing.plugin import skip_or_fail, torn_down
from restore_support import mounts_under

CONF = """[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"

[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
# no pids limit: a unified (cgroup v2) host here lacks the pids controller, and runc fails to set one
pids_limit = 0
"""


def why_not() -> Optional[str]:
    """Why podman cannot be used here, or None."""
    if os.geteuid() != 0:
        return "podman tests need root"
    if not shutil.which("podman"):
        return "podman is not installed (`make deps` installs it)"
    if not shutil.which("runc"):
        return "runc is not installed"
    return None


def require() -> None:
    """Skip (locally) or fail (CI=true) when podman cannot run: a skipped test in CI hides a missing piece."""
    reason = why_not()
    if reason:
        skip_or_fail(reason)


def private():
    """The body of a `podman` fixture (`yield from ps.private()`): a Podman of the test's own, removed
    afterwards; the test fails if podman left anything."""
    import tempfile

    require()
    p = Podman(tempfile.mkdtemp(prefix="fcpod-"))  # podman wants a runroot shorter than 50 characters
    yield from torn_down(p, p.cleanup, "podman cleanup")


class Podman:
    def __init__(self, base: str):
        self.base = base
        os.makedirs(base, exist_ok=True)
        self.conf = os.path.join(base, "containers.conf")
        with open(self.conf, "w") as f:
            f.write(CONF)
        self.dirs = {d: os.path.join(base, d) for d in ("storage", "run", "tmp")}
        self.env = dict(os.environ, CONTAINERS_CONF=self.conf)
        self.names: List[str] = []

    def cmd(self, *args: str) -> List[str]:
        return ["podman", "--root", self.dirs["storage"], "--runroot", self.dirs["run"],
                "--tmpdir", self.dirs["tmp"], *args]

    def __call__(self, *args: str, timeout: float = 180) -> Result:
        return run(self.cmd(*args), timeout=timeout, env=self.env)

    def ok(self, *args: str, timeout: float = 180) -> str:
        r = self(*args, timeout=timeout)
        assert r.returncode == 0, str(r)
        return r.stdout.strip()

    def import_rootfs(self, rootfs: str, name: str) -> str:
        """`tar -C ROOTFS -c . | podman import - NAME` (no registry here); returns the image's id."""
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        with open(os.devnull, "wb") as null:
            r = subprocess.run(self.cmd("import", "-", name), stdin=tar.stdout, stdout=null,
                               stderr=subprocess.PIPE, env=self.env, timeout=180)
        tar.stdout.close()
        assert tar.wait() == 0 and r.returncode == 0, f"podman import: {r.stderr.decode(errors='replace')}"
        return self.ok("image", "inspect", "--format", "{{.Id}}", name)

    def run(self, image: str, *args: str, name: Optional[str] = None) -> str:
        name = name or f"fcp-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        self.ok("run", "-d", "--network", "none", "--name", name, image, *args)
        return name

    def track(self, name: str) -> None:
        self.names.append(name)

    def exec_cat(self, name: str, path: str) -> Optional[str]:
        r = self("exec", name, "cat", path, timeout=60)
        return r.stdout if r.returncode == 0 else None

    def status(self, name: str) -> Optional[str]:
        r = self("inspect", "--format", "{{.State.Status}}", name)
        return r.stdout.strip() if r.returncode == 0 else None

    def cleanup(self) -> List[str]:
        """Remove every container, then podman's mounts and files below the base directory."""
        problems = []
        for name in self.names:
            self("rm", "-f", "-t", "0", name)
        r = self("ps", "-aq")
        if r.returncode == 0 and r.stdout.strip():
            problems.append(f"podman containers left: {r.stdout.split()}")
            self("rm", "-af", "-t", "0")
        # not `podman system reset`: it also removes networks, which are the host's, not the test's
        for m in sorted(mounts_under(self.base), key=len, reverse=True):
            problems.append(f"mount {m}")
            subprocess.run(["umount", "-l", m], stdin=subprocess.DEVNULL, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        return problems


def read_log(text: Optional[str]) -> List[int]:
    """The counter's count.log as read through `podman exec cat` (a last, partial line left out)."""
    if not text:
        return []
    return [int(l) for l in text.split("\n")[:-1] if l.strip()]
