"""Robustness: a checkpoint onto a disk that fills up.

README, "Failures": a failed checkpoint thaws the container and removes the
partial images, so nothing looks like a checkpoint that is not one; a full
disk is reported as such, with its place.  The images go to a small tmpfs
(mounted in the test's directory, unmounted at teardown); the container holds
more memory than fits.
"""
from __future__ import annotations

import os

import pytest

import restore_support as rs
import robust_support as rb

pytestmark = pytest.mark.integration

MIB = 256  # the container's memory; the tmpfs holds 64 MiB


def assert_nothing_like_a_checkpoint(images: str) -> None:
    left = rb.checkpoint_files(images)
    assert not left, f"a failed checkpoint left files that look like a checkpoint in {images}: {left}"


def assert_survived(ct: rb.Container, workdir: str) -> None:
    assert not rb.criu_left(workdir), rs.criu_pids_in(workdir)
    ct.assert_running_thawed_advancing()
    assert not rs.mounts_under(ct.root)


def test_disk_fills_up_during_the_dump(containers, small_tmpfs, tmp_path):
    """Images on a 64 MiB disk, CRIU's log elsewhere: the full disk is reported with its place."""
    ct = containers(MIB)
    images = os.path.join(small_tmpfs("64m"), "images")
    work = str(tmp_path / "work")
    r = rb.run_cli(["--root", ct.root, "checkpoint", "--image-path", images, "--work-path", work, ct.id],
                   str(tmp_path))
    log = os.path.join(work, "dump.log")
    rs.assert_error(r, 1, "no space left on the disk holding " + images, "partial images were removed",
                    f"(log: {log})")
    with open(log, errors="replace") as f:  # the log stays, with CRIU's reason
        assert "No space left on device" in f.read()
    assert_nothing_like_a_checkpoint(images)
    assert_survived(ct, str(tmp_path))
    # the lock was released and the container can still be checkpointed
    good = str(tmp_path / "good")
    r = rb.run_cli(["--root", ct.root, "checkpoint", "--leave-running", "--image-path", good, ct.id],
                   str(tmp_path))
    assert r.returncode == 0, str(r)
    ct.assert_running_thawed_advancing()


def test_disk_with_the_log_fills_up_during_the_dump(containers, small_tmpfs, tmp_path):
    """Images and CRIU's log on a 64 MiB disk: still a full disk, however much of CRIU's last log line fit.
    (Was a bug ~1 run in 3: the line cut to 'Unable to spice data: No' gave 'criu dump failed: page-xfer: ...'.)"""
    ct = containers(MIB)
    images = os.path.join(small_tmpfs("64m"), "images")
    r = rb.run_cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path))
    rs.assert_error(r, 1, "no space left on the disk holding " + images, "partial images were removed",
                    f"(log: {os.path.join(images, 'dump.log')})")
    assert os.path.exists(os.path.join(images, "dump.log"))
    assert_nothing_like_a_checkpoint(images)
    assert_survived(ct, str(tmp_path))


# 4 KiB: fastckpt's own files (descriptors.json, fastckpt.json) do not fit, before CRIU runs.
# 16 KiB: they fit; CRIU's log fills the disk before CRIU can say why it failed.
@pytest.mark.parametrize("size", ["4k", "16k"], ids=["before-criu", "no-room-for-criu's-log"])
def test_tiny_disk(containers, small_tmpfs, tmp_path, size):
    """(Were bugs: 4k ended in a bare 'No space left on device' without the image path, leaving
    descriptors.json and fastckpt.json behind; 16k in 'criu dump failed: libcriu returned -52'.)"""
    ct = containers(0)
    images = os.path.join(small_tmpfs(size), "images")
    r = rb.run_cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path))
    rb.assert_error(r, 1, "no space left on the disk holding " + images, criu_lines=None)
    assert_nothing_like_a_checkpoint(images)
    assert_survived(ct, str(tmp_path))
