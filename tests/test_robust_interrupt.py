"""Robustness: Ctrl-C (SIGINT to the process group), SIGTERM and SIGHUP during `fastckpt checkpoint`.

README, "Guarantees: nothing lost": a signal during a checkpoint is held back
until CRIU has finished and fastckpt has cleaned up; fastckpt then exits 130
and says which state it left -- "interrupted after the checkpoint completed:
images in ..." (then the images are complete and restore to a coherent
container) or "interrupted: nothing was checkpointed; ... is running" (then
the container runs, thawed and unchanged).  Never a frozen cgroup, never a
container gone without complete images, never a criu process left.

The CLI is started with ``start_new_session=True`` (its own process group, as
a terminal's foreground job) and the signal goes to the whole group, as a
terminal's Ctrl-C does.  The container holds 1 GiB (robust_support's ``mem``)
so that the dump lasts long enough to be hit in each of its phases, found by
watching the image directory: CRIU started (dump.log), pages being written
(pages-1.img growing), CRIU done (stats-dump) while fastckpt finishes.  The
windows before and after fastckpt's signal-deferred section are opened
deterministically: a wrapper `criu` that waits before it runs the real one
(the container is frozen, CRIU not started yet), or a slowed-down engine
function in the CLI process (robust_support.HOOKED_MAIN).
"""
from __future__ import annotations

import os
import signal

import pytest

import ckpt_support as cs
import restore_support as rs
import robust_support as rb

from fastckpt import manifest

pytestmark = pytest.mark.integration

BIG = 1024  # MiB: the dump takes ~0.5-1 s
MEDIUM = 256

COMPLETED = "interrupted after the checkpoint completed: images in "
NOTHING = "interrupted: nothing was checkpointed; "


# --- the two allowed outcomes -----------------------------------------------------------------------

def assert_no_debris(ct: rb.Container, workdir: str) -> None:
    """Whatever the outcome: no frozen cgroup, no criu process, no mount in the runc root."""
    assert not rs.frozen_cgroups(ct.id), f"frozen cgroups left: {rs.frozen_cgroups(ct.id)}"
    assert not rb.criu_left(workdir), f"criu left running: {rs.criu_pids_in(workdir)}"
    assert not rs.mounts_under(ct.root), rs.mounts_under(ct.root)


def assert_untouched(ct: rb.Container, images: str) -> None:
    """Nothing was checkpointed: the container runs, thawed, counting; nothing looks like a checkpoint."""
    ct.assert_running_thawed_advancing()
    assert not rb.checkpoint_files(images), f"{images} holds {rb.checkpoint_files(images)}"
    log = ct.counter.log()
    assert log == list(range(1, len(log) + 1)), f"the counter restarted or skipped: {rs.compress(log)}"


def assert_complete_and_restorable(ct: rb.Container, images: str, workdir: str) -> None:
    """The checkpoint completed: the container is gone from runc, its images are complete and restore
    to a container that counts on from where it stopped, with all its memory intact."""
    assert ct.status() is None, f"{ct.id} is still known to runc ({ct.status()}) after a completed checkpoint"
    assert not rs.cgroup_dirs(ct.id), f"the checkpointed container's cgroups are left: {rs.cgroup_dirs(ct.id)}"
    # every file of the checkpoint, as its manifest lists it
    assert os.path.exists(os.path.join(images, manifest.MANIFEST_FILE)), "a completed checkpoint has no manifest"
    assert manifest.verify(images) is not None
    stopped = ct.counter.last()
    r = rb.run_cli(["--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id], workdir)
    assert r.returncode == 0, str(r)
    ct.assert_coherent_after_restore(stopped)


def interrupted_state(res: rs.Result, ct: rb.Container, images: str, leave_running: bool = False) -> str:
    """Exit 130, one line that says which state fastckpt left; returns "completed" or "nothing"."""
    lines = rs.assert_error(res, 130)
    msg = lines[0]
    if COMPLETED in msg:
        gone = "was left running" if leave_running else "was checkpointed and is gone"
        assert f"{COMPLETED}{images}; container {ct.id!r} {gone}" in msg, msg
        return "completed"
    if NOTHING in msg:
        assert f"{NOTHING}container {ct.id!r} is running" in msg, msg
        return "nothing"
    raise AssertionError(f"the message does not say which state the container was left in: {msg!r}")


def check_outcome(res: rs.Result, ct: rb.Container, images: str, workdir: str) -> str:
    state = interrupted_state(res, ct, images)
    assert_no_debris(ct, workdir)
    if state == "completed":
        assert_complete_and_restorable(ct, images, workdir)
    else:
        assert_untouched(ct, images)
    return state


# --- triggers: phases of the dump, seen from outside ------------------------------------------------------

def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


PHASES = {
    # CRIU has started (it opens its log first)
    "criu-started": lambda images, mib: os.path.exists(os.path.join(images, "dump.log")),
    # CRIU is writing the memory pages
    "writing-pages": lambda images, mib: _size(os.path.join(images, "pages-1.img")) >= (mib << 20) // 4,
    # CRIU is done (it writes its statistics last); fastckpt thaws, removes the container, writes the manifest
    "criu-done": lambda images, mib: os.path.exists(os.path.join(images, "stats-dump")),
}


def signal_at(cli: rb.Cli, sig: int, ready, what: str) -> None:
    """Send SIG to the CLI's process group once READY() holds (fail if the CLI ended first)."""
    rb.wait_for(lambda: ready() or not cli.running(), what, timeout=60)
    assert cli.running(), f"fastckpt ended (exit {cli.popen.returncode}) before {what}: no signal sent"
    cli.signal_group(sig)


# --- during the dump: the checkpoint completes, the signal is taken after ---------------------------------

@pytest.mark.parametrize("phase, sig, mib", [
    ("criu-started", signal.SIGINT, MEDIUM),  # CRIU has hardly begun: a smaller dump does
    ("writing-pages", signal.SIGTERM, BIG),
    ("criu-done", signal.SIGINT, BIG),  # the window after CRIU is fastckpt's own work: a bigger one
], ids=["criu-started-SIGINT", "writing-pages-SIGTERM", "criu-done-SIGINT"])
def test_signal_during_the_dump(containers, tmp_path, small_tmpfs, phase, sig, mib):
    ct = containers(mib)
    images = os.path.join(small_tmpfs("3g"), "images")  # in RAM: no disk writeback throttling the dump
    cli = rb.Cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path))
    signal_at(cli, sig, lambda: PHASES[phase](images, mib), phase)
    res = cli.wait()
    # the signal was held back: CRIU was not disturbed and the checkpoint completed
    assert check_outcome(res, ct, images, str(tmp_path)) == "completed", res.stderr


def test_ctrl_c_leave_running(containers, tmp_path):
    """--leave-running: the checkpoint completes, the container runs on, thawed; the images are complete."""
    ct = containers(MEDIUM)
    images = str(tmp_path / "images")
    cli = rb.Cli(["--root", ct.root, "checkpoint", "--leave-running", "--image-path", images, ct.id],
                 str(tmp_path))
    signal_at(cli, signal.SIGINT, lambda: PHASES["writing-pages"](images, MEDIUM), "writing-pages")
    res = cli.wait()
    assert interrupted_state(res, ct, images, leave_running=True) == "completed", res.stderr
    assert_no_debris(ct, str(tmp_path))
    ct.assert_running_thawed_advancing()
    manifest.verify(images)
    ct.assert_memory_intact()


# --- before CRIU runs: the container is frozen, CRIU not started yet ---------------------------------------

def test_ctrl_c_while_frozen_before_criu_starts(containers, tmp_path, slow_criu):
    ct = containers(MEDIUM)
    images = str(tmp_path / "images")
    mark = str(tmp_path / "criu-starting")
    cli = rb.Cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path),
                 env=slow_criu(mark))
    signal_at(cli, signal.SIGINT, lambda: os.path.exists(mark), "criu to be started")
    # fastckpt freezes the container once criu is up, before CRIU gets its request
    rb.wait_for(lambda: ct.freezer_state() == "FROZEN", f"{ct.id} to be frozen", timeout=10)
    res = cli.wait()
    assert check_outcome(res, ct, images, str(tmp_path)) == "completed", res.stderr


def test_ctrl_c_then_criu_fails(containers, tmp_path, slow_criu):
    """A signal held back while CRIU runs, then CRIU fails: nothing was checkpointed, and it says so."""
    ct = containers(0)
    images = str(tmp_path / "images")
    mark = str(tmp_path / "criu-starting")
    port = cs.free_port()  # nothing listens there: CRIU's dump fails
    cli = rb.Cli(["--root", ct.root, "checkpoint", "--page-server", f"127.0.0.1:{port}", "--image-path", images,
                  ct.id], str(tmp_path), env=slow_criu(mark))
    signal_at(cli, signal.SIGINT, lambda: os.path.exists(mark), "criu to be started")
    res = cli.wait()
    assert check_outcome(res, ct, images, str(tmp_path)) == "nothing", res.stderr
    assert os.path.exists(os.path.join(images, "dump.log"))  # CRIU ran (and failed); its log stays


# --- before fastckpt's signal-deferred section, and after it ------------------------------------------------

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
SIG_IDS = ["SIGINT", "SIGTERM", "SIGHUP"]


def _interrupt_before_anything(containers, tmp_path, sig, where="load_checkpointable",
                               what="fastckpt to load the container"):
    """The signal arrives while fastckpt reads the container's state (engine.load_checkpointable slowed
    down), or WHERE: before anything is frozen or dumped."""
    ct = containers(0)
    images = str(tmp_path / "images")
    mark = str(tmp_path / "loading")
    cli = rb.Cli(["--root", ct.root, "checkpoint", "--image-path", images, ct.id], str(tmp_path),
                 slow={where: mark})
    signal_at(cli, sig, lambda: os.path.exists(mark), what)
    return ct, images, cli.wait()


@pytest.mark.parametrize("sig", SIGNALS, ids=SIG_IDS)
def test_early_signal_leaves_the_container_untouched_and_says_so(containers, tmp_path, sig):
    """(Was a bug: the message was a bare 'fastckpt: interrupted', from cli.main's KeyboardInterrupt branch.)"""
    ct, images, res = _interrupt_before_anything(containers, tmp_path, sig)
    assert interrupted_state(res, ct, images) == "nothing"
    assert_no_debris(ct, str(tmp_path))
    assert_untouched(ct, images)
    assert not os.path.exists(os.path.join(images, "dump.log")), "CRIU ran"


@pytest.mark.parametrize("sig", SIGNALS, ids=SIG_IDS)
def test_signal_while_the_command_starts(containers, tmp_path, sig):
    """The signal arrives while the command line is being parsed (its modules loading, a spare CRIU
    started and the cgroup warm-up running): one line, nothing done, no CRIU and no thread left."""
    ct, images, res = _interrupt_before_anything(containers, tmp_path, sig, "cli.build_parser",
                                                 "fastckpt to parse its command line")
    lines = rs.assert_error(res, 130)
    assert lines[0] == "fastckpt: interrupted before the checkpoint began: nothing was done", lines
    assert_no_debris(ct, str(tmp_path))
    assert_untouched(ct, images)
    assert not os.path.exists(images)


def _interrupt_after_everything(containers, tmp_path, mib, where):
    """The signal arrives after the signal-deferred section, while fastckpt lists the images for its
    result (imagedir.list_images, as engine calls it, slowed down) or prints it (cli._print_result): the
    checkpoint is complete, the container gone."""
    ct = containers(mib)
    images = str(tmp_path / "images")
    mark = str(tmp_path / "late")
    cli = rb.Cli(["--root", ct.root, "checkpoint", "--image-path", images, "--json", ct.id], str(tmp_path),
                 slow={where: mark})
    signal_at(cli, signal.SIGINT, lambda: os.path.exists(mark), f"fastckpt to reach {where}")
    return ct, images, cli.wait()


@pytest.mark.parametrize("where, mib", [("list_images", MEDIUM), ("cli._print_result", 0)],
                         ids=["listing-the-images", "printing-the-result"])
def test_late_signal_leaves_a_complete_checkpoint_and_says_so(containers, tmp_path, where, mib):
    """(Were bugs: the message was a bare 'fastckpt: interrupted', though the checkpoint had completed; then,
    while the result was printed, '...was checkpointed and is gone completed' -- fixed in 7f91abf.)"""
    ct, images, res = _interrupt_after_everything(containers, tmp_path, mib, where)
    assert interrupted_state(res, ct, images) == "completed"
    assert_no_debris(ct, str(tmp_path))
    assert_complete_and_restorable(ct, images, str(tmp_path))
