"""runc's state root: loading a container, its status, and destroying it.

Reads what runc 1.1 writes to ``<root>/<id>/state.json``; runc itself is not
executed on these paths.
"""
from __future__ import annotations

import errno
import json
import os
import re
import time

from ._record import Record
from .errors import ContainerNotFound, Error, UsageError

DEFAULT_ROOT = "/run/runc"
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
DESCRIPTORS_FILE = "descriptors.json"

# runc's rule for container ids.
_ID_RE = re.compile(r"[\w+\-.]+", re.ASCII)

CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"


def validate_id(container_id: str) -> str:
    if not container_id:
        raise UsageError("container id cannot be empty")
    if not _ID_RE.fullmatch(container_id) or container_id in (".", ".."):
        raise UsageError(f"invalid container id {container_id!r}")
    return container_id


def proc_start_time(pid: int) -> int | None:
    """The start time (field 22 of /proc/PID/stat), or None if there is no such live process."""
    from .proctree import stat

    st = stat(pid)
    if st is None or st[1][0] in (b"Z", b"X"):  # none, a zombie or dead
        return None
    return int(st[1][19])


class Container(Record):
    """A container as runc's state root describes it."""

    id: str
    root: str
    state: dict

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, self.id)

    @property
    def config(self) -> dict:
        return self.state["config"]

    @property
    def init_pid(self) -> int:
        return int(self.state["init_process_pid"])

    @property
    def rootfs(self) -> str:
        return self.config["rootfs"]

    @property
    def cgroup_paths(self) -> dict[str, str]:
        return self.state.get("cgroup_paths") or {}

    @property
    def external_descriptors(self) -> list[str]:
        return self.state.get("external_descriptors") or []

    @property
    def bundle(self) -> str | None:
        for label in self.config.get("labels") or []:
            if label.startswith("bundle="):
                return label[len("bundle="):]
        return None

    def namespace_path(self, ns_type: str) -> str | None:
        """The path given in the config for a namespace (external), or None."""
        for ns in self.config.get("namespaces") or []:
            if ns.get("type") == ns_type and ns.get("path"):
                return ns["path"]
        return None

    def has_own_netns(self) -> bool:
        """A network namespace made for the container (not joined by path)."""
        return self.has_namespace("NEWNET") and not self.namespace_path("NEWNET")

    def has_namespace(self, ns_type: str) -> bool:
        return any(ns.get("type") == ns_type for ns in self.config.get("namespaces") or [])

    @property
    def freezer_state_file(self) -> str | None:
        """The file that freezes the container's cgroup (v1 freezer.state or v2 cgroup.freeze)."""
        paths = self.cgroup_paths
        if paths.get("freezer"):
            return os.path.join(paths["freezer"], "freezer.state")
        if paths.get(""):
            f = os.path.join(paths[""], "cgroup.freeze")
            if os.path.exists(f):
                return f
        return None

    @property
    def freeze_cgroup(self) -> str | None:
        """What CRIU's freeze_cgroup option wants: the cgroup directory whose freezer.state (v1)
        or cgroup.freeze (v2) freezes the container (runc gives it the same)."""
        f = self.freezer_state_file
        return os.path.dirname(f) if f else None

    def is_frozen(self) -> bool:
        f = self.freezer_state_file
        if not f:
            return False
        try:
            with open(f) as fh:
                v = fh.read().strip()
        except OSError:
            return False
        return v in ("FROZEN", "FREEZING", "1")

    def thaw(self) -> None:
        f = self.freezer_state_file
        if f:
            with open(f, "w") as fh:
                fh.write("THAWED" if f.endswith("freezer.state") else "0")

    def freeze(self) -> None:
        f = self.freezer_state_file
        if not f:
            raise Error(f"container {self.id!r} has no freezer cgroup")
        with open(f, "w") as fh:
            fh.write("FROZEN" if f.endswith("freezer.state") else "1")

    def freeze_and_wait(self, timeout: float = 10.0) -> None:
        """Freeze the container's cgroup and wait until the kernel says FROZEN.

        Polled finely (the kernel is done in a millisecond or two), where CRIU
        would poll every 100 ms; CRIU then takes the frozen cgroup as it is.
        On a timeout the cgroup is thawed again and an error raised.
        """
        f = self.freezer_state_file
        if not f:
            raise Error(f"container {self.id!r} has no freezer cgroup")
        v2 = not f.endswith("freezer.state")
        deadline = time.monotonic() + timeout
        delay = 0.0002
        with open(f, "r+") as fh:
            fh.write("1" if v2 else "FROZEN")
            fh.flush()
            while True:
                if v2:
                    done = _cgroup_v2_frozen(os.path.dirname(f))
                else:
                    fh.seek(0)
                    done = fh.read().strip() == "FROZEN"
                if done:
                    return
                if time.monotonic() > deadline:
                    break
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
        self.thaw()
        raise Error(f"cannot freeze container {self.id!r}: its cgroup is not frozen after {timeout:g} s",
                    errno=errno.ETIMEDOUT)

    def status(self) -> str:
        """runc's status: created, running, paused or stopped."""
        start = proc_start_time(self.init_pid)
        alive = start is not None and start == int(self.state.get("init_process_start") or 0)
        if alive and self.is_frozen():
            return PAUSED
        if not alive:
            return STOPPED
        if os.path.exists(os.path.join(self.state_dir, EXEC_FIFO)):
            return CREATED
        return RUNNING

    def destroy(self, timeout: float = 2.0) -> None:
        """Remove a stopped container from runc's root, as `runc delete` does.

        Its cgroups are removed (waiting briefly for exiting tasks) and then its
        state directory.
        """
        from . import cgroups

        try:
            cgroups.remove(self.cgroup_paths.values(), timeout, strict=True)
        except OSError as e:
            raise Error(f"cannot remove cgroup {e.filename} of container {self.id!r}: {e.strerror}",
                        errno=e.errno) from e
        remove_state_dir(self.state_dir)


def _mounts_under(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == path or mnt.startswith(prefix):
                out.append(mnt)
    return out


def remove_state_dir(path: str) -> None:
    """Remove a container's state directory without ever following a mount out of it.

    A mount left inside it (CRIU's root, a bind mount of the rootfs) is
    detached first, so the rootfs behind it can never be deleted.
    """
    from . import _libc

    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        _libc.umount(mnt)
    if _mounts_under(path):
        raise Error(f"cannot remove {path}: a mount is still inside it")
    remove_tree(path)


def remove_tree(path: str) -> None:
    """shutil.rmtree(PATH, ignore_errors=True), without importing shutil (~1.5 ms of a command's time, with
    bz2 and lzma) for the usual directory of files only (a state directory, a restore's linked images)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:
        fd = -1
    try:
        if fd < 0:
            raise NotADirectoryError(path)
        with os.scandir(fd) as it:
            entries = list(it)
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                raise IsADirectoryError(e.name)
            os.unlink(e.name, dir_fd=fd)
        os.close(fd)
        fd = -1
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    finally:
        if fd >= 0:
            os.close(fd)


def _cgroup_v2_frozen(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "frozen 1" in f.read()
    except OSError:
        return False


def load(container_id: str, root: str = DEFAULT_ROOT) -> Container:
    """Load a container from runc's state root; the error names the id."""
    validate_id(container_id)
    path = os.path.join(root, container_id, STATE_FILE)
    try:
        with open(path, "rb") as f:
            state = json.load(f)
    except FileNotFoundError:
        raise ContainerNotFound(f"container {container_id!r} does not exist (in runc root {root})") from None
    except (OSError, ValueError) as e:
        raise Error(f"cannot read the state of container {container_id!r} ({path}): {e}") from e
    if not isinstance(state, dict) or "config" not in state or "init_process_pid" not in state:
        raise Error(f"the state of container {container_id!r} ({path}) is not runc's state.json")
    return Container(container_id, root, state)


def list_ids(root: str = DEFAULT_ROOT) -> list[str]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n, STATE_FILE)))
