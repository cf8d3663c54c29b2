"""Restore, end to end: real CRIU, real runc, real containers and process trees.

Containers checkpointed by fastckpt or by runc come back through
`fastckpt restore` as runc containers (running, counting on from where they
stopped, usable with runc exec/kill/delete); fastckpt's images also restore
with `runc restore`.  Failed restores leave nothing behind.

Every test has a private runc root (conftest's ``runc_root``) and uuid-based
ids; ``env`` kills and deletes whatever it started or restored, and fails the
test if anything (state dir, cgroup, mount, process, criu) is left.  The
counters append each value to /tmp/count.log: after a restore the log must
read 1..n with no restart (see restore_support.Counter.assert_continued).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import ckpt_support as cs
import restore_support as rs

pytestmark = [pytest.mark.integration]  # skipped locally, failed in CI, without the prerequisites

KEEP_TMP = os.environ.get("FASTCKPT_TEST_KEEP_TMP") == "1"  # keep images and logs of the tests for a look
CRIU_FAILURE_ATTEMPTS = 4
PORT = 7777  # inside the container's own network namespace: no clash with anything
SERVER = f"nc -ll -p {PORT} -e echo hello & " + rs.CONTAINER_COUNTER


def _remove_tmp(path: str) -> None:
    if not KEEP_TMP and os.path.isdir(path) and not rs.mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def env(runc_root, tmp_path):
    """A private runc root and work dir; everything started or restored there is removed afterwards."""
    e = rs.Env(runc_root, str(tmp_path))
    yield e
    problems = e.cleanup()
    if rs.runc_known(runc_root):
        problems.append(f"runc still lists {rs.runc_known(runc_root)}")
    _remove_tmp(str(tmp_path))
    if problems:
        pytest.fail("the test left (now removed): " + "; ".join(problems))


class Saved:
    """Checkpoints shared by the failure tests: they are only read (a test that changes them copies them)."""

    def __init__(self, base: str):
        self.base = base
        self.bundle = os.path.join(base, "bundle")
        self.ct_images = os.path.join(base, "ct-images")  # of a counter container, by fastckpt
        self.pt_images = os.path.join(base, "pt-images")  # of a process tree (`sleep`), by fastckpt --pid
        self.ct_id = ""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("restore-saved"))
    s = Saved(base)
    e = rs.Env(os.path.join(base, "runc-root"), base)
    sleeper = None
    try:
        ct = e.start(rs.make_bundle(s.bundle))
        s.ct_id = ct.id
        e.checkpoint(ct, s.ct_images)
        with open(os.devnull, "r+b") as null:
            sleeper = subprocess.Popen(["sleep", "1000"], stdin=null, stdout=null, stderr=null,
                                       start_new_session=True)
        r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(sleeper.pid), "--leave-running",
                                   "--image-path", s.pt_images), base)
        assert r.returncode == 0, str(r)
        yield s
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        problems = e.cleanup()
        _remove_tmp(base)
        assert not problems, problems


def copy_images(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def assert_gone(ct: rs.Container) -> None:
    """runc knows the container no more; its state dir and cgroups are gone."""
    assert ct.state() is None and ct.id not in rs.runc_known(ct.root)
    assert not os.path.exists(ct.state_dir), os.listdir(ct.state_dir)
    assert not rs.cgroup_dirs(ct.id), rs.cgroup_dirs(ct.id)


def assert_restored(ct: rs.Container, stopped_at: int) -> int:
    """Running for runc, counting on from STOPPED_AT, usable with runc exec; returns its pid."""
    pid = ct.assert_running()
    ct.counter.assert_continued(stopped_at)
    ct.assert_own_cgroups()
    r = ct.exec("cat", "/tmp/count")
    assert r.returncode == 0, f"runc exec {ct.id}: {r.stderr}"
    assert int(r.stdout) > stopped_at, r.stdout
    assert not rs.mounts_under(ct.root), rs.mounts_under(ct.root)
    return pid


# --- 1-3: the three ways between fastckpt and runc ------------------------------------------------

# the container's tmpfs mounts, entry by entry: what CRIU's tar (fastckpt's, ext/tar_shim.c) saved
# (a directory's time is left out: some are mount points, whose file system is mounted anew). On a cgroup
# v2 host /sys/fs/cgroup is no tmpfs but the host's cgroup2 hierarchy (runc mounts it so), which changes.
TMPFS_LISTING = ["sh", "-c", """
show() { if [ -d "$1" ] && [ ! -L "$1" ]; then stat -c '%n %f %u %g' "$1"
         else stat -c '%n %f %u %g %Y %t %T %N' "$1"; fi; }
for d in /dev /dev/shm """ + ("" if cs.UNIFIED else "/sys/fs/cgroup ") + """/proc/acpi /sys/firmware; do
    show $d; for f in $d/*; do if [ -e "$f" ] || [ -L "$f" ]; then show "$f"; fi; done
done"""]


def tmpfs_listing(ct) -> str:
    r = ct.exec(*TMPFS_LISTING)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_fastckpt_checkpoint_fastckpt_restore(env):
    ct = env.start()
    images = os.path.join(env.workdir, "images")
    # tmpfs content: a small file (archived by fastckpt's tar), a 2 MiB one (handed to GNU tar)
    r = ct.exec("sh", "-c", "echo hello > /dev/shm/small && head -c 2097152 /dev/urandom > /dev/shm/big && "
                "chmod 640 /dev/shm/small && md5sum /dev/shm/big")
    assert r.returncode == 0, r.stderr
    big_sum = r.stdout.split()[0]
    before = tmpfs_listing(ct)
    assert "/dev/null 21b6 0 0" in before  # a character device, 0666, root's
    assert "/dev/shm/small 81a0 0 0" in before  # a regular file, 0640
    at = env.checkpoint(ct, images)
    assert not os.path.exists(ct.state_dir)

    r = env.restore(ct.id, images, ct.bundle)
    assert r.returncode == 0, str(r)
    assert r.stderr == ""
    assert_restored(ct, at)
    assert tmpfs_listing(ct) == before
    r = ct.exec("sh", "-c", "cat /dev/shm/small && md5sum /dev/shm/big")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == ["hello", big_sum], r.stdout
    with open(os.path.join(images, "restore.log")) as f:
        log = f.read()
    # the checkpoint left out the network images that recorded nothing: CRIU read them as
    # empty and ran no iptables-restore, `ip route` or `ip rule` for them; lo got its address
    assert "No iptables-" in log and "No route-" in log and "No rule-" in log
    assert "Running iptables-legacy-restore" not in log and "Running ip route restore" not in log
    assert "Running ip rule" not in log
    assert "Running ip addr restore" in log

    ct.kill_and_delete()
    assert_gone(ct)


def test_runc_checkpoint_fastckpt_restore(env):
    ct = env.start()
    images = os.path.join(env.workdir, "images")
    at = env.runc_checkpoint(ct, images)
    assert os.path.exists(os.path.join(images, "descriptors.json"))
    assert not [n for n in os.listdir(images) if n.startswith("fastckpt")]  # runc's images: no metadata of ours

    r = env.restore(ct.id, images, ct.bundle)
    assert r.returncode == 0, str(r)
    assert_restored(ct, at)

    ct.kill_and_delete()
    assert_gone(ct)


def test_fastckpt_checkpoint_runc_restore(env):
    ct = env.start()
    images = os.path.join(env.workdir, "images")
    at = env.checkpoint(ct, images)

    rc = rs.run_quiet(["runc", "--root", env.root, "restore", "-d", "--image-path", images,
                       "-b", ct.bundle, ct.id])
    assert rc == 0, f"runc restore failed (exit {rc}); see {images}/restore.log"
    ct.assert_running()
    ct.counter.assert_continued(at)
    assert ct.exec("cat", "/tmp/count").returncode == 0
    # for information only: runc's own restore leaves the loopback of the container down
    print(f"after `runc restore`, lo in {ct.id}: {'UP' if rs.lo_is_up(rs.lo_state(ct)) else 'DOWN'}")

    ct.kill_and_delete()
    assert_gone(ct)


# --- 4: network ----------------------------------------------------------------------------------

def test_network_server_and_loopback_after_restore(env):
    ct = env.start(env.bundle(script=SERVER))
    hello = rs.wait_until(lambda: ct.exec("nc", "127.0.0.1", str(PORT)).stdout == "hello\n" or None,
                          "the server in the container to answer")
    assert hello
    images = os.path.join(env.workdir, "images")
    at = env.checkpoint(ct, images)

    r = env.restore(ct.id, images, ct.bundle)
    assert r.returncode == 0, str(r)
    ct.assert_running()
    lo = rs.lo_state(ct)
    assert rs.lo_is_up(lo), f"lo of the restored {ct.id} is not up with 127.0.0.1:\n{lo}"
    r = ct.exec("nc", "127.0.0.1", str(PORT))
    assert (r.returncode, r.stdout) == (0, "hello\n"), f"the restored server did not answer: {r}"
    ct.counter.assert_continued(at)
    ct.kill_and_delete()
    assert_gone(ct)


# --- 5: one checkpoint, three containers -----------------------------------------------------------

def test_restore_under_new_ids(env):
    import fastckpt

    orig = env.start()
    images = os.path.join(env.workdir, "images")
    at = env.checkpoint(orig, images)
    # each its own copy of the bundle (made after the checkpoint: files as CRIU saw them), so its own counter
    a = env.track(rs.new_id("a"), orig.bundle)
    b = env.track(rs.new_id("b"), env.copy_bundle(orig.bundle))
    c = env.track(rs.new_id("c"), env.copy_bundle(orig.bundle))

    r = env.restore(a.id, images, a.bundle)
    assert r.returncode == 0, str(r)
    # B through the API (in this process)
    res = fastckpt.restore(b.id, root=env.root, image_path=images, bundle=b.bundle, detach=True)
    assert res.container_id == b.id and res.exit_status is None
    r = env.restore(c.id, images, c.bundle)
    assert r.returncode == 0, str(r)

    pids = {}
    for ct in (a, b, c):
        pids[ct.id] = assert_restored(ct, at)
    assert res.pid == pids[b.id]
    assert len(set(pids.values())) == 3
    assert sorted(rs.runc_known(env.root)) == sorted([a.id, b.id, c.id])
    for ct in (a, b, c):
        others = [o for o in (a, b, c) if o is not ct]
        with open(f"/proc/{pids[ct.id]}/cgroup") as f:
            cg = f.read()
        assert all(o.id not in cg for o in others), cg

    for ct in (a, b, c):
        # B was restored by this process: its init is our child, reaped once killed
        ct.kill_and_delete(reap=ct is b)
        assert_gone(ct)
        for o in (a, b, c):
            if o.state() is not None:
                o.assert_running()


# --- 6: a process tree -----------------------------------------------------------------------------

def test_process_tree(env):
    d = os.path.join(env.workdir, "tree")
    os.makedirs(d)
    counter = rs.Counter(d, "the counter of the process tree")
    tree = env.start_tree(["busybox", "sh", "-c", rs.COUNTER.format(dir=d)])
    counter.wait_reach(3)
    images = os.path.join(env.workdir, "images")
    r = env.fastckpt("checkpoint", "--pid", str(tree.pid), "--image-path", images)
    assert r.returncode == 0, str(r)
    assert tree.wait(rs.WAIT) == -9  # CRIU killed it after the dump
    at = counter.last()
    # its pid, group and session must be free again: the tree's orphans (a `sleep`) are reaped too
    assert not rs.reap_session(tree.pid), f"pid {tree.pid} still in use"

    pid_file = os.path.join(env.workdir, "restored.pid")
    r = env.fastckpt("restore", "--image-path", images, "--pid-file", pid_file)
    assert r.returncode == 0, str(r)
    with open(pid_file) as f:
        pid = int(f.read())
    assert pid == tree.pid  # CRIU gives the tree its pids back
    assert rs.proc_alive(pid)
    # back in the cgroups it was checkpointed in (ours); the cgroup fastckpt ran CRIU in is gone
    with open(f"/proc/{pid}/cgroup") as f, open("/proc/self/cgroup") as mine:
        assert f.read() == mine.read()
    assert not rs.cgroup_dirs(f"fastckpt-restore-{r.pid}"), rs.cgroup_dirs(f"fastckpt-restore-{r.pid}")
    counter.assert_continued(at)
    assert rs.proc_alive(pid)
    # env kills the tree by its pid (and group) at teardown


# --- 7: failures leave nothing ----------------------------------------------------------------------

def test_restore_into_existing_id(env, saved):
    ct = env.start()
    before = open(os.path.join(ct.state_dir, "state.json"), "rb").read()
    pid, cgroups = ct.pid, rs.cgroup_dirs(ct.id)

    r = env.restore(ct.id, saved.ct_images, saved.bundle)
    rs.assert_error(r, 1, "already exists", ct.id)
    # the existing container is untouched
    assert open(os.path.join(ct.state_dir, "state.json"), "rb").read() == before
    assert ct.assert_running() == pid
    assert rs.cgroup_dirs(ct.id) == cgroups
    ct.counter.wait_advancing()
    assert sorted(os.listdir(env.root)) == [ct.id]
    assert not rs.mounts_under(env.root) and not rs.criu_pids_in(saved.base)


def _missing_image_dir(env, saved):
    return os.path.join(env.workdir, "no-such-images"), saved.bundle


def _no_inventory(env, saved):
    images = copy_images(saved.ct_images, os.path.join(env.workdir, "images"))
    os.unlink(os.path.join(images, "inventory.img"))
    return images, saved.bundle


def _missing_bundle(env, saved):
    return saved.ct_images, os.path.join(env.workdir, "no-such-bundle")


def _bundle_without_config(env, saved):
    bundle = env.copy_bundle(saved.bundle)
    os.unlink(os.path.join(bundle, "config.json"))
    return saved.ct_images, bundle


def _process_images_with_id(env, saved):
    return saved.pt_images, saved.bundle


def test_criu_root_and_clock_view_go_after_criu_and_a_failure_there_undoes_the_restore(env, monkeypatch):
    """Once CRIU is done, its root is unmounted and the host-clock view of the images removed in a thread
    while the restore writes the container's state: after a restore neither is left; when that clean-up
    fails, the restore fails with it and undoes itself, as when it was done in line."""
    import fastckpt
    from fastckpt import restorer
    from fastckpt.errors import Error

    orig = env.start()
    images = os.path.join(env.workdir, "images")
    at = env.checkpoint(orig, images)
    a = env.track(rs.new_id("a"), orig.bundle)
    real_view, views = restorer._overlay_clock_view, []
    monkeypatch.setattr(restorer, "_overlay_clock_view", lambda *a: views.append(real_view(*a)) or views[-1])
    res = fastckpt.restore(a.id, root=env.root, image_path=images, bundle=a.bundle, detach=True)
    assert_restored(a, at)  # no mount left under the runc root
    assert not [n for n in os.listdir(images) if n.startswith(".")], os.listdir(images)
    assert not os.path.exists(os.path.join(a.state_dir, restorer.CRIU_ROOT))
    # the view was an overlay (the whiteout's directory in the state directory, gone)
    assert len(views) == 1 and views[0] is not None and not os.path.exists(views[0][0]), views
    a.kill_and_delete(reap=True)
    assert_gone(a)

    real_run = restorer._Cleanup._run

    def run_then_fail(self):
        real_run(self)
        self.error = Error("the clean-up after CRIU failed (simulated)")

    monkeypatch.setattr(restorer._Cleanup, "_run", run_then_fail)
    b = env.track(rs.new_id("b"), orig.bundle)
    pid_file = os.path.join(env.workdir, f"{b.id}.pid")
    with pytest.raises(Error, match="simulated"):
        fastckpt.restore(b.id, root=env.root, image_path=images, bundle=b.bundle, detach=True, pid_file=pid_file)
    rs.assert_nothing_left(b.id, env.root, env.workdir)
    assert not os.path.exists(pid_file), "a failed restore left its --pid-file (of a container that is gone)"
    assert res.pid > 0


@pytest.mark.parametrize("make, code, needles", [
    (_missing_image_dir, 1, ["no-such-images", "does not exist"]),
    (_no_inventory, 1, ["no inventory.img"]),
    (_missing_bundle, 2, ["no-such-bundle", "config.json"]),
    (_bundle_without_config, 2, ["config.json"]),
    (_process_images_with_id, 2, ["process tree", "without a container id"]),
], ids=["missing-image-dir", "no-inventory", "missing-bundle", "bundle-without-config",
        "process-images-with-id"])
def test_restore_refused(env, saved, make, code, needles):
    images, bundle = make(env, saved)
    cid = rs.new_id()
    r = env.restore(cid, images, bundle)
    rs.assert_error(r, code, *needles)
    rs.assert_nothing_left(cid, env.root, env.workdir)
    assert not rs.criu_pids_in(saved.base)


def test_container_images_without_id(env, saved):
    r = env.fastckpt("restore", "-d", "--image-path", saved.ct_images, "-b", saved.bundle)
    rs.assert_error(r, 2, "container id", saved.ct_id)
    assert os.listdir(env.root) == []
    assert not rs.mounts_under(saved.base) and not rs.criu_pids_in(saved.base)
    assert not rs.cgroup_dirs(saved.ct_id)


def _rootfs_without_busybox(env, saved):
    bundle = env.copy_bundle(saved.bundle)
    os.unlink(os.path.join(bundle, "rootfs", "bin", "busybox"))  # the executable the images map
    return bundle, None, ["bin/busybox"]


def _corrupt_core_image(env, saved):
    def corrupt(images):
        with open(os.path.join(images, "core-1.img"), "r+b") as f:
            f.write(b"\xff" * 16)
        # without its manifest, fastckpt cannot tell the change (test_manifest.py covers that): CRIU fails
        os.unlink(os.path.join(images, "fastckpt-manifest.json"))
    return saved.bundle, corrupt, ["core-1.img"]


@pytest.mark.parametrize("make", [_rootfs_without_busybox, _corrupt_core_image],
                         ids=["rootfs-without-busybox", "corrupt-core-image"])
def test_criu_failure(env, saved, make):
    bundle, change, needles = make(env, saved)
    images = copy_images(saved.ct_images, os.path.join(env.workdir, "images"))
    if change:
        change(images)
    log = os.path.join(images, "restore.log")
    # what a failed restore may leave (cgroups still busy with CRIU's dying tasks when they are removed,
    # say) depends on timing: a few attempts, each of which must leave nothing
    for _ in range(CRIU_FAILURE_ATTEMPTS):
        cid = rs.new_id()
        r = env.restore(cid, images, bundle)
        lines = rs.assert_error(r, 1, "criu restore failed", f"(log: {log})", *needles, criu_lines=True)
        assert any("Restoring FAILED" in l for l in lines[1:]), lines
        with open(log) as f:  # CRIU really ran, and failed
            text = f.read()
        assert "Error (" in text and "Restoring FAILED" in text
        rs.assert_nothing_left(cid, env.root, env.workdir)
        os.unlink(log)


# --- 8: foreground ----------------------------------------------------------------------------------

def test_foreground_restore(env):
    ct = env.start()
    images = os.path.join(env.workdir, "images")
    at = env.checkpoint(ct, images)

    err_path = os.path.join(env.workdir, "fastckpt.err")
    with open(os.devnull, "rb") as null, open(err_path, "w") as err:
        p = subprocess.Popen(rs.fastckpt_cmd("--root", env.root, "restore", "--image-path", images,
                                             "-b", ct.bundle, ct.id), stdin=null, stdout=err, stderr=err)
    try:
        rs.wait_until(lambda: ct.status() == "running" or p.poll() is not None, f"{ct.id} to run")
        assert p.poll() is None, f"fastckpt restore exited {p.returncode}: {open(err_path).read()}"
        pid = ct.assert_running()
        ct.counter.assert_continued(at)
        assert rs.proc_stat(pid)[1] == str(p.pid), "the container's init is not fastckpt's child"

        r = rs.runc(env.root, "kill", ct.id, "KILL")
        assert r.returncode == 0, r.stderr
        rc = p.wait(rs.WAIT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc != 0
    # fastckpt deleted the container when it ended, as `runc restore` does
    assert_gone(ct)
    assert open(err_path).read() == ""
    assert rc == 128 + 9  # as `runc restore` exits when its container is killed by SIGKILL
