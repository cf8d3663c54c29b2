"""checkpoint --export and restore --import between runc containers: real CRIU, real runc.

A counter container is exported to one archive and imported, under a new id,
into a bundle that holds nothing (the archive carries the rootfs): it runs,
its counter goes on without a restart, runc knows it.  The archive's images
are CRIU's own (GNU tar and zstd read them out, `runc restore` restores them:
the peer is the oracle).  A 1 GiB container goes through an archive with its
memory verified word by word afterwards.  Failures leave the container as it
was (a refused export) or nothing at all (a refused import).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

import restore_support as rs
from robust_support import Container

SKIP = rs.skip_reason()
# run argv[2:], exit with its code, write the peak RSS (KiB) of it and its waited-for children to argv[1]
MAXRSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[2:]).returncode; "
          "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
          "sys.exit(rc)")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


@pytest.fixture
def env(runc_root, tmp_path):
    yield from rs.checked_env(runc_root, tmp_path)


def _no_temporaries(*dirs: str) -> None:
    for d in dirs:
        left = glob.glob(os.path.join(d, ".fastckpt-export-*")) + glob.glob(os.path.join(d, ".fastckpt-import-*"))
        assert not left, f"temporary directories left: {left}"


@pytest.mark.parametrize("compress", ["zstd", "gzip", "none"])
def test_export_then_import_into_an_empty_bundle(env, compress):
    ct = env.start()
    archive = os.path.join(env.workdir, f"ct.tar.{compress}")
    r = env.fastckpt("checkpoint", "--export", archive, "--compress", compress, ct.id)
    assert r.returncode == 0, str(r)
    assert ct.state() is None, "the container is still known to runc after its checkpoint"
    stopped_at = ct.counter.last()
    _no_temporaries(env.workdir)
    if compress == "zstd":  # what the archive holds, read by inspect straight from the file
        r = env.fastckpt("inspect", "--json", archive)
        assert r.returncode == 0, str(r)
        info = json.loads(r.stdout)
        assert info["path"] == archive and info["archive"] and info["made_by"] == "fastckpt"
        c = info["container"]
        assert (c["id"], c["name"], c["runtime"]) == (ct.id, ct.id, "runc") and len(c["podman_id"]) == 64, c
        assert any(p["pid"] == 1 for p in info["processes"]), info["processes"]

    bundle = os.path.join(env.workdir, "imported")  # does not exist: all comes from the archive
    new = rs.new_id("imp")
    env.track(new, bundle)
    r = env.fastckpt("restore", "-d", "--import", archive, "--bundle", bundle, new)
    assert r.returncode == 0, str(r)
    restored = env.track(new, bundle)
    restored.assert_running()
    restored.assert_own_cgroups()
    # the rootfs came out of the archive with the counter's files as they were at the checkpoint
    restored.counter.assert_continued(stopped_at)
    assert restored.exec("cat", "/tmp/count").returncode == 0
    _no_temporaries(bundle)
    # the bundle the import made keeps host users away from the archive's device nodes and setuid files
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o700, oct(os.stat(bundle).st_mode)
    restored.kill_and_delete()


def test_archive_is_gnu_tar_and_runc_restores_its_images(env):
    """The archive's images, read out by GNU tar, restore with `runc restore` in the first bundle."""
    import zstandard

    ct = env.start()
    archive = os.path.join(env.workdir, "ct.tar.zst")
    r = env.fastckpt("checkpoint", "--export", archive, ct.id)
    assert r.returncode == 0, str(r)
    stopped_at = ct.counter.last()
    out = os.path.join(env.workdir, "out")
    os.mkdir(out)
    tar = subprocess.Popen(["tar", "-x", "-C", out], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(archive, "rb") as f:  # zstd by the library (the zstd command may be missing), tar by GNU tar
        zstandard.ZstdDecompressor().copy_stream(f, tar.stdin)
    tar.stdin.close()
    assert tar.wait() == 0, tar.stderr.read().decode()
    names = sorted(os.listdir(out))
    assert {"checkpoint", "spec.dump", "config.dump", "network.status", "rootfs-diff.tar",
            "fastckpt-archive.json"} <= set(names), names
    new = rs.new_id("runc")
    env.track(new, ct.bundle)
    rc = rs.run_quiet(["runc", "--root", env.root, "restore", "-d", "--image-path",
                       os.path.join(out, "checkpoint"), "-b", ct.bundle, new])
    assert rc == 0, f"runc restore of the archive's images failed (exit {rc})"
    restored = env.track(new, ct.bundle)
    restored.assert_running()
    restored.counter.assert_continued(stopped_at)
    restored.kill_and_delete()
    rs.drop_runc_v2_stale_cgroup(ct.id)  # runc 1.1's bug on cgroup v2: it restored under a new id


def test_ignore_rootfs_needs_the_rootfs_on_import(env):
    ct = env.start()
    archive = os.path.join(env.workdir, "ct.tar.zst")
    r = env.fastckpt("checkpoint", "--export", archive, "--ignore-rootfs", ct.id)
    assert r.returncode == 0, str(r)
    stopped_at = ct.counter.last()
    bundle = os.path.join(env.workdir, "empty")
    new = rs.new_id("nor")
    env.track(new, bundle)
    r = env.fastckpt("restore", "-d", "--import", archive, "--bundle", bundle, new)
    rs.assert_error(r, 2, "carries no rootfs", "DIR/rootfs")
    assert not os.path.exists(bundle), "a refused import left its bundle"
    rs.assert_nothing_left(new, env.root, env.workdir)
    # the image's files given in DIR/rootfs: it restores
    os.makedirs(bundle)
    shutil.copytree(os.path.join(ct.bundle, "rootfs"), os.path.join(bundle, "rootfs"), symlinks=True)
    r = env.fastckpt("restore", "-d", "--import", archive, "--bundle", bundle, new)
    assert r.returncode == 0, str(r)
    restored = env.track(new, bundle)
    restored.assert_running()
    restored.counter.assert_continued(stopped_at)
    restored.kill_and_delete()


def test_refused_export_leaves_the_container_running(env):
    ct = env.start()
    r = env.fastckpt("checkpoint", "--export", "/nonexistent-dir-fastckpt/x.tar", ct.id)
    rs.assert_error(r, 2, "/nonexistent-dir-fastckpt")
    ct.assert_running()
    ct.counter.wait_advancing()
    r = env.fastckpt("checkpoint", "--export", os.path.join(env.workdir, "x.tar"), "--pid", "1")
    rs.assert_error(r, 2)
    ct.assert_running()


def test_damaged_archive_is_refused_and_leaves_nothing(env):
    ct = env.start()
    archive = os.path.join(env.workdir, "ct.tar.zst")
    r = env.fastckpt("checkpoint", "--export", archive, ct.id)
    assert r.returncode == 0, str(r)
    with open(archive, "rb") as f:
        data = f.read()
    cut = os.path.join(env.workdir, "cut.tar.zst")
    with open(cut, "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    bundle = os.path.join(env.workdir, "b")
    new = rs.new_id("cut")
    env.track(new, bundle)
    r = env.fastckpt("restore", "-d", "--import", cut, "--bundle", bundle, new)
    rs.assert_error(r, 1, "damaged or truncated", cut)
    assert not os.path.exists(bundle)
    rs.assert_nothing_left(new, env.root, env.workdir)
    # the sound archive still restores, under the same id
    r = env.fastckpt("restore", "-d", "--import", archive, "--bundle", bundle, new)
    assert r.returncode == 0, str(r)
    env.track(new, bundle).assert_running()


def test_export_keeps_image_path_and_reports_json(env):
    import json

    ct = env.start()
    archive = os.path.join(env.workdir, "kept.tar")
    images = os.path.join(env.workdir, "kept-images")
    r = env.fastckpt("checkpoint", "--export", archive, "--compress", "none", "--image-path", images, "--json",
                     ct.id)
    assert r.returncode == 0, str(r)
    out = json.loads(r.stdout)
    assert out["archive"]["path"] == archive and out["archive"]["compress"] == "none", out
    assert out["archive"]["bytes"] == os.path.getsize(archive) and out["image_path"] == images
    assert os.path.exists(os.path.join(images, "inventory.img")), "--image-path was not kept"
    with open(archive, "rb") as f:
        assert f.read(1 << 20).count(b"ustar") >= 1  # a plain tar


def test_print_stats_with_export(env):
    """--print-stats works though the images' directory (a private one) is gone after the export."""
    import json

    ct = env.start()
    r = env.fastckpt("checkpoint", "--export", os.path.join(env.workdir, "s.tar.zst"), "--print-stats", ct.id)
    assert r.returncode == 0, str(r)
    stats = json.loads(r.stdout)
    assert stats["criu"]["pages_written"] > 0 and stats["wall_time_ms"] > 0, stats
    _no_temporaries(env.workdir)


def test_api_export_and_import(env, monkeypatch):
    """... and the import reads the images once: unpacking checks them against their manifest (and the
    archive's CRC32s); the restore does not read them again."""
    import fastckpt
    from fastckpt import manifest

    reads = []
    for name in ("verify", "verify_overlapped"):
        real = getattr(manifest, name)
        monkeypatch.setattr(manifest, name, lambda path, _real=real, _name=name: reads.append(_name) or _real(path))
    ct = env.start()
    archive = os.path.join(env.workdir, "api.tar.zst")
    res = fastckpt.checkpoint(ct.id, root=env.root, export=archive, leave_running=True)
    assert res.archive.path == archive and res.archive.rootfs == "full" and res.archive.compress == "zstd"
    assert res.image_path is None and os.path.getsize(archive) == res.archive.bytes
    ct.assert_running()  # left running: the archive forks it
    bundle = os.path.join(env.workdir, "fork")
    new = rs.new_id("api")
    env.track(new, bundle)
    with open(os.devnull, "r+b") as null:
        saved = [os.dup(i) for i in range(3)]
        try:  # the restored container inherits the caller's stdio as runc gives it
            for i in range(3):
                os.dup2(null.fileno(), i)
            rr = fastckpt.restore(new, root=env.root, import_archive=archive, bundle=bundle, detach=True)
        finally:
            for i, fd in enumerate(saved):
                os.dup2(fd, i)
                os.close(fd)
    assert rr.container_id == new and rr.bundle == bundle
    assert reads == ["verify"], reads
    fork = env.track(new, bundle)
    fork.assert_running()
    fork.counter.wait_advancing()
    ct.counter.wait_advancing()


def test_one_gib_round_trip_memory_verifies(containers, tmp_path):
    """1 GiB of patterned memory through a zstd archive: the imported container re-checks every word."""
    ct = containers(1024)
    stopped = ct.counter.last()
    archive = str(tmp_path / "big.tar.zst")
    # the export streams: its memory stays far below the 1 GiB it writes (peak RSS of the command
    # and of CRIU, whichever is larger, measured by a wrapper that waits for them)
    peak = str(tmp_path / "peak-rss")
    r = rs.run([sys.executable, "-c", MAXRSS, peak] + rs.fastckpt_cmd("--root", ct.root, "checkpoint", "--export",
                                                                      archive, ct.id), str(tmp_path), timeout=600)
    assert r.returncode == 0, str(r)
    assert os.path.getsize(archive) > 64 << 20, "the pages are not in the archive"
    with open(peak) as f:
        peak_kib = int(f.read())
    print(f"peak memory of the 1 GiB export: {peak_kib >> 10} MiB")
    assert peak_kib < 256 << 10, f"export of 1 GiB peaked at {peak_kib >> 10} MiB of memory"
    bundle = str(tmp_path / "big-import")
    new = rs.new_id("big")
    restored = Container(new, bundle, ct.root, 1024)
    containers.containers.append(restored)
    r = rs.run(rs.fastckpt_cmd("--root", ct.root, "restore", "-d", "--import", archive, "--bundle", bundle, new),
               str(tmp_path), timeout=600)
    assert r.returncode == 0, str(r)
    restored.assert_coherent_after_restore(stopped)


def test_ctrl_c_during_export_keeps_the_images(containers, tmp_path):
    """Ctrl-C once the checkpoint is done, while the archive is written: exit 130, the message says where
    the images are, no archive appears, and the images restore: nothing is lost."""
    import robust_support as rb

    ct = containers()
    archive = str(tmp_path / "x.tar.zst")
    mark = str(tmp_path / "exporting")
    cli = rb.Cli(["--root", ct.root, "checkpoint", "--export", archive, ct.id], str(tmp_path),
                 slow={"archive.export": mark})
    rs.wait_until(lambda: os.path.exists(mark), "the export to begin", timeout=60)
    stopped = ct.counter.last()
    cli.signal_group(2)
    res = cli.wait()
    line = rb.assert_error(res, 130, "interrupted after the checkpoint completed", "no archive was written",
                           criu_lines=None)[0]
    images = line.split("images in ", 1)[1].split(";", 1)[0]
    assert os.path.exists(os.path.join(images, "inventory.img")) and not os.path.exists(archive), line
    new = rs.new_id("kept")
    restored = Container(new, ct.bundle, ct.root, 0)
    containers.containers.append(restored)
    r = rs.run(rs.fastckpt_cmd("--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle, new),
               str(tmp_path))
    assert r.returncode == 0, str(r)
    restored.counter.assert_continued(stopped)


def test_ctrl_c_during_import_leaves_nothing(env):
    import robust_support as rb

    ct = env.start()
    archive = os.path.join(env.workdir, "x.tar.zst")
    assert env.fastckpt("checkpoint", "--export", archive, ct.id).returncode == 0
    mark = os.path.join(env.workdir, "building")
    bundle = os.path.join(env.workdir, "new-bundle")
    new = rs.new_id("int")
    env.track(new, bundle)
    cli = rb.Cli(["--root", env.root, "restore", "-d", "--import", archive, "--bundle", bundle, new], env.workdir,
                 slow={"archive.build_bundle": mark})
    rs.wait_until(lambda: os.path.exists(mark), "the import to begin", timeout=60)
    cli.signal_group(2)
    res = cli.wait()
    rb.assert_error(res, 130, "nothing was restored and nothing was left behind", criu_lines=None)
    assert not os.path.exists(bundle), os.listdir(bundle)
    rs.assert_nothing_left(new, env.root, env.workdir)


def ctrl_c_after(target: str) -> str:
    """Code for `python -c CODE ARGS`: `fastckpt ARGS` whose fastckpt.TARGET ("module.function", one that runs
    while Ctrl-C is held back) gets a Ctrl-C once it returned: taken once the guarded section is complete."""
    module, name = target.split(".")
    return f"""
import os, signal, sys
from fastckpt import {module} as mod
from fastckpt.cli import main

real = mod.{name}
def hooked(*a, **kw):
    res = real(*a, **kw)
    os.kill(os.getpid(), signal.SIGINT)
    return res
mod.{name} = hooked
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_after_the_import_completed_keeps_the_bundle(env):
    """A Ctrl-C that comes while the import's restore runs is taken once it is complete: the container runs,
    and the bundle it runs from (its rootfs, config.json) stays."""
    ct = env.start()
    archive = os.path.join(env.workdir, "x.tar.zst")
    assert env.fastckpt("checkpoint", "--export", archive, ct.id).returncode == 0
    stopped_at = ct.counter.last()
    bundle = os.path.join(env.workdir, "new-bundle")
    new = rs.new_id("late")
    env.track(new, bundle)
    r = rs.run([sys.executable, "-c", ctrl_c_after("restorer._restore_container"), "--root", env.root, "restore",
                "-d", "--import", archive, "--bundle", bundle, new], env.workdir, 120)
    assert r.returncode == 130 and "interrupted after the restore completed" in r.stderr, str(r)
    restored = env.track(new, bundle)
    restored.assert_running()
    assert os.path.isfile(os.path.join(bundle, "config.json")), "the running container's bundle was removed"
    restored.counter.assert_continued(stopped_at)
    _no_temporaries(bundle)
    restored.kill_and_delete()


def test_ctrl_c_after_the_exports_checkpoint_completed_keeps_its_images(env):
    """A Ctrl-C that comes while CRIU dumps for --export (no --image-path) is taken once the checkpoint is
    complete: the container is gone, and its images, in the private directory the message names, stay
    (and restore)."""
    import re

    ct = env.start()
    archive = os.path.join(env.workdir, "x.tar.zst")
    r = rs.run([sys.executable, "-c", ctrl_c_after("engine._dump"), "--root", env.root, "checkpoint", "--export",
                archive, ct.id], env.workdir, 120)
    assert r.returncode == 130 and "interrupted after the checkpoint completed" in r.stderr, str(r)
    assert ct.state() is None
    images = re.search(r"images in (\S+);", r.stderr).group(1)
    assert os.path.isfile(os.path.join(images, "inventory.img")), f"the images named were removed: {r.stderr}"
    stopped_at = ct.counter.last()
    restored = env.track(rs.new_id("kept"), ct.bundle)
    rr = env.fastckpt("restore", "-d", "--image-path", images, "-b", ct.bundle, restored.id)
    assert rr.returncode == 0, str(rr)
    restored.assert_running()
    restored.counter.assert_continued(stopped_at)
    restored.kill_and_delete()
    shutil.rmtree(images)
