"""Helpers of the checkpoint tests: images, fake runc state, the host-wide pipe limit of lazy pages.

What every test shares -- waiting, the container model and its tear-down, process trees, the CLI
runner and the error asserter -- is the fixture layer tests/fastckpt_testing/; its names are
imported here for the tests that use them as ``cs.NAME``.
"""
from __future__ import annotations

import json
import os
from typing import Callable, List, Optional

from fastckpt_testing.cli import assert_error, assert_ok, fastckpt, run_quiet  # noqa: F401
from fastckpt_testing.containers import (  # noqa: F401
    FREEZER_ROOT, LAYOUT, UNIFIED, Container, ContainerFactory, freezer_state, new_id, runc, runc_ids, thaw)
from fastckpt_testing.plugin import in_ci, integration_skip_reason, require_integration  # noqa: F401
from fastckpt_testing.procs import (  # noqa: F401
    COUNTER, TCP_ESTABLISHED, TCP_LISTEN, ProcTree, ProcTreeFactory, established, free_port, listening, tcp_sockets)
from fastckpt_testing.waiting import WAIT, proc_alive, read_int, wait_advancing, wait_until  # noqa: F401

# the line of /proc/PID/cgroup that names a container's freezing cgroup (a grep pattern)
FREEZER_LINE = "^0::" if UNIFIED else ":freezer:"


def images(path: str, prefix: str = "") -> List[str]:
    return sorted(n for n in os.listdir(path) if n.startswith(prefix)) if os.path.isdir(path) else []


def assert_images(path) -> List[str]:
    """PATH holds a CRIU dump: pstree.img, inventory.img and memory pages."""
    names = images(str(path))
    for required in ("pstree.img", "inventory.img"):
        assert required in names, f"{required} missing from {path}: {names}"
    assert any(n.startswith("pages-") for n in names), f"no pages-*.img in {path}: {names}"
    return names


# --- fake runc state (unit tests) -------------------------------------------------------

def my_start_time() -> int:
    from fastckpt.runc import proc_start_time as _proc_start_time

    t = _proc_start_time(os.getpid())
    assert t is not None
    return t


def write_fake_state(root, cid, *, pid=None, start=None, fifo=False, freezer=None, **extra):
    """A runc 1.1-like state.json for CID under ROOT; the init process is us unless told."""
    d = root / cid
    d.mkdir(parents=True)
    state = {
        "id": cid,
        "init_process_pid": os.getpid() if pid is None else pid,
        "init_process_start": my_start_time() if start is None else start,
        "config": {"rootfs": str(root / "rootfs"), "labels": ["bundle=/some/bundle"],
                   "namespaces": [{"type": "NEWPID"}, {"type": "NEWNET", "path": "/proc/1/ns/net"}]},
        "cgroup_paths": {"freezer": str(freezer)} if freezer else {},
        "external_descriptors": ["/dev/null", "/dev/null", "/dev/null"],
    }
    state.update(extra)
    (d / "state.json").write_text(json.dumps(state))
    if fifo:
        os.mkfifo(d / "exec.fifo")
    return d


# --- lazy pages: the host-wide pipe limit, raised only on request ----------------------------------

RAISE_PIPE_MAX_ENV = "FASTCKPT_TEST_RAISE_PIPE_MAX"
RAISED_PIPE_MAX = 4 << 20  # above CRIU's lazy page server's pipe (~3.2 MiB)


def raise_pipe_max_size() -> Optional[Callable[[], None]]:
    """FASTCKPT_TEST_RAISE_PIPE_MAX=1: let CRIU's lazy page server size its pipe (a host-wide sysctl,
    so only on request, for the caller's test). Returns what puts it back (None: nothing changed)."""
    from fastckpt import migration

    if migration.lazy_pages_problem() is None:
        return None
    return _set_pipe_max_size(RAISED_PIPE_MAX)


def lower_pipe_max_size() -> Optional[Callable[[], None]]:
    """FASTCKPT_TEST_RAISE_PIPE_MAX=1 on a host whose limit lets CRIU size its pipe: the kernel's
    default (1 MiB) for the caller's test, where lazy pages must be refused."""
    from fastckpt import migration

    if migration.lazy_pages_problem() is not None:
        return None
    return _set_pipe_max_size(1 << 20)


def _set_pipe_max_size(value: int) -> Optional[Callable[[], None]]:
    from fastckpt import migration

    if os.environ.get(RAISE_PIPE_MAX_ENV) != "1":
        return None
    with open(migration.PIPE_MAX_SIZE_FILE) as f:
        old = f.read().strip()
    with open(migration.PIPE_MAX_SIZE_FILE, "w") as f:
        f.write(str(value))

    def put_back() -> None:
        with open(migration.PIPE_MAX_SIZE_FILE, "w") as f:
            f.write(old)
    return put_back


def lazy_pages_unavailable() -> Optional[str]:
    """Why a lazy migration cannot be done here (after raise_pipe_max_size), with what would fix it."""
    from fastckpt import criu, migration

    problem = migration.lazy_pages_problem(criu.criu_binary())
    if problem and os.environ.get(RAISE_PIPE_MAX_ENV) != "1" and migration.lazy_pages_problem() is not None:
        problem += f" (set {RAISE_PIPE_MAX_ENV}=1 to let the tests raise it for their duration)"
    return problem
