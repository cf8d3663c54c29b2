"""Archives between podman and fastckpt, both ways, against a real podman 4.3 (private storage).

* podman -> fastckpt: a container run by podman is exported with
  `podman container checkpoint --export` (zstd and gzip) and removed from
  podman; `fastckpt restore --import` restores it as a runc container from
  the archive and the image's files (DIR/rootfs): it runs, its counter goes on
  without a restart.  podman restores the same archive itself too (the peer
  as the oracle): both go on from the same point.
* fastckpt -> podman: a runc container (its rootfs root 0555, as podman makes
  an overlay root: CRIU checks the restored root's mode) is exported by
  `fastckpt checkpoint --export --podman-image NAME --podman-image-id ID`;
  `podman container restore --import` restores it, it runs and counts on.

The podman of each test is configured in the test's own CONTAINERS_CONF and
storage (tests/podman_support.py), with --network none, and removed after.
"""
from __future__ import annotations

import os
import shutil

import pytest

import podman_support as ps
import restore_support as rs

SKIP = rs.skip_reason()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]
IMAGE = "localhost/fastckpt-test-busybox:latest"


@pytest.fixture
def podman():
    yield from ps.private()


@pytest.fixture
def image(podman, tmp_path):
    """The busybox rootfs of the tests as a podman image; returns (its rootfs directory, its id)."""
    from fastckpt import bundle

    rootfs = str(tmp_path / "image-rootfs")
    bundle.make_rootfs(rootfs)
    return rootfs, podman.import_rootfs(rootfs, IMAGE)


@pytest.fixture
def env(runc_root, tmp_path):
    yield from rs.checked_env(runc_root, tmp_path)


def _podman_counter(podman, name: str) -> rs.Counter:
    """The counter of a podman container, read through `podman exec` (as a Counter: same checks)."""

    class PodmanCounter(rs.Counter):
        def log(self):
            return ps.read_log(podman.exec_cat(name, "/tmp/count.log"))

        def value(self):
            text = podman.exec_cat(name, "/tmp/count")
            try:
                return int(text.strip()) if text else None
            except ValueError:
                return None

    return PodmanCounter("", f"the counter of podman's {name}")


@pytest.mark.parametrize("compress", ["zstd", "gzip"])
def test_podman_archive_restores_with_fastckpt(podman, image, env, compress):
    rootfs, _ = image
    # a file of the image deleted (deleted.files) and one in podman's /dev/shm (devshm-checkpoint.tar)
    name = podman.run(IMAGE, "sh", "-c", "rm /etc/passwd; echo note > /dev/shm/note; " + rs.CONTAINER_COUNTER)
    counter = _podman_counter(podman, name)
    counter.wait_reach(3)
    archive = os.path.join(env.workdir, f"podman.tar.{compress}")
    podman.ok("container", "checkpoint", "--export", archive, "--compress", compress, name)
    podman.ok("rm", "-f", "-t", "0", name)  # this host keeps nothing of the container but the archive

    # the user's bundle: DIR/rootfs holds the image's files (podman's archive carries only the changes)
    bundle = os.path.join(env.workdir, "bundle")
    os.makedirs(bundle)
    shutil.copytree(rootfs, os.path.join(bundle, "rootfs"), symlinks=True)
    cid = rs.new_id("pod")
    env.track(cid, bundle)
    r = env.fastckpt("restore", "-d", "--import", archive, "--bundle", bundle, cid)
    assert r.returncode == 0, str(r)
    ct = env.track(cid, bundle)
    ct.assert_running()
    ct.assert_own_cgroups()
    log = ct.counter.assert_continued(1)  # rootfs-diff.tar brought the counter's log; it goes on from it
    assert ct.exec("cat", "/etc/hostname").returncode == 0  # podman's bind mounts have stand-ins
    assert ct.exec("cat", "/dev/shm/note").stdout == "note\n", "podman's /dev/shm content did not come back"
    assert not os.path.exists(os.path.join(bundle, "rootfs", "etc", "passwd")), "deleted.files was not applied"
    assert os.path.exists(os.path.join(rootfs, "etc", "passwd"))

    # podman restores the same archive (the oracle): its counter goes on from the same point
    podman.track(name)
    podman.ok("container", "restore", "--import", archive)
    theirs = _podman_counter(podman, name)
    theirs.assert_continued(1)
    assert podman.exec_cat(name, "/dev/shm/note") == "note\n" and podman.exec_cat(name, "/etc/passwd") is None
    ours_first = [v for v in log if v <= len(theirs.log())]
    assert theirs.log()[:len(ours_first)] == ours_first
    ct.kill_and_delete()


@pytest.mark.parametrize("compress", ["zstd", "gzip"])
def test_fastckpt_archive_restores_with_podman(podman, image, env, compress):
    _, image_id = image
    bundle = env.bundle()
    os.chmod(os.path.join(bundle, "rootfs"), 0o555)  # the mode podman's overlay root has
    ct = env.start(bundle)
    archive = os.path.join(env.workdir, f"fastckpt.tar.{compress}")
    r = env.fastckpt("checkpoint", "--export", archive, "--compress", compress, "--podman-image", IMAGE,
                     "--podman-image-id", image_id, ct.id)
    assert r.returncode == 0, str(r)
    stopped_at = ct.counter.last()
    podman.track(ct.id)
    assert not rs.cgroup_dirs(ct.id), "fastckpt's checkpoint left the container's cgroups"
    podman.ok("container", "restore", "--import", archive)
    assert podman.status(ct.id) == "running"
    counter = _podman_counter(podman, ct.id)
    counter.assert_continued(stopped_at)
    # podman knows it as its own: exec, stop
    assert podman.ok("exec", ct.id, "hostname") == "fastckpt"
    podman.ok("rm", "-f", "-t", "0", ct.id)
    rs.drop_runc_v2_stale_cgroup(ct.id)  # runc 1.1's bug on cgroup v2 (podman restores through runc)
    assert not rs.cgroup_dirs(ct.id), "cgroups named after the runc container appeared while podman had it"


def test_fastckpt_archive_without_podman_image_is_refused_by_podman(podman, image, env):
    """Without --podman-image podman has no image to restore on: it refuses, and says which field."""
    ct = env.start()
    archive = os.path.join(env.workdir, "noimage.tar.zst")
    r = env.fastckpt("checkpoint", "--export", archive, ct.id)
    assert r.returncode == 0, str(r)
    r = podman("container", "restore", "--import", archive)
    assert r.returncode != 0, str(r)
    assert podman("ps", "-aq").stdout.strip() == ""


def test_export_for_podman_refuses_a_rootfs_podman_cannot_match(podman, image, env):
    """podman's overlay root is 0555 and CRIU checks the root's mode: a 0755 rootfs is refused before
    anything is checkpointed (the container goes on), instead of an archive podman cannot restore."""
    _, image_id = image
    ct = env.start()
    r = env.fastckpt("checkpoint", "--export", os.path.join(env.workdir, "x.tar.zst"), "--podman-image", IMAGE,
                     "--podman-image-id", image_id, ct.id)
    rs.assert_error(r, 2, "mode 555", "chmod 555")
    ct.assert_running()
    ct.counter.wait_advancing()
