"""The pytest plugin of fastckpt's tests and benchmarks (registered by the top-level conftest.py).

Integration tests (``@pytest.mark.integration``) run real CRIU dumps of real
runc containers and process trees: when not root, when criu, runc or busybox
is missing or the host's cgroups cannot hold containers, they are skipped
with the reason, and FAIL with it in CI (CI=true: a green run that tested
nothing is a defect).  The suite runs in whatever cgroup layout the host has
(the header says which); FASTCKPT_TEST_LAYOUT=unified (set by `make test` for
its second run, in a cgroup2 mount namespace) makes sure it is that one.
Every fixture cleans up what it started, also when the test failed:
containers live in a private runc root (``runc_root``) with uuid-based ids,
process trees are killed by the pid and process group the fixture holds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Optional

import pytest

from .cli import criu_left, kill_pid, criu_pids_in
from .containers import LAYOUT, Container, ContainerFactory, remove_lock_files, runc_ids
from .mem import MemContainers, build_mem
from .procs import ProcTreeFactory, free_port, listening
from .waiting import wait_until


# --- prerequisites -----------------------------------------------------------------------------

def integration_skip_reason() -> Optional[str]:
    """Why integration tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "integration tests need root (CRIU dumps and runc containers)"
    for tool in ("criu", "runc"):
        if not shutil.which(tool):
            return f"{tool} is not installed (not on PATH={os.environ.get('PATH', '')})"
    try:
        from fastckpt import bundle, cgroups
        bundle.busybox()
    except (ImportError, FileNotFoundError) as e:
        return f"cannot build test bundles: {e}"
    return cgroups.unsupported()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> None:
    """A prerequisite is missing: skip with REASON locally, FAIL with it in CI (a green run that tested
    nothing is a defect)."""
    if in_ci():
        pytest.fail(f"a prerequisite of the tests is missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_integration() -> None:
    """Skip (locally) or FAIL (in CI) without the prerequisites of the integration tests."""
    reason = integration_skip_reason()
    if reason:
        skip_or_fail(reason)


# --- hooks and fixtures ------------------------------------------------------------------------

def torn_down(thing, cleanup: Callable[[], List[str]], what: str):
    """A fixture's body (`yield from torn_down(...)`): THING, then CLEANUP(), which returns what it could
    not clean (or had to remove: a leftover); the test fails with that."""
    yield thing
    problems = cleanup()
    if problems:
        pytest.fail(f"{what}: " + "; ".join(problems))


def pytest_report_header(config):
    want = os.environ.get("FASTCKPT_TEST_LAYOUT")
    return [f"cgroup layout: {LAYOUT or 'none'}" + (f" (FASTCKPT_TEST_LAYOUT={want})" if want else "")]


def pytest_configure(config):
    # a suite started in the background by a script (`cmd &`) inherits SIGINT ignored, and so would every
    # command it starts: the tests' Ctrl-Cs would go unheard. A handler here is reset to the default at
    # the commands' exec, as a terminal's job has it.
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    want = os.environ.get("FASTCKPT_TEST_LAYOUT")
    if want and want != LAYOUT:
        raise pytest.UsageError(f"FASTCKPT_TEST_LAYOUT={want} but this host's cgroup layout is {LAYOUT or 'none'}")


def pytest_runtest_setup(item):
    if "integration" in item.keywords:
        require_integration()


@pytest.fixture
def runc_root(tmp_path_factory):
    """A private runc state root: pass it as `runc --root` and fastckpt's root=."""
    require_integration()
    root = str(tmp_path_factory.mktemp("runc-root"))
    yield root
    # anything a test created there without the container fixture (runc restore, say)
    leftovers = []
    for cid in runc_ids(root):
        ct = Container(cid, "", root)
        leftovers += ct.destroy()
    shutil.rmtree(root, ignore_errors=True)
    if leftovers:
        pytest.fail("cleanup of runc root failed: " + "; ".join(leftovers))


@pytest.fixture
def container(runc_root, tmp_path):
    """Factory: container(args=None, network_ns="", mounts=(), create_only=False) -> Container.

    Runs a busybox bundle (default: the /tmp/count counter) in ``runc_root``
    with a unique id; every container is killed, deleted and its cgroups
    thawed and removed afterwards.
    """
    factory = ContainerFactory(runc_root, str(tmp_path))
    yield from torn_down(factory, factory.cleanup, "container cleanup failed")


@pytest.fixture
def proc_tree():
    """Factory: proc_tree(args, new_session=True, count_file=None, ready_file=None) -> ProcTree.

    ``proc_tree.counter(path)`` starts a busybox counter writing PATH.  Stdio
    is /dev/null; teardown kills the root pid (and its process group when it
    got a session of its own).
    """
    require_integration()
    factory = ProcTreeFactory()
    yield factory
    factory.cleanup()


@pytest.fixture
def page_server(tmp_path):
    """Factory: page_server(images_dir) -> (subprocess.Popen, port) of a real `criu page-server`."""
    require_integration()
    started = []

    def start(images_dir):
        os.makedirs(images_dir, exist_ok=True)
        port = free_port()
        with open(os.devnull, "r+b") as null:
            p = subprocess.Popen(
                ["criu", "page-server", "--images-dir", str(images_dir), "--port", str(port),
                 "--address", "127.0.0.1", "-o", str(tmp_path / f"page-server-{port}.log"), "-v4"],
                stdin=null, stdout=null, stderr=null)
        started.append(p)
        wait_until(lambda: listening(port) or p.poll() is not None, f"criu page-server on port {port}")
        assert p.poll() is None, f"criu page-server exited with {p.returncode}"
        return p, port

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)

# --- the robustness tests' containers (tests/test_robust_*.py) ----------------------------------

@pytest.fixture(scope="session")
def mem_binary(tmp_path_factory):
    return build_mem(str(tmp_path_factory.mktemp("robust-mem")))


@pytest.fixture
def containers(runc_root, tmp_path, mem_binary):
    """Factory of MemContainers in the test's private runc root; all torn down and checked at the end
    (and no criu may be left working in the test's directory)."""
    factory = MemContainers(runc_root, str(tmp_path), mem_binary)
    yield factory
    ids = [ct.id for ct in factory.containers]
    problems = factory.cleanup()
    criu = criu_left(str(tmp_path))
    for p in criu:
        kill_pid(p)
    for cid in ids:
        remove_lock_files(cid)
    if problems or criu:
        pytest.fail(f"cleanup: {problems}; criu processes left: {criu}")


SLOW_CRIU = """#!{python}
import os, select, sys, time
if sys.argv[1:2] == ["swrk"]:  # fastckpt may start it ahead: the operation begins with its request
    select.select([int(sys.argv[2])], [], [])
open({mark!r}, "w").close()
time.sleep({delay})
os.execv({real!r}, [{real!r}] + sys.argv[1:])
"""


@pytest.fixture
def slow_criu(tmp_path):
    """Factory: slow_criu(mark, delay=1.0) -> environment variables that make fastckpt run a `criu` that,
    once its request has come, creates MARK, waits DELAY seconds, then execs the real criu (which reads
    that request).  It runs in CRIU's session: a signal to fastckpt's process group does not reach it.
    While it waits, fastckpt holds its lock and a container being checkpointed is frozen."""
    real = shutil.which("criu")
    assert real, "criu is not installed"
    made = []

    def make(mark: str, delay: float = 1.0) -> Dict[str, str]:
        wrapper = tmp_path / f"criu-wrapper-{len(made)}"
        wrapper.write_text(SLOW_CRIU.format(python=sys.executable, mark=mark, delay=delay, real=real))
        wrapper.chmod(0o755)
        made.append(wrapper)
        # no kernel-probe cache for this "criu": fastckpt would key /run/criu.kdat to it
        return {"FASTCKPT_CRIU": str(wrapper), "FASTCKPT_KDAT_CACHE": "0"}

    return make


@pytest.fixture
def small_tmpfs(tmp_path):
    """Factory: small_tmpfs(size="64m") -> a directory with a tmpfs of that size mounted on it (unmounted
    at teardown, lazily if something still holds it)."""
    mounted: List[str] = []

    def make(size: str = "64m") -> str:
        d = str(tmp_path / f"tmpfs-{len(mounted)}")
        os.makedirs(d)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "fastckpt-test", d],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in reversed(mounted):
        for c in criu_pids_in(d):
            kill_pid(c)
        r = subprocess.run(["umount", d], stdin=subprocess.DEVNULL, capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", d], stdin=subprocess.DEVNULL, capture_output=True)
