"""Robustness: two operations on one container at once, and operations on different containers in parallel.

README, "Concurrency": one operation per container (or process tree) at a
time: a second one is refused at once with a "busy" error; different
containers are worked on in parallel.  Overlaps are made certain, not left to
timing: the test holds fastckpt's lock itself, or fastckpt runs a `criu` that
waits a while before the real one starts (robust_support.slow_criu), so the
first operation holds the lock while the second one comes.
"""
from __future__ import annotations

import os
import threading

import pytest

import restore_support as rs
import robust_support as rb

import fastckpt
from fastckpt import locks, manifest

pytestmark = pytest.mark.integration


def assert_busy(res: rs.Result, what: str) -> None:
    rs.assert_error(res, 1, f"{what} is busy", "another fastckpt checkpoint or restore is working on it")


def test_checkpoint_refused_while_the_lock_is_held(containers, tmp_path):
    ct = containers(0)
    images = str(tmp_path / "images")
    with locks.container(ct.root, ct.id):
        r = rb.run_cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path))
        assert_busy(r, f"container {ct.id!r}")
        assert not os.path.exists(images), "a refused checkpoint made its image directory"
        ct.assert_running_thawed_advancing()
        # the API says the same
        with pytest.raises(fastckpt.ContainerStateError) as ei:
            fastckpt.checkpoint(ct.id, root=ct.root, image_path=images)
        assert "busy" in str(ei.value)
    # once the lock is free, the container can be checkpointed
    r = rb.run_cli(["--root", ct.root, "checkpoint", "--leave-running", "--image-path", images, ct.id],
                   str(tmp_path))
    assert r.returncode == 0, str(r)
    ct.assert_running_thawed_advancing()


def test_restore_refused_while_the_lock_is_held(containers, tmp_path):
    ct = containers(0)
    images = str(tmp_path / "images")
    r = rb.run_cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path))
    assert r.returncode == 0, str(r)
    with locks.container(ct.root, ct.id):
        r = rb.run_cli(["--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id],
                       str(tmp_path))
        assert_busy(r, f"container {ct.id!r}")
        rs.assert_nothing_left(ct.id, ct.root, str(tmp_path))
        assert not os.path.exists(os.path.join(images, "restore.log")), "CRIU ran"
    # the images are intact and restore once the lock is free
    stopped = ct.counter.last()
    r = rb.run_cli(["--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id],
                   str(tmp_path))
    assert r.returncode == 0, str(r)
    ct.assert_coherent_after_restore(stopped)


def test_process_tree_checkpoint_refused_while_its_lock_is_held(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    images = str(tmp_path / "images")
    with locks.process(tree.pid):
        r = rb.run_cli(["checkpoint", "--pid", str(tree.pid), "--image-path", images], str(tmp_path))
        assert_busy(r, f"process {tree.pid}")
    assert not os.path.exists(images)
    assert tree.alive()
    tree.wait_advancing()


def test_second_checkpoint_while_the_first_runs(containers, tmp_path, slow_criu):
    """A second `fastckpt checkpoint` of a container whose checkpoint is in progress is refused; the first
    completes; the refused one touched nothing (not even its own image directory)."""
    ct = containers(0)
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    mark = str(tmp_path / "criu-starting")
    a = rb.Cli(["--root", ct.root, "checkpoint", "--leave-running", "--image-path", first, ct.id], str(tmp_path),
               env=slow_criu(mark, delay=1))
    rb.wait_for(lambda: os.path.exists(mark) or not a.running(), "the first checkpoint to start CRIU")
    assert a.running(), str(a.wait())
    b = rb.run_cli(["--root", ct.root, "checkpoint", "--leave-running", "--image-path", second, ct.id],
                   str(tmp_path))
    assert_busy(b, f"container {ct.id!r}")
    assert not os.path.exists(second)
    ra = a.wait()
    assert ra.returncode == 0, str(ra)
    manifest.verify(first)
    ct.assert_running_thawed_advancing()
    assert not rb.criu_left(str(tmp_path))


def test_two_checkpoints_started_together(containers, tmp_path, slow_criu):
    """Two CLIs started at the same moment: exactly one wins the lock, the other is refused as busy."""
    ct = containers(0)
    dirs = [str(tmp_path / "one"), str(tmp_path / "two")]
    env = slow_criu(str(tmp_path / "criu-starting"), delay=1.5)  # the winner holds the lock >= 1.5 s
    clis = [rb.Cli(["--root", ct.root, "checkpoint", "--leave-running", "--image-path", d, ct.id],
                   str(tmp_path), env=env) for d in dirs]
    results = [c.wait() for c in clis]
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], "\n".join(map(str, results))
    for d, r in zip(dirs, results):
        if r.returncode == 0:
            manifest.verify(d)
        else:
            assert_busy(r, f"container {ct.id!r}")
            assert not os.path.exists(d)
    ct.assert_running_thawed_advancing()


def test_different_containers_in_parallel(containers, tmp_path, slow_criu, monkeypatch):
    """Threads of one process checkpoint two containers through the API at once: both succeed.  Each
    CRIU waits a second before it starts, so the two checkpoints are certainly in flight together."""
    cts = [containers(0), containers(0)]
    for k, v in slow_criu(str(tmp_path / "criu-starting")).items():
        monkeypatch.setenv(k, v)
    barrier = threading.Barrier(len(cts))
    results: dict = {}

    def work(ct):
        try:
            barrier.wait(30)
            results[ct.id] = fastckpt.checkpoint(ct.id, root=ct.root, image_path=str(tmp_path / ct.id))
        except BaseException as e:  # reported below
            results[ct.id] = e

    threads = [threading.Thread(target=work, args=(ct,)) for ct in cts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a checkpoint did not finish"
    for ct in cts:
        res = results[ct.id]
        assert isinstance(res, fastckpt.CheckpointResult), f"{ct.id}: {res!r}"
        assert res.container_id == ct.id and res.image_path == str(tmp_path / ct.id)
        manifest.verify(res.image_path)
        assert ct.status() is None, f"{ct.id} was checkpointed but runc still knows it"
        assert not rs.frozen_cgroups(ct.id)
    assert not rb.criu_left(str(tmp_path))
    monkeypatch.undo()
    # both restore, each into its own container, counting on
    for ct in cts:
        stopped = ct.counter.last()
        fastckpt.restore(ct.id, root=ct.root, image_path=str(tmp_path / ct.id), bundle=ct.bundle, detach=True)
        ct.assert_coherent_after_restore(stopped)


def test_one_container_locked_another_checkpoints(containers, tmp_path):
    """A lock on one container does not hold up another."""
    a, b = containers(0), containers(0)
    with locks.container(a.root, a.id):
        r = rb.run_cli(["--root", b.root, "checkpoint", "--leave-running", "--image-path", str(tmp_path / "b"),
                        b.id], str(tmp_path))
        assert r.returncode == 0, str(r)
    manifest.verify(str(tmp_path / "b"))
    a.assert_running_thawed_advancing()
    b.assert_running_thawed_advancing()
