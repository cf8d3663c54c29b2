"""Fixtures of fastckpt's tests.

Integration tests (``@pytest.mark.integration``) run real CRIU dumps of real
runc containers and process trees: when not root, when criu, runc or busybox
is missing or the host's cgroups cannot hold containers, they are skipped
with the reason, and FAIL with it in CI (CI=true: a green run that tested
nothing is a defect).  The suite runs in whatever cgroup layout the host has
(the header says which); FASTCKPT_TEST_LAYOUT=unified (set by `make test` for
its second run, in a cgroup2 mount namespace) makes sure it is that one.
Every fixture cleans up
what it started, also when the test failed: containers live in a private runc
root (``runc_root``) with uuid-based ids, process trees are killed by the pid
and process group the fixture holds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import ckpt_support as cs  # noqa: E402


def pytest_report_header(config):
    want = os.environ.get("FASTCKPT_TEST_LAYOUT")
    return [f"cgroup layout: {cs.LAYOUT or 'none'}" + (f" (FASTCKPT_TEST_LAYOUT={want})" if want else "")]


def pytest_configure(config):
    want = os.environ.get("FASTCKPT_TEST_LAYOUT")
    if want and want != cs.LAYOUT:
        raise pytest.UsageError(f"FASTCKPT_TEST_LAYOUT={want} but this host's cgroup layout is {cs.LAYOUT or 'none'}")


def pytest_runtest_setup(item):
    if "integration" in item.keywords:
        _require_integration()


_require_integration = cs.require_integration
integration_skip_reason = cs.integration_skip_reason


@pytest.fixture
def runc_root(tmp_path_factory):
    """A private runc state root: pass it as `runc --root` and fastckpt's root=."""
    _require_integration()
    root = str(tmp_path_factory.mktemp("runc-root"))
    yield root
    # anything a test created there without the container fixture (runc restore, say)
    leftovers = []
    for cid in cs.runc_ids(root):
        ct = cs.Container(cid, "", root)
        leftovers += ct.destroy()
    shutil.rmtree(root, ignore_errors=True)
    if leftovers:
        pytest.fail("cleanup of runc root failed: " + "; ".join(leftovers))


@pytest.fixture
def container(runc_root, tmp_path):
    """Factory: container(args=None, network_ns="", mounts=(), create_only=False) -> cs.Container.

    Runs a busybox bundle (default: the /tmp/count counter) in ``runc_root``
    with a unique id; every container is killed, deleted and its cgroups
    thawed and removed afterwards.
    """
    factory = cs.ContainerFactory(runc_root, str(tmp_path))
    yield factory
    problems = factory.cleanup()
    if problems:
        pytest.fail("container cleanup failed: " + "; ".join(problems))


@pytest.fixture
def proc_tree():
    """Factory: proc_tree(args, new_session=True, count_file=None, ready_file=None) -> cs.ProcTree.

    ``proc_tree.counter(path)`` starts a busybox counter writing PATH.  Stdio
    is /dev/null; teardown kills the root pid (and its process group when it
    got a session of its own).
    """
    _require_integration()
    factory = cs.ProcTreeFactory()
    yield factory
    factory.cleanup()


@pytest.fixture
def page_server(tmp_path):
    """Factory: page_server(images_dir) -> (subprocess.Popen, port) of a real `criu page-server`."""
    _require_integration()
    started = []

    def start(images_dir):
        os.makedirs(images_dir, exist_ok=True)
        port = cs.free_port()
        with open(os.devnull, "r+b") as null:
            p = subprocess.Popen(
                ["criu", "page-server", "--images-dir", str(images_dir), "--port", str(port),
                 "--address", "127.0.0.1", "-o", str(tmp_path / f"page-server-{port}.log"), "-v4"],
                stdin=null, stdout=null, stderr=null)
        started.append(p)
        cs.wait_until(lambda: cs.listening(port) or p.poll() is not None, f"criu page-server on port {port}")
        assert p.poll() is None, f"criu page-server exited with {p.returncode}"
        return p, port

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
