"""What CRIU must be told is external to a runc container, derived from its config and state as runc
derives it: bind mounts (their destinations resolved in the rootfs), cgroup mounts, masked paths,
devices, namespaces joined by path; and the kind of network namespace it has."""
from __future__ import annotations

import errno
import os

from . import cgroups, runc
from .errors import Error
from .options import NETNS_HOST, NETNS_OWN, NETNS_OWN_LO

# runc's keys for namespaces that a container joins by path (external to CRIU).
_EXTERNAL_NS = {"NEWNET": ("net", "extRootNetNS"), "NEWPID": ("pid", "extRootPidNS")}


def _cgroup_bind_mounts(pid: int, dest: str) -> list[str]:
    """Mount points below DEST (the container's cgroup mount) seen in its mountinfo."""
    prefix = dest.rstrip("/") + "/"
    out = []
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                parts = line.split()
                sep = parts.index("-")
                mnt, fstype = parts[4], parts[sep + 1]
                if mnt.startswith(prefix) and fstype in ("cgroup", "cgroup2"):
                    out.append(mnt)
    except (OSError, ValueError):
        pass
    return out


def resolve_in_root(rootfs: str, path: str) -> str:
    """PATH inside ROOTFS with its symlinks resolved as the container sees them (each link's target
    taken inside ROOTFS, never above it), as runc's securejoin does; returns the path inside ROOTFS."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    out: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if out:
                out.pop()
            continue
        here = os.path.join(rootfs, *out, part)
        try:
            target = os.readlink(here)
        except OSError:  # not a link (or not there): kept as it is
            out.append(part)
            continue
        hops += 1
        if hops > 255:
            raise Error(f"too many levels of symbolic links in {path} (in {rootfs})", errno=errno.ELOOP)
        if target.startswith("/"):
            out = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return "/" + "/".join(out)


def container_external_mounts(ct: runc.Container) -> list[tuple[str, str]]:
    """(key, value) pairs of the container's external mounts, as runc gives them to CRIU."""
    cfg = ct.config
    pid = ct.init_pid
    ext: dict[str, str] = {}
    # a cgroup namespace, or a cgroup v2 host, mounts the container's cgroups for real (runc's rule)
    cgroupns = ct.has_namespace("NEWCGROUP") or cgroups.layout() == cgroups.UNIFIED
    for m in cfg.get("mounts") or []:
        dest = m["destination"]
        if m.get("device") == "bind":
            # a destination through a symlink was mounted where the link leads (runc: securejoin)
            dest = resolve_in_root(ct.rootfs, dest)
            ext[dest] = dest
        elif m.get("device") == "cgroup" and not cgroupns:
            for mnt in _cgroup_bind_mounts(pid, dest):
                ext[mnt] = mnt
    for path in cfg.get("mask_paths") or []:
        # masked files are /dev/null bind mounts; masked dirs are tmpfs (real mounts)
        if not os.path.isdir(f"/proc/{pid}/root{path}"):
            ext[path] = "/dev/null"
    for dev in cfg.get("devices") or []:
        if dev.get("path"):
            ext.setdefault(dev["path"], dev["path"])
    return list(ext.items())


def container_netns(ct: runc.Container) -> str:
    """NETNS_OWN_LO, NETNS_OWN or NETNS_HOST (a namespace joined by path counts as the host's)."""
    if not ct.has_own_netns():
        return NETNS_HOST
    try:
        with open(f"/proc/{ct.init_pid}/net/dev") as f:
            names = {line.split(":", 1)[0].strip() for line in f.readlines()[2:]}
    except OSError:
        return NETNS_OWN
    return NETNS_OWN_LO if names == {"lo"} else NETNS_OWN


def container_externals(ct: runc.Container) -> list[str]:
    out = []
    for ns_type, (name, key) in _EXTERNAL_NS.items():
        path = ct.namespace_path(ns_type)
        if path:
            try:
                ino = os.stat(path).st_ino
            except OSError as e:
                raise Error(f"cannot stat namespace {path} of container {ct.id!r}: {e.strerror}") from e
            out.append(f"{name}[{ino}]:{key}")
    return out
