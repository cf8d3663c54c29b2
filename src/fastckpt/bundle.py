"""Small OCI bundles with a busybox rootfs, for the demo and the tests.

The container's stdio must be /dev/null or pipes: a host log file as its
stdout is a file CRIU cannot resolve inside the container.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = ("sh", "sleep", "cat", "echo", "ip", "nc", "ls", "ps", "kill", "true", "flock", "mkdir", "rm", "wc",
           "head", "dd", "touch", "grep", "seq", "ifconfig", "wget", "httpd", "hostname")

# A counter that advances ten times a second: the demo and the tests read it.
COUNTER_SCRIPT = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"


def busybox() -> str:
    for p in BUSYBOX_CANDIDATES:
        if os.path.exists(p):
            return p
    raise FileNotFoundError("busybox is not installed (apt-get install busybox-static; `make deps` does)")


def make_rootfs(rootfs: str) -> None:
    for d in ("bin", "tmp", "proc", "sys", "dev", "etc", "run"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    shutil.copy2(busybox(), os.path.join(rootfs, "bin", "busybox"))
    for a in APPLETS:
        link = os.path.join(rootfs, "bin", a)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/bin/sh\n")


def make_bundle(path: str, args: Sequence[str] = ("sh", "-c", COUNTER_SCRIPT), *,
                network_ns: str | None = "", mounts: Sequence[dict] = (), runc: str = "runc") -> str:
    """Write an OCI bundle at PATH running ARGS; returns PATH.

    ``network_ns``: "" for a new network namespace, a path to join one, None
    for the host's.
    """
    os.makedirs(path, exist_ok=True)
    rootfs = os.path.join(path, "rootfs")
    make_rootfs(rootfs)
    cfg_path = os.path.join(path, "config.json")
    if os.path.exists(cfg_path):
        os.unlink(cfg_path)
    subprocess.run([runc, "spec"], cwd=path, check=True)
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = list(args)
    cfg["root"]["readonly"] = False
    cfg["hostname"] = "fastckpt"
    ns: list[dict] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "network"]
    if network_ns is not None:
        ns.append({"type": "network", "path": network_ns} if network_ns else {"type": "network"})
    cfg["linux"]["namespaces"] = ns
    cfg["mounts"].extend(mounts)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def run_detached(container_id: str, bundle: str, *, root: str | None = None, runc: str = "runc") -> None:
    """`runc run -d` with the container's stdio on /dev/null.

    runc's own errors go to a log file (a pipe as stderr would be inherited by
    the container and never reach EOF); a failure raises RuntimeError with them.
    """
    fd, log = tempfile.mkstemp(prefix="fastckpt-runc-", suffix=".log")
    os.close(fd)
    cmd = [runc, "--log", log, "--log-format", "json"] + (["--root", root] if root else [])
    cmd += ["run", "-d", "-b", bundle, container_id]
    try:
        with open(os.devnull, "r+b") as null:
            rc = subprocess.run(cmd, stdin=null, stdout=null, stderr=null).returncode
        if rc:
            raise RuntimeError(f"{' '.join(cmd)} failed: {runc_log_errors(log) or f'exit {rc}'}")
    finally:
        os.unlink(log)


def runc_log_errors(path: str) -> str:
    msgs = []
    with open(path, errors="replace") as f:  # runc may log bytes that are not UTF-8
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") in ("error", "fatal"):
                msgs.append(rec.get("msg", ""))
    return "; ".join(msgs)
