"""Robustness: bad input to every flag of `fastckpt checkpoint` and `fastckpt restore` changes nothing.

Each case runs the real command (``python -m fastckpt``) with one bad value and
checks its message, its exit code (2 for usage errors, 1 otherwise), that it
printed one `fastckpt: ...` line and no traceback, and that nothing changed:

* checkpoint cases aim at a RUNNING container (no --leave-running, so a
  request wrongly accepted would end it): afterwards it still runs, thawed,
  counting (every 10 ms), its runc state is byte for byte the same, and no
  image directory was made;
* restore cases aim at a fresh id with a good checkpoint: afterwards there is
  no state directory, cgroup, mount, process or criu for that id, and CRIU
  never ran (no restore.log).

Only the gaps are here; already covered elsewhere (not repeated):
tests/test_cli.py -- --page-server foo / a:b:c / host:abc / host:0 / host:65536,
--manage-cgroups-mode bogus, --empty-ns pid / ipc, --network-lock x, no id,
--pid with an id (unit), --pid 1, an invalid id 'bad/id', a NUL in --image-path,
--pid abc, --bogus, an extra positional, an unknown command, --page-server
without a value, an unknown container, a dead --pid, a created container;
tests/test_cli_failures.py -- bad --page-server/--manage-cgroups-mode/--empty-ns/
--network-lock against a running container, an unknown container, an image or
work directory that cannot be created, an unreachable page server;
tests/test_restore.py -- restore into an existing id, a missing image directory,
no inventory.img, a missing bundle, a bundle without config.json, process-tree
images with an id, container images without one, CRIU failures;
tests/test_manifest.py -- damaged images; tests/test_robust_privileges.py --
image/work directories of another user or writable by others (checkpoint).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

import ckpt_support as cs
import restore_support as rs
import robust_support as rb

from fastckpt import manifest

pytestmark = pytest.mark.integration



@dataclass
class World:
    base: str
    root: str
    factory: rb.MemContainers
    running: rb.Container = None  # what bad checkpoints aim at
    state: bytes = b""  # its runc state.json
    saved: rb.Container = None  # checkpointed: its images are what bad restores get
    images: str = ""
    pt_images: str = ""  # a process tree's checkpoint (--leave-running)
    values: Dict[str, str] = field(default_factory=dict)
    n: int = 0

    def fresh(self, name: str) -> str:
        self.n += 1
        return os.path.join(self.base, "cases", f"{self.n}-{name}")


@pytest.fixture(scope="module")
def world(tmp_path_factory, mem_binary):  # noqa: F811
    cs.require_integration()
    base = str(tmp_path_factory.mktemp("robust-inputs"))
    os.makedirs(os.path.join(base, "cases"))
    root = os.path.join(base, "runc-root")
    w = World(base, root, rb.MemContainers(root, base, mem_binary))
    sleeper = zombie = None
    try:
        w.running = w.factory(0, tick_ms=10)
        with open(os.path.join(w.running.state_dir, "state.json"), "rb") as f:
            w.state = f.read()
        w.saved = w.factory(0)
        w.images = os.path.join(base, "ct-images")
        r = rb.run_cli(["--root", root, "checkpoint", "--image-path", w.images, w.saved.id], base)
        assert r.returncode == 0, str(r)
        with open(os.devnull, "r+b") as null:
            sleeper = subprocess.Popen(["sleep", "1000"], stdin=null, stdout=null, stderr=null,
                                       start_new_session=True)
            zombie = subprocess.Popen(["true"], stdin=null, stdout=null, stderr=null)
        w.pt_images = os.path.join(base, "pt-images")
        r = rb.run_cli(["checkpoint", "--pid", str(sleeper.pid), "--leave-running", "--image-path", w.pt_images],
                       base)
        assert r.returncode == 0, str(r)
        rb.wait_for(lambda: (rs.proc_stat(zombie.pid) or ["?"])[0] == "Z", "a zombie", interval=0.01)
        a_file = os.path.join(base, "a-file")
        with open(a_file, "w") as f:
            f.write("a file\n")
        bad_cfg = rs.copy_bundle(w.saved.bundle, os.path.join(base, "bundle-bad-config"))
        with open(os.path.join(bad_cfg, "config.json"), "w") as f:
            f.write("{not json")
        no_rootfs = rs.copy_bundle(w.saved.bundle, os.path.join(base, "bundle-no-rootfs"))
        shutil.rmtree(os.path.join(no_rootfs, "rootfs"))
        open_work = os.path.join(base, "open-work")
        os.mkdir(open_work)
        os.chmod(open_work, 0o777)
        other_work = os.path.join(base, "other-work")
        os.mkdir(other_work, 0o700)
        os.chown(other_work, 65534, 65534)
        with open("/proc/sys/kernel/pid_max") as f:
            no_pid = str(int(f.read()) + 1)
        w.values = {
            "root": root, "id": w.running.id, "pid": str(w.running.pid), "file": a_file,
            "no_pid": no_pid, "zombie": str(zombie.pid), "no_root": os.path.join(base, "no-such-root"),
            "images": w.images, "bundle": w.saved.bundle, "pt_images": w.pt_images, "bad_cfg": bad_cfg,
            "no_rootfs": no_rootfs, "open_work": open_work, "other_work": other_work,
        }
        yield w
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        if zombie is not None:
            zombie.wait()
        ids = [ct.id for ct in w.factory.containers]
        problems = w.factory.cleanup()
        for cid in ids:
            rs.remove_lock_files(cid)
        criu = rb.criu_left(base)
        assert not problems and not criu, (problems, criu)


@pytest.fixture
def cid(world):
    """A fresh id for a restore that must be refused; whatever a wrongly accepted one made with it is
    removed at the end (a container left running with its bundle gone would spin: no `sleep` any more)."""
    new = rs.new_id("bad")
    yield new
    rs.Container(new, world.saved.bundle, world.root).destroy()
    rs.force_clean(new, world.root, world.base)
    rs.remove_lock_files(new)


def fill(args: List[str], values: Dict[str, str]) -> List[str]:
    return [a.format(**values) for a in args]


# --- checkpoint -----------------------------------------------------------------------------------

def ck(*args: str) -> List[str]:
    return ["--root", "{root}", "checkpoint", *args]


CK_BOOLEANS = ["--leave-running", "--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks", "--json",
               "--print-stats"]

CHECKPOINT = [
    # a flag without its value
    ("image-path-no-value", ck("{id}", "--image-path"), 2, ["argument --image-path: expected one argument"]),
    ("work-path-no-value", ck("--image-path", "{img}", "{id}", "--work-path"), 2,
     ["argument --work-path: expected one argument"]),
    ("manage-cgroups-mode-no-value", ck("--image-path", "{img}", "{id}", "--manage-cgroups-mode"), 2,
     ["argument --manage-cgroups-mode: expected one argument"]),
    ("empty-ns-no-value", ck("--image-path", "{img}", "{id}", "--empty-ns"), 2,
     ["argument --empty-ns: expected one argument"]),
    ("network-lock-no-value", ck("--image-path", "{img}", "{id}", "--network-lock"), 2,
     ["argument --network-lock: expected one argument"]),
    ("pid-no-value", ck("--image-path", "{img}", "--pid"), 2, ["argument --pid: expected one argument"]),
    ("root-no-value", ["checkpoint", "--image-path", "{img}", "{id}", "--root"], 2,
     ["unrecognized arguments: --root"]),
    ("global-root-no-value", ["--root"], 2, ["argument --root: expected one argument"]),
    # --pid
    ("pid-not-an-integer", ck("--image-path", "{img}", "--pid", "1.5"), 2,
     ["argument --pid: invalid int value: '1.5'"]),
    ("pid-empty", ck("--image-path", "{img}", "--pid", ""), 2, ["argument --pid: invalid int value: ''"]),
    ("pid-zero", ck("--image-path", "{img}", "--pid", "0"), 2, ["cannot checkpoint pid 0"]),
    ("pid-negative", ck("--image-path", "{img}", "--pid", "-5"), 2, ["cannot checkpoint pid -5"]),
    ("pid-not-a-process", ck("--image-path", "{img}", "--pid", "{no_pid}"), 1,
     ["no running process with pid {no_pid}"]),
    ("pid-a-zombie", ck("--image-path", "{img}", "--pid", "{zombie}"), 1, ["no running process with pid {zombie}"]),
    ("id-and-pid", ck("--image-path", "{img}", "--pid", "{pid}", "{id}"), 2,
     ["give a container id or --pid, not both"]),
    # enumerations
    ("manage-cgroups-mode-uppercase", ck("--image-path", "{img}", "--manage-cgroups-mode", "SOFT", "{id}"), 2,
     ["Invalid manage cgroups mode 'SOFT': use one of soft, full, strict, ignore"]),
    ("manage-cgroups-mode-number", ck("--image-path", "{img}", "--manage-cgroups-mode", "1", "{id}"), 2,
     ["Invalid manage cgroups mode '1'"]),
    ("empty-ns-empty", ck("--image-path", "{img}", "--empty-ns", "", "{id}"), 2,
     ["namespace '' is not supported by --empty-ns"]),
    ("empty-ns-net", ck("--image-path", "{img}", "--empty-ns", "net", "{id}"), 2,
     ["namespace 'net' is not supported by --empty-ns (supported: network)"]),
    ("network-lock-none", ck("--image-path", "{img}", "--network-lock", "none", "{id}"), 2,
     ["Invalid network lock method 'none': use one of auto, iptables, nftables, skip"]),
    ("network-lock-uppercase", ck("--image-path", "{img}", "--network-lock", "NFTABLES", "{id}"), 2,
     ["Invalid network lock method 'NFTABLES'"]),
    # --page-server
    ("page-server-no-address", ck("--image-path", "{img}", "--page-server", ":27", "{id}"), 2,
     ["no address in ':27'"]),
    ("page-server-no-port", ck("--image-path", "{img}", "--page-server", "host:", "{id}"), 2,
     ["Invalid port number ''"]),
    ("page-server-negative-port", ck("--image-path", "{img}", "--page-server", "host:-1", "{id}"), 2,
     ["Invalid port number '-1'"]),
    ("page-server-non-ascii-digits", ck("--image-path", "{img}", "--page-server", "host:\u0662\u0667", "{id}"), 2,
     ["Invalid port number"]),
    # paths
    ("image-path-is-a-file", ck("--image-path", "{file}", "{id}"), 1, ["image directory {file} is not a directory"]),
    # (was a bug: the image directory made just before the work directory was refused stayed behind)
    ("work-path-is-a-file", ck("--image-path", "{img}", "--work-path", "{file}", "{id}"), 1,
     ["work directory {file} is not a directory"]),
    ("root-does-not-exist", ["--root", "{no_root}", "checkpoint", "--image-path", "{img}", "{id}"], 1,
     ["container '{id}' does not exist (in runc root {no_root})"]),
    ("root-is-a-file", ["--root", "{file}", "checkpoint", "--image-path", "{img}", "{id}"], 1, ["'{id}'"]),
    # container ids
    ("id-empty", ck("--image-path", "{img}", ""), 2, ['"checkpoint" requires a container id (or --pid PID)']),
    ("id-dot-dot", ck("--image-path", "{img}", ".."), 2, ["invalid container id '..'"]),
    ("id-with-a-space", ck("--image-path", "{img}", "a b"), 2, ["invalid container id 'a b'"]),
    ("id-like-a-flag", ck("--image-path", "{img}", "-x"), 2, ["unrecognized arguments: -x"]),
    # flags checkpoint does not have
    ("restore-flag-bundle", ck("--image-path", "{img}", "--bundle", "/srv", "{id}"), 2,
     ["unrecognized arguments: --bundle"]),
    ("restore-flag-detach", ck("--image-path", "{img}", "-d", "{id}"), 2, ["unrecognized arguments: -d"]),
    ("misspelt-flag", ck("--image-path", "{img}", "--leave-runing", "{id}"), 2,
     ["unrecognized arguments: --leave-runing"]),
    # (was a bug: argparse took abbreviations, runc takes none; --leave checkpointed with --leave-running)
    ("abbreviated-flag", ck("--image-path", "{img}", "--leave", "{id}"), 2, ["unrecognized arguments: --leave"]),
] + [
    (f"{flag[2:]}-with-a-value", ck("--image-path", "{img}", f"{flag}=1", "{id}"), 2,
     [f"argument {flag}: ignored explicit argument '1'"]) for flag in CK_BOOLEANS
]


def _params(cases):
    """(id, args, code, needles) tuples and pytest.param(id, args, ...) entries -> pytest.params with ids."""
    out = []
    for c in cases:
        values, marks = (c.values, c.marks) if hasattr(c, "values") else (c, ())
        out.append(pytest.param(*values[1:], id=values[0], marks=marks))
    return out


@pytest.mark.parametrize("args, code, needles", _params(CHECKPOINT))
def test_bad_checkpoint_input(world, args, code, needles):
    w = world
    values = dict(w.values, img=w.fresh("img"))
    before = w.running.counter.last()
    r = rb.run_cli(fill(args, values), w.base)
    rs.assert_error(r, code, *fill(needles, values))
    # nothing changed
    assert not os.path.exists(values["img"]), "a refused checkpoint made its image directory"
    with open(values["file"]) as f:
        assert f.read() == "a file\n"
    ct = w.running
    assert ct.status() == "running" and ct.freezer_state() == "THAWED", (ct.status(), ct.freezer_state())
    with open(os.path.join(ct.state_dir, "state.json"), "rb") as f:
        assert f.read() == w.state, "the container's runc state changed"
    rb.wait_for(lambda: ct.counter.last() > before, f"{ct.id} to count on", interval=0.005)


# --- restore -------------------------------------------------------------------------------------

def rt(*args: str) -> List[str]:
    return ["--root", "{root}", "restore", "-d", *args]


def rt_ok(*extra: str) -> List[str]:
    """A good restore of the saved container under a fresh id, with EXTRA flags last."""
    return rt("--image-path", "{images}", "-b", "{bundle}", "{cid}", *extra)


RT_BOOLEANS = ["--detach", "--no-subreaper", "--no-pivot", "--tcp-established", "--ext-unix-sk", "--shell-job",
               "--file-locks", "--json", "--print-stats"]

RESTORE = [
    # a flag without its value
    ("image-path-no-value", rt_ok("--image-path"), 2, ["argument --image-path: expected one argument"]),
    ("work-path-no-value", rt_ok("--work-path"), 2, ["argument --work-path: expected one argument"]),
    ("b-no-value", rt_ok("-b"), 2, ["argument -b/--bundle: expected one argument"]),
    ("bundle-no-value", rt_ok("--bundle"), 2, ["argument -b/--bundle: expected one argument"]),
    ("pid-file-no-value", rt_ok("--pid-file"), 2, ["argument --pid-file: expected one argument"]),
    ("manage-cgroups-mode-no-value", rt_ok("--manage-cgroups-mode"), 2,
     ["argument --manage-cgroups-mode: expected one argument"]),
    ("empty-ns-no-value", rt_ok("--empty-ns"), 2, ["argument --empty-ns: expected one argument"]),
    ("network-lock-no-value", rt_ok("--network-lock"), 2, ["argument --network-lock: expected one argument"]),
    # enumerations
    ("manage-cgroups-mode-bogus", rt_ok("--manage-cgroups-mode", "bogus"), 2,
     ["Invalid manage cgroups mode 'bogus': use one of soft, full, strict, ignore"]),
    ("empty-ns-pid", rt_ok("--empty-ns", "pid"), 2, ["namespace 'pid' is not supported by --empty-ns"]),
    ("network-lock-bogus", rt_ok("--network-lock", "bogus"), 2, ["Invalid network lock method 'bogus'"]),
    # the bundle
    ("bundle-is-a-file", rt("--image-path", "{images}", "-b", "{file}", "{cid}"), 2,
     ["cannot read {file}/config.json"]),
    ("bundle-config-not-json", rt("--image-path", "{images}", "-b", "{bad_cfg}", "{cid}"), 2,
     ["cannot read {bad_cfg}/config.json"]),
    ("bundle-without-rootfs", rt("--image-path", "{images}", "-b", "{no_rootfs}", "{cid}"), 2,
     ["the rootfs {no_rootfs}/rootfs of bundle {no_rootfs} does not exist"]),
    # image and work directories
    ("image-path-is-a-file", rt("--image-path", "{file}", "-b", "{bundle}", "{cid}"), 1, ["{file}"]),
    ("work-path-is-a-file", rt_ok("--work-path", "{file}"), 1, ["work directory {file} is not a directory"]),
    ("work-path-writable-by-others", rt_ok("--work-path", "{open_work}"), 1,
     ["work directory {open_work} is writable by others (mode 777): refused"]),
    ("work-path-of-another-user", rt_ok("--work-path", "{other_work}"), 1,
     ["work directory {other_work} belongs to uid 65534"]),
    # ids and roots
    ("id-with-a-slash", rt("--image-path", "{images}", "-b", "{bundle}", "bad/id"), 2,
     ["invalid container id 'bad/id'"]),
    ("id-dot-dot", rt("--image-path", "{images}", "-b", "{bundle}", ".."), 2, ["invalid container id '..'"]),
    ("root-is-a-file", ["--root", "{file}", "restore", "-d", "--image-path", "{images}", "-b", "{bundle}",
                        "{cid}"], 1, ["{file}"]),
    # flags restore does not have
    ("checkpoint-flag-leave-running", rt_ok("--leave-running"), 2, ["unrecognized arguments: --leave-running"]),
    ("checkpoint-flag-page-server", rt_ok("--page-server", "h:1"), 2,
     ["unrecognized arguments: --page-server h:1"]),
    # process-tree images
    ("tree-images-bad-cgroups-mode", ["restore", "--image-path", "{pt_images}", "--manage-cgroups-mode", "x"], 2,
     ["Invalid manage cgroups mode 'x'"]),
] + [
    (f"{flag[2:]}-with-a-value", rt_ok(f"{flag}=1"), 2, [f"argument {flag.replace('--detach', '-d/--detach')}: "
                                                           f"ignored explicit argument '1'"])
    for flag in RT_BOOLEANS
]


@pytest.mark.parametrize("args, code, needles", _params(RESTORE))
def test_bad_restore_input(world, cid, args, code, needles):
    w = world
    values = dict(w.values, cid=cid)
    images_before = sorted(os.listdir(w.images))
    r = rb.run_cli(fill(args, values), w.base)
    rs.assert_error(r, code, *fill(needles, values))
    # nothing was made, and CRIU never ran
    rs.assert_nothing_left(cid, w.root, w.base)
    assert sorted(os.listdir(w.images)) == images_before, "the images changed (CRIU ran?)"
    assert not os.path.exists(os.path.join(w.pt_images, "restore.log")), "CRIU ran on the process tree"
    assert sorted(rs.runc_known(w.root)) == [w.running.id]
    with open(values["file"]) as f:
        assert f.read() == "a file\n"


def test_the_shared_checkpoints_are_intact(world):
    """After all the cases above (run first): the images they got are unchanged and still restore."""
    w = world
    manifest.verify(w.images)
    manifest.verify(w.pt_images)
    stopped = w.saved.counter.last()
    r = rb.run_cli(["--root", w.root, "restore", "-d", "--image-path", w.images, "-b", w.saved.bundle, w.saved.id],
                   w.base)
    assert r.returncode == 0, str(r)
    w.saved.assert_coherent_after_restore(stopped)
    w.running.assert_running_thawed_advancing()


# --- --pid-file (were bugs) ----------------------------------------------------------------------------------

def copy_images(w: World, dst: str) -> str:
    """A copy of the saved container's checkpoint without what an earlier restore of it left (its log)."""
    shutil.copytree(w.images, dst)
    for name in ("restore.log", "stats-restore"):
        if os.path.exists(os.path.join(dst, name)):
            os.unlink(os.path.join(dst, name))
    return dst


@pytest.fixture
def restored_trees(tmp_path):
    pids: list = []
    yield pids
    for pid in pids:
        rs.kill_tree(pid)
        rs.reap_session(pid, timeout=10)
    for p in rs.criu_pids_in(str(tmp_path)):
        rs.kill_tree(p, group=False)


def test_pid_file_in_a_missing_directory_leaves_no_container(world, cid, tmp_path):
    """A container restore whose --pid-file cannot be written fails and leaves nothing."""
    w = world
    images = copy_images(w, str(tmp_path / "images"))
    pid_file = str(tmp_path / "no-such-dir" / "pid")
    r = rs.run(rs.fastckpt_cmd("--root", w.root, "restore", "-d", "--image-path", images, "-b", w.saved.bundle,
                               "--pid-file", pid_file, cid), str(tmp_path))
    rb.assert_error(r, 1, str(tmp_path / "no-such-dir"), criu_lines=None)
    rs.assert_nothing_left(cid, w.root, str(tmp_path))
    assert not os.path.exists(os.path.dirname(pid_file))


def test_pid_file_in_a_missing_directory_is_refused_before_restoring(world, cid, tmp_path):
    """(Was a bug: the pid file was written after CRIU had restored the container and resumed it; the message named '<pid-file>.tmp<pid>'.)"""
    w = world
    images = copy_images(w, str(tmp_path / "images"))
    pid_file = str(tmp_path / "no-such-dir" / "pid")
    r = rs.run(rs.fastckpt_cmd("--root", w.root, "restore", "-d", "--image-path", images, "-b", w.saved.bundle,
                               "--pid-file", pid_file, cid), str(tmp_path))
    rs.assert_nothing_left(cid, w.root, str(tmp_path))
    first = rb.assert_error(r, r.returncode or 1, pid_file, criu_lines=None)[0]
    assert ".tmp" not in first, first
    assert not os.path.exists(os.path.join(images, "restore.log")), "CRIU ran before the pid file was checked"


def test_pid_file_in_a_missing_directory_leaves_no_process_tree(proc_tree, tmp_path, restored_trees):
    """(Was a bug: exit 1, but the restored tree was left running.)"""
    tree = proc_tree(["sleep", "1000"])
    images = str(tmp_path / "images")
    r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(tree.pid), "--image-path", images), str(tmp_path))
    assert r.returncode == 0, str(r)
    assert tree.wait_gone() == -9
    restored_trees.append(tree.pid)
    rb.wait_for(lambda: not rs.pids_using(tree.pid), f"pid {tree.pid} to be free", interval=0.01)
    r = rs.run(rs.fastckpt_cmd("restore", "--image-path", images, "--pid-file", str(tmp_path / "nodir" / "pid")),
               str(tmp_path))
    assert r.returncode != 0, str(r)
    try:
        rb.wait_for(lambda: not rs.pids_using(tree.pid), "no restored process", timeout=1, interval=0.02)
    except AssertionError:
        raise AssertionError(f"the failed restore left the tree running: pids {rs.pids_using(tree.pid)}") from None


def test_pid_file_that_is_a_directory(world, cid, tmp_path):
    """(Was a bug: 'Is a directory: <dir>.tmp<pid>' after a full restore, and a stray <dir>.tmp<pid> file.)"""
    w = world
    images = copy_images(w, str(tmp_path / "images"))
    pid_dir = tmp_path / "pid-dir"
    pid_dir.mkdir()
    r = rs.run(rs.fastckpt_cmd("--root", w.root, "restore", "-d", "--image-path", images, "-b", w.saved.bundle,
                               "--pid-file", str(pid_dir), cid), str(tmp_path))
    rs.assert_nothing_left(cid, w.root, str(tmp_path))
    stray = [n for n in os.listdir(tmp_path) if n.startswith("pid-dir.tmp")]
    assert not stray, f"stray files: {stray}"
    rb.assert_error(r, r.returncode or 1, str(pid_dir), criu_lines=None)
    assert ".tmp" not in r.stderr, r.stderr


# --- abbreviated flags -------------------------------------------------------------------------------------

def test_restore_takes_no_abbreviated_flags(world, cid, tmp_path):
    """(Was a bug: argparse's abbreviations made `restore ... --pid 5` a --pid-file 5: the restore went ahead and wrote a file '5' in the current directory.)"""
    w = world
    images = copy_images(w, str(tmp_path / "images"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = rb.run_cli(["--root", w.root, "restore", "-d", "--image-path", images, "-b", w.saved.bundle, cid,
                    "--pid", "5"], str(tmp_path), cwd=str(cwd))
    assert os.listdir(cwd) == [], f"it wrote {os.listdir(cwd)} in the current directory"
    rs.assert_error(r, 2, "unrecognized arguments: --pid 5")
    rs.assert_nothing_left(cid, w.root, str(tmp_path))


# --- messages that say the wrong thing ------------------------------------------------------------------

@pytest.mark.parametrize("which", ["image-path", "root"])
def test_restore_path_that_is_a_file_is_named_for_what_it_is(world, cid, which):
    """(Were bugs: an --image-path that is a file was 'image directory ... does not exist'; a --root that is a file was a raw 'fastckpt: File exists: <root>'.)"""
    w = world
    f = w.values["file"]
    if which == "image-path":
        args = ["--root", w.root, "restore", "-d", "--image-path", f, "-b", w.saved.bundle, cid]
        want = [f"image directory {f} is not a directory"]
    else:
        args = ["--root", f, "restore", "-d", "--image-path", w.images, "-b", w.saved.bundle, cid]
        want = [f, "runc root", "not a directory"]
    r = rs.run(rs.fastckpt_cmd(*args), w.base)
    rs.assert_nothing_left(cid, w.root, w.base)
    first = rb.assert_error(r, 1, criu_lines=None)[0]
    assert "does not exist" not in first and "File exists" not in first, first
    for n in want:
        assert n in first, first
