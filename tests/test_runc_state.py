"""Unit tests of reading runc's state root (fake state.json files; no root, no runc)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import ckpt_support as cs
from fastckpt import ContainerNotFound, ContainerStateError, Error, UsageError, checkpoint, runc
from fastckpt.engine import load_checkpointable
from fastckpt.imagedir import make_private_dir
from fastckpt.errors import ImageDirError


my_start_time = cs.my_start_time
write_state = cs.write_fake_state


@pytest.fixture
def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- loading -------------------------------------------------------------------------

def test_load(tmp_path):
    write_state(tmp_path, "ct1")
    ct = runc.load("ct1", str(tmp_path))
    assert ct.id == "ct1" and ct.init_pid == os.getpid()
    assert ct.bundle == "/some/bundle"
    assert ct.external_descriptors == ["/dev/null"] * 3
    assert ct.namespace_path("NEWNET") == "/proc/1/ns/net" and ct.namespace_path("NEWPID") is None
    assert ct.has_namespace("NEWPID") and not ct.has_namespace("NEWUTS")
    assert runc.list_ids(str(tmp_path)) == ["ct1"]


def test_missing_container_names_the_id(tmp_path):
    with pytest.raises(ContainerNotFound) as ei:
        runc.load("no-such-ct", str(tmp_path))
    assert "no-such-ct" in str(ei.value) and str(tmp_path) in str(ei.value)
    assert ei.value.errno == errno.ENOENT


def test_missing_root(tmp_path):
    with pytest.raises(ContainerNotFound, match="no-such-ct"):
        runc.load("no-such-ct", str(tmp_path / "nowhere"))
    assert runc.list_ids(str(tmp_path / "nowhere")) == []


def test_directory_without_state_is_not_found(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(ContainerNotFound, match="half"):
        runc.load("half", str(tmp_path))
    assert runc.list_ids(str(tmp_path)) == []


@pytest.mark.parametrize("cid", ["", "a/b", "..", ".", "a b", "x;rm", "../etc"])
def test_invalid_ids(tmp_path, cid):
    with pytest.raises(UsageError):
        runc.load(cid, str(tmp_path))


@pytest.mark.parametrize("cid", ["a", "A-b_c.d+e", "fct-0123abcd", "x..y"])
def test_valid_ids(cid):
    assert runc.validate_id(cid) == cid


@pytest.mark.parametrize("cid", ["abc\n", "contéiner"])
def test_invalid_ids_like_runc(cid):
    with pytest.raises(UsageError):
        runc.validate_id(cid)


@pytest.mark.parametrize("content", [b"", b"garbage{", b"\xff\xfe", b"[1, 2]", b'{"config": {}}',
                                     b'{"init_process_pid": 1}'])
def test_garbage_state_is_a_clear_error(tmp_path, content):
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "state.json").write_bytes(content)
    with pytest.raises(Error) as ei:
        runc.load("ct", str(tmp_path))
    assert not isinstance(ei.value, ContainerNotFound)
    msg = str(ei.value)
    assert "'ct'" in msg and "state.json" in msg


def test_unreadable_state_is_a_clear_error(tmp_path):
    (tmp_path / "ct" / "state.json").mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(Error, match="cannot read the state of container 'ct'"):
        runc.load("ct", str(tmp_path))


# --- status --------------------------------------------------------------------------

def test_status_running(tmp_path):
    write_state(tmp_path, "ct")
    assert runc.load("ct", str(tmp_path)).status() == runc.RUNNING


def test_status_created_when_exec_fifo_exists(tmp_path):
    write_state(tmp_path, "ct", fifo=True)
    assert runc.load("ct", str(tmp_path)).status() == runc.CREATED


def test_status_stopped_when_pid_dead(tmp_path, dead_pid):
    write_state(tmp_path, "ct", pid=dead_pid, fifo=True)
    assert runc.load("ct", str(tmp_path)).status() == runc.STOPPED


def test_status_stopped_when_pid_reused(tmp_path):
    # our pid, but another start time: the container's init died and the pid was reused
    write_state(tmp_path, "ct", start=my_start_time() + 1)
    assert runc.load("ct", str(tmp_path)).status() == runc.STOPPED


def test_status_paused_and_thaw(tmp_path):
    fz = tmp_path / "freezer"
    fz.mkdir()
    (fz / "freezer.state").write_text("FROZEN\n")
    write_state(tmp_path, "ct", freezer=fz)
    ct = runc.load("ct", str(tmp_path))
    assert ct.is_frozen() and ct.status() == runc.PAUSED
    assert ct.freeze_cgroup == str(fz)
    ct.thaw()
    assert (fz / "freezer.state").read_text() == "THAWED"
    assert not ct.is_frozen() and ct.status() == runc.RUNNING


def test_proc_start_time():
    assert runc.proc_start_time(os.getpid()) == my_start_time()
    assert runc.proc_start_time(2 ** 22 + 12345) is None


# --- what checkpoint does with these states (never reaching CRIU) ----------------------

def test_created_container_cannot_be_checkpointed(tmp_path):
    write_state(tmp_path, "ct", fifo=True)
    with pytest.raises(ContainerStateError, match="created state"):
        load_checkpointable("ct", str(tmp_path))
    with pytest.raises(ContainerStateError, match="created state"):
        checkpoint("ct", root=str(tmp_path), image_path=str(tmp_path / "img"))
    assert not (tmp_path / "img").exists()


def test_stopped_container_cannot_be_checkpointed(tmp_path, dead_pid):
    write_state(tmp_path, "ct", pid=dead_pid)
    with pytest.raises(ContainerStateError, match="'ct' is stopped"):
        checkpoint("ct", root=str(tmp_path), image_path=str(tmp_path / "img"))
    assert not (tmp_path / "img").exists()


def test_checkpoint_unknown_container(tmp_path):
    with pytest.raises(ContainerNotFound, match="'nope'"):
        checkpoint("nope", root=str(tmp_path), image_path=str(tmp_path / "img"))
    assert not (tmp_path / "img").exists()


def test_checkpoint_needs_exactly_one_target(tmp_path):
    with pytest.raises(UsageError, match="either a container id or a pid"):
        checkpoint(root=str(tmp_path))
    with pytest.raises(UsageError, match="either a container id or a pid"):
        checkpoint("ct", pid=123, root=str(tmp_path))


@pytest.mark.parametrize("pid", [0, 1, -3])
def test_checkpoint_refuses_init_and_nonsense_pids(tmp_path, pid):
    with pytest.raises(UsageError, match=f"cannot checkpoint pid {pid}"):
        checkpoint(pid=pid, image_path=str(tmp_path / "img"))


def test_checkpoint_refuses_itself(tmp_path):
    with pytest.raises(UsageError, match="own process"):
        checkpoint(pid=os.getpid(), image_path=str(tmp_path / "img"))


def test_checkpoint_dead_pid(tmp_path, dead_pid):
    with pytest.raises(Error, match=f"no running process with pid {dead_pid}") as ei:
        checkpoint(pid=dead_pid, image_path=str(tmp_path / "img"))
    assert ei.value.errno == errno.ESRCH
    assert not (tmp_path / "img").exists()


def test_checkpoint_validates_options_first(tmp_path):
    with pytest.raises(UsageError, match="Invalid manage cgroups mode"):
        checkpoint(pid=os.getpid(), manage_cgroups_mode="bogus", image_path=str(tmp_path / "img"))


# --- the image directory ----------------------------------------------------------------

def test_make_private_dir(tmp_path):
    d = tmp_path / "a" / "b"
    make_private_dir(str(d), "image directory")
    assert d.is_dir() and (d.stat().st_mode & 0o777) == 0o700


def test_make_private_dir_tightens_existing(tmp_path):
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    make_private_dir(str(d), "image directory")
    assert (d.stat().st_mode & 0o777) == 0o700


def test_make_private_dir_under_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ImageDirError, match="cannot create image directory .*file/sub") as ei:
        make_private_dir(str(f / "sub"), "image directory")
    assert ei.value.errno == errno.ENOTDIR


def test_make_private_dir_on_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ImageDirError, match="work directory"):
        make_private_dir(str(f), "work directory")


def test_remove_tree_files_links_and_subdirectories(tmp_path):
    """runc.remove_tree: a directory of files (the usual state directory, a restore's linked images) goes
    without shutil; one with a subdirectory goes through shutil; a symlink to a directory outside is
    removed, never followed; a missing directory is no error."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "state.json").write_text("{}")
    (flat / "link").symlink_to(outside)
    runc.remove_tree(str(flat))
    assert not flat.exists()
    assert (outside / "keep").read_text() == "x"
    deep = tmp_path / "deep"
    (deep / "sub" / "subsub").mkdir(parents=True)
    (deep / "sub" / "f").write_text("y")
    runc.remove_tree(str(deep))
    assert not deep.exists()
    runc.remove_tree(str(tmp_path / "missing"))
