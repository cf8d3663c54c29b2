"""A process tree's members and the wait until their ids are free again (after a dump ended the tree)."""
from __future__ import annotations

import time

from . import criu_proc


# A dump that ends a process tree leaves its processes as zombies until their new parent (PID 1, or a
# subreaper) reaps them -- ~1.5 s on some hosts -- and a zombie still holds its pid and its process group
# and session ids, which a restore of the tree needs: the checkpoint returns once they are free.
TREE_IDS_WAIT = 10.0


def stat(pid: int) -> tuple[bytes, list[bytes]] | None:
    """/proc/PID/stat of a process (a zombie's too): (its comm, the fields after it: state, ppid, pgrp,
    session, ..., the start time at [19]), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        end = data.rindex(b")")
    except (OSError, ValueError):
        return None
    return data[data.find(b"(") + 1:end], data[end + 2:].split()


def _stat_start(pid: int) -> bytes | None:
    """PID's start time (a zombie's too), or None when there is no such process."""
    st = stat(pid)
    return st[1][19] if st is not None and len(st[1]) > 19 else None


def tree_members(pid: int) -> list[tuple[int, bytes]]:
    """The processes below PID, each with its start time (which tells it from a later one of its pid), and
    PID itself when its parent is PID 1 (a detached or restored tree; another parent reaps it when it
    will -- fastckpt's caller may be that parent)."""
    out = []
    st = stat(pid)
    root_reaped_by_init = st is not None and st[1][1:2] == [b"1"]
    for p in ([pid] if root_reaped_by_init else []) + criu_proc.descendants(pid):
        start = _stat_start(p)
        if start is not None:
            out.append((p, start))
    return out


def wait_ids_free(members: list[tuple[int, bytes]], timeout: float = TREE_IDS_WAIT) -> None:
    """Wait (at most TIMEOUT) until the processes MEMBERS are gone, reaped by their parent."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while members:
        members = [(p, start) for p, start in members if _stat_start(p) == start]
        if not members or time.monotonic() > deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
