"""The time namespace of a restored container.

CRIU restores every tree into a new time namespace (its clocks go on from the dump). runc 1.1's
`runc exec` joins no time namespace, so a process it starts in such a container is outside it, and
the next restore fails ("Can't restore sub-task in NS"). fastckpt: on the boot of the checkpoint the
container stays in the host's time namespace (CRIU gets the images without timens-0.img); otherwise
(runc's images, another boot) CRIU's time namespace is recorded in state.json as later runc records it.
"""
from __future__ import annotations

import json
import os

import pytest

import restore_support as rs
from fastckpt import restorer, runc


def _timens(pid) -> int:
    return os.stat(f"/proc/{pid}/ns/time").st_ino


def _images(tmp_path, names, boot_id):
    d = tmp_path / "img"
    d.mkdir()
    for n in names:
        (d / n).write_bytes(b"x")
    return str(d), {"boot_id": boot_id}


def test_host_clock_view_only_on_the_same_boot(tmp_path):
    from fastckpt import imagedir

    image_path, meta = _images(tmp_path, ["timens-0.img", "pages-1.img", "inventory.img"], imagedir.boot_id())
    parent = tmp_path / "pre-dump"
    parent.mkdir()
    os.symlink("../pre-dump", os.path.join(image_path, "parent"))  # a pre-dump's images, relative
    view, fd = restorer._host_clock_view(image_path, meta)
    try:
        assert sorted(os.listdir(view)) == ["inventory.img", "pages-1.img", "parent"]
        assert os.path.samefile(f"/proc/self/fd/{fd}", view)  # CRIU's fd is of the view
        # hard links, not copies (CRIU opens images without following symlinks)
        assert os.stat(os.path.join(view, "pages-1.img")).st_ino == os.stat(os.path.join(image_path, "pages-1.img")).st_ino
        # the parent link leads where it did from the image directory
        assert os.path.samefile(os.path.join(view, "parent"), parent)
    finally:
        os.close(fd)
        runc.remove_tree(view)
    assert not os.path.exists(view) and parent.is_dir()  # the link went, not what it leads to
    assert restorer._host_clock_view(image_path, {"boot_id": "another-boot"}) is None
    assert restorer._host_clock_view(image_path, None) is None  # runc's images: no boot recorded


def _mounted_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if path in line]


def test_overlay_clock_view_hides_the_host_clocks_and_leaves_nothing_mounted(tmp_path):
    """In a directory of fastckpt's (the state directory): one overlay, whatever the number of images, never
    attached to the mount tree (the mount table does not even change for a moment: no mount event reaches
    other namespaces or a mount watcher); the whiteout's directory is all there is to remove once CRIU is
    done."""
    import select

    from fastckpt import imagedir

    names = ["timens-0.img", "inventory.img"] + [f"core-{i}.img" for i in range(1, 301)]
    image_path, meta = _images(tmp_path, names, imagedir.boot_id())
    (tmp_path / "img" / "pages-1.img").write_bytes(b"pages")
    state = tmp_path / "state"
    state.mkdir()
    image_fd = os.open(image_path, os.O_RDONLY | os.O_DIRECTORY)
    watch = open("/proc/self/mountinfo")  # polls POLLPRI once the mount table changed since it was read
    try:
        watch.read()
        hide, fd = restorer._host_clock_view(image_path, meta, str(state), image_fd)
        changed = select.poll()
        changed.register(watch, select.POLLPRI | select.POLLERR)
        assert not changed.poll(0), "the view changed the mount table"
    finally:
        os.close(image_fd)
        watch.close()
    try:
        assert os.path.dirname(hide) == str(state) and os.listdir(state) == [os.path.basename(hide)]
        seen = os.listdir(fd)
        assert sorted(seen) == sorted([n for n in names if n != "timens-0.img"] + ["pages-1.img"])
        with open("pages-1.img", "rb", opener=lambda p, fl: os.open(p, fl, dir_fd=fd)) as f:
            assert f.read() == b"pages"
        with pytest.raises(OSError):  # read-only: CRIU changes nothing of the images through it
            os.open("new.img", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        assert not _mounted_under(str(tmp_path))  # nothing mounted where anyone sees it
        assert os.path.exists(os.path.join(image_path, "timens-0.img"))  # the images stay as they were
    finally:
        os.close(fd)
        runc.remove_tree(hide)
    assert os.listdir(state) == []


def test_clock_view_falls_back_to_links_where_no_overlay_can_be(tmp_path, monkeypatch):
    """A directory where the overlay's parts cannot be made, a whiteout that is none (as one made on an
    overlayfs), a pre-dump's relative parent link (it would lead out of the overlay): the linked view, and
    nothing left of the attempt."""
    from fastckpt import imagedir

    image_path, meta = _images(tmp_path, ["timens-0.img", "inventory.img"], imagedir.boot_id())
    image_fd = os.open(image_path, os.O_RDONLY | os.O_DIRECTORY)
    state = tmp_path / "state"
    state.mkdir()
    real_mknod = os.mknod
    try:
        for case, under in (("gone", str(tmp_path / "gone")), ("no whiteout", str(state)), ("parent", str(state))):
            if case == "no whiteout":  # the hiding layer shows a timens-0.img of its own
                monkeypatch.setattr(os, "mknod", lambda path, *a: open(path, "w").close())
            else:
                monkeypatch.setattr(os, "mknod", real_mknod)
            if case == "parent":
                os.symlink("../pre-dump", os.path.join(image_path, "parent"))
            view, fd = restorer._host_clock_view(image_path, meta, under, image_fd)
            os.close(fd)
            assert os.path.dirname(view) == image_path and "timens-0.img" not in os.listdir(view)
            runc.remove_tree(view)
            assert not os.path.exists(tmp_path / "gone") and os.listdir(state) == []
            assert not _mounted_under(str(tmp_path)), case
    finally:
        os.close(image_fd)


def test_a_tree_in_its_own_time_namespace_keeps_it(tmp_path):
    from fastckpt import imagedir

    image_path, meta = _images(tmp_path, ["timens-0.img", "timens-12.img", "inventory.img"], imagedir.boot_id())
    assert restorer._host_clock_view(image_path, meta) is None


def _restored(env, ct, images: str, stopped: int) -> int:
    """fastckpt restores CT from IMAGES; its counter goes on from STOPPED; returns its init's pid."""
    r = env.restore(ct.id, images, ct.bundle)
    assert r.returncode == 0, str(r)
    ct.counter.assert_continued(stopped)
    return ct.pid


def _state(env, ct) -> dict:
    with open(os.path.join(env.root, ct.id, "state.json")) as f:
        return json.load(f)


@pytest.fixture
def env(runc_root, tmp_path):
    yield from rs.Env.scoped(runc_root, str(tmp_path))


@pytest.mark.integration
def test_same_boot_restore_stays_in_the_hosts_time_namespace_and_execs_join_it(env):
    ct = env.start()
    images = os.path.join(env.workdir, "img")
    assert _timens(_restored(env, ct, images, env.checkpoint(ct, images))) == _timens("self")
    assert "NEWTIME" not in _state(env, ct)["namespace_paths"]
    r = ct.exec("sh", "-c", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!")
    assert r.returncode == 0, r.stderr
    execed = r.stdout.strip()
    # checkpoint and restore again, with the exec'd process
    images = os.path.join(env.workdir, "img2")
    _restored(env, ct, images, env.checkpoint(ct, images))
    assert ct.exec("ls", "-ld", f"/proc/{execed}").returncode == 0  # the exec'd process came back too


@pytest.mark.integration
def test_crius_time_namespace_is_recorded_in_state_json(env):
    """runc's images (no boot recorded): CRIU's time namespace; state.json names it (NEWTIME), and runc 1.1
    still works on the container (exec, kill, delete)."""
    ct = env.start()
    images = os.path.join(env.workdir, "img")
    pid = _restored(env, ct, images, env.runc_checkpoint(ct, images))
    assert _timens(pid) != _timens("self")
    state = _state(env, ct)
    assert state["namespace_paths"]["NEWTIME"] == f"/proc/{pid}/ns/time"
    assert {"type": "NEWTIME", "path": ""} in state["config"]["namespaces"]
    r = ct.exec("echo", "ok")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    ct.kill_and_delete(reap=False)
