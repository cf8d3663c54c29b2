"""Robustness: who may run fastckpt, and whose directories it will use.

README, "Who may run it": root, or a user with CAP_CHECKPOINT_RESTORE and
CAP_SYS_ADMIN; anyone else gets a clear refusal.  Image and work directories
are created 0700 and CRIU's image files 0600; an existing image directory that
belongs to another user or is writable by others is refused.

Non-root users are played by uid/gid 65534 (nobody) through
``setpriv --reuid=65534 --regid=65534 --clear-groups`` (with ambient
capabilities where a test needs them).
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

import restore_support as rs
import robust_support as rb
from robust_support import NOBODY, nobody_fastckpt, setpriv

from fastckpt import manifest

pytestmark = pytest.mark.integration

NEED = "needs root (or the capabilities CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN); fastckpt runs as uid 65534"

# capability sets of a non-root user that are not enough
NOT_ENOUGH = [(), ("sys_admin",), ("checkpoint_restore",)]


def as_nobody(args, workdir: str, caps=()) -> rs.Result:
    return rs.run(setpriv(*caps) + nobody_fastckpt() + list(args), workdir)


@pytest.fixture
def open_dir():
    """A directory below /tmp that anyone may create things in (sticky, like /tmp itself): nobody could
    make its image directory there, so a refused run that made none really refused before."""
    import tempfile

    d = tempfile.mkdtemp(prefix="fastckpt-robust-open-", dir="/tmp")
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_non_root_checkpoint_is_refused(containers, tmp_path, open_dir):
    ct = containers(0)
    images = os.path.join(open_dir, "images")
    for caps in NOT_ENOUGH:
        r = as_nobody(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path), caps)
        rs.assert_error(r, 1, f"checkpoint {NEED}")
        assert not os.path.exists(images), f"caps {caps}: a refused checkpoint made {images}"
        ct.assert_running_thawed_advancing()
    # the process-tree form too
    r = as_nobody(["checkpoint", "--pid", str(ct.pid), "--image-path", images], str(tmp_path))
    rs.assert_error(r, 1, f"checkpoint {NEED}")
    assert not os.path.exists(images)
    ct.assert_running_thawed_advancing()


def test_non_root_restore_is_refused(containers, tmp_path, open_dir):
    ct = containers(0)
    images = os.path.join(open_dir, "images")
    r = rb.run_cli(["--root", ct.root, "checkpoint", "--leave-running", "--image-path", images, ct.id],
                   str(tmp_path))
    assert r.returncode == 0, str(r)
    os.chmod(images, 0o755)  # readable: the refusal must not depend on that
    cid = rs.new_id()
    for caps in NOT_ENOUGH:
        r = as_nobody(["--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle, cid],
                      str(tmp_path), caps)
        rs.assert_error(r, 1, f"restore {NEED}")
        rs.assert_nothing_left(cid, ct.root, str(tmp_path))
        assert not os.path.exists(os.path.join(images, "restore.log")), "CRIU ran"
    ct.assert_running_thawed_advancing()


def test_capable_non_root_user_checkpoints_its_own_process(tmp_path, open_dir):
    """(Was a bug, fixed in 8553997: the lock directory was root's and CRIU ran without its unprivileged
    mode, so such a user got 'fastckpt: Permission denied: /run/fastckpt/locks/pid-N.lock'.)"""
    import subprocess

    lock_dir = f"/tmp/fastckpt-{NOBODY}"  # where fastckpt keeps a non-root user's locks without XDG_RUNTIME_DIR
    had_lock_dir = os.path.exists(lock_dir)
    with open(os.devnull, "r+b") as null:
        # its working directory is one nobody may enter (CRIU, as nobody, stats it), wherever the checkout is
        sleeper = subprocess.Popen(setpriv() + ["sleep", "1000"], stdin=null, stdout=null, stderr=null,
                                   start_new_session=True, cwd=open_dir)
    try:
        rb.wait_for(lambda: os.stat(f"/proc/{sleeper.pid}").st_uid == NOBODY
                    and open(f"/proc/{sleeper.pid}/comm").read().strip() == "sleep", "nobody's sleep")
        images = os.path.join(open_dir, "images")
        r = as_nobody(["checkpoint", "--pid", str(sleeper.pid), "--leave-running", "--image-path", images],
                      str(tmp_path), ("checkpoint_restore", "sys_admin"))
        assert r.returncode == 0, str(r)
        manifest.verify(images)
        assert os.stat(images).st_uid == NOBODY and stat.S_IMODE(os.stat(images).st_mode) == 0o700
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
        if not had_lock_dir:
            for d in (os.path.join(lock_dir, "locks"), lock_dir):
                try:
                    os.rmdir(d)
                except OSError:
                    pass


# --- existing directories that are not private -----------------------------------------------

def _chown(d):
    os.chown(d, NOBODY, NOBODY)
    return f"belongs to uid {NOBODY}, not to the user running fastckpt (uid 0): refused"


def _mode(mode):
    def change(d):
        os.chmod(d, mode)
        return f"is writable by others (mode {mode:o}): refused"
    return change


@pytest.mark.parametrize("which, change", [
    ("image", _chown), ("image", _mode(0o777)), ("image", _mode(0o770)), ("image", _mode(0o702)),
    ("work", _chown), ("work", _mode(0o777)),
], ids=["image-other-owner", "image-0777", "image-0770", "image-0702", "work-other-owner", "work-0777"])
def test_existing_directory_that_is_not_private_is_refused(containers, tmp_path, which, change):
    ct = containers(0)
    images, work = str(tmp_path / "images"), str(tmp_path / "work")
    target = images if which == "image" else work
    os.mkdir(target, 0o700)
    reason = change(target)
    before = os.stat(target)
    args = ["--image-path", images] + (["--work-path", work] if which == "work" else [])
    r = rb.run_cli(["--root", ct.root, "checkpoint", *args, ct.id], str(tmp_path))
    rs.assert_error(r, 1, f"{which} directory {target} {reason}")
    after = os.stat(target)
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode), "the refused directory was changed"
    assert os.listdir(target) == []
    assert not rb.checkpoint_files(images)
    ct.assert_running_thawed_advancing()


# --- what a checkpoint and a restore write is private ---------------------------------------------

def _modes(d):
    return {n: stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode) for n in os.listdir(d)}


def test_checkpoint_and_restore_files_are_private_whatever_the_umask(containers, tmp_path):
    """Run with umask 000: the directories made are 0700, every file 0600 -- CRIU's images, its logs and
    statistics, fastckpt's and runc's files, the manifest.  An existing image directory of ours that is
    only readable by others is tightened to 0700."""
    ct = containers(0)
    images, work = str(tmp_path / "images"), str(tmp_path / "dump-work")
    os.mkdir(images, 0o755)
    os.chmod(images, 0o755)
    loose = ["sh", "-c", 'umask 000; exec "$0" "$@"', sys.executable, "-m", "fastckpt", "--root", ct.root]
    r = rs.run(loose + ["checkpoint", "--image-path", images, "--work-path", work, ct.id], str(tmp_path))
    assert r.returncode == 0, str(r)
    for d in (images, work):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    files = {**_modes(images), **{f"work/{n}": m for n, m in _modes(work).items()}}
    for must in ("inventory.img", "pages-1.img", "fastckpt.json", "descriptors.json", manifest.MANIFEST_FILE,
                 "work/dump.log", "work/stats-dump"):
        assert must in files, sorted(files)
    assert {n: m for n, m in files.items() if m != 0o600} == {}, files

    stopped = ct.counter.last()
    rwork = str(tmp_path / "restore-work")
    r = rs.run(loose + ["restore", "-d", "--image-path", images, "--work-path", rwork, "-b", ct.bundle, ct.id],
               str(tmp_path))
    assert r.returncode == 0, str(r)
    assert stat.S_IMODE(os.stat(rwork).st_mode) == 0o700
    files = _modes(rwork)
    assert "restore.log" in files, files
    assert {n: m for n, m in files.items() if m != 0o600} == {}, files
    ct.assert_coherent_after_restore(stopped)
