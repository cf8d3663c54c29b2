"""Hostile and damaged archives are refused before anything is restored.

Each test crafts an archive (with tarfile and zstandard, as an attacker
would) from a valid one and hands it to the import: the path escapes
(absolute, '..', links, a link member then a file through it), links and
device nodes outside the rootfs, bounds on members and bytes, huge headers,
duplicates, truncation and altered bytes.  The assertion is the outcome: one
error naming the member, nothing written outside the import's directory
(a sentinel directory beside it stays empty) and, through the CLI, exit 1,
one line, no runc state, no bundle left.

The checkpoint inside is a fake one (files with a manifest of their
checksums): the import checks the manifest, not CRIU's structure, so no CRIU
is needed except for the CLI tests, which stop before CRIU runs.
"""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile

import pytest
import zstandard

from fastckpt import archive, manifest
from fastckpt.errors import DamagedImage, UsageError

ROOT = os.geteuid() == 0
SPEC = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/"}, "root": {"path": "rootfs"},
        "hostname": "h", "mounts": [], "linux": {"namespaces": [{"type": "pid"}]}}


# --- making archives ----------------------------------------------------------------------------

def fake_checkpoint(path: str) -> str:
    """An image directory with a manifest (what the import verifies): no CRIU needed."""
    os.makedirs(path, mode=0o700)
    for name, data in (("inventory.img", b"\x01" * 86), ("pstree.img", b"\x02" * 36),
                       ("pages-1.img", os.urandom(3 * 4096)), ("descriptors.json", b'["/dev/null"]')):
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    manifest.write(path)
    return path


def make_rootfs(path: str) -> str:
    os.makedirs(os.path.join(path, "bin"))
    os.makedirs(os.path.join(path, "tmp"))
    with open(os.path.join(path, "bin", "prog"), "wb") as f:
        f.write(b"#!/bin/sh\necho hi\n")
    os.chmod(os.path.join(path, "bin", "prog"), 0o755)
    os.symlink("prog", os.path.join(path, "bin", "link"))
    os.link(os.path.join(path, "bin", "prog"), os.path.join(path, "bin", "hard"))
    return path


@pytest.fixture
def good(tmp_path):
    """A valid archive of fastckpt's (uncompressed, so that tests can edit it), with the whole rootfs."""
    images = fake_checkpoint(str(tmp_path / "images"))
    rootfs = make_rootfs(str(tmp_path / "src-rootfs"))
    path = str(tmp_path / "good.tar")
    archive.export(images, path, spec=SPEC, container_id="ct1", compress="none", rootfs=rootfs)
    return path


def members(path: str) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as t:
        return [(ti, t.extractfile(ti).read() if ti.isreg() else None) for ti in t.getmembers()]


def write_tar(path: str, items, compress: str = "none") -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in items:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if compress == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    with open(path, "wb") as f:
        f.write(raw)
    return path


def info(name: str, data: bytes | None = b"", kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    ti.linkname = linkname
    ti.mode = 0o644
    return ti


def rootfs_tar(items) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in items:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def with_rootfs(good_path: str, out: str, rootfs_items, deleted=None) -> str:
    """GOOD with its rootfs-diff.tar replaced (and its checksum in fastckpt-archive.json with it)."""
    items = []
    new_tar = rootfs_tar(rootfs_items)
    for ti, data in members(good_path):
        if ti.name == archive.ROOTFS_DIFF:
            ti.size = len(new_tar)
            data = new_tar
        if ti.name == archive.ARCHIVE_META:
            meta = json.loads(data)
            import zlib

            meta["crc32"][archive.ROOTFS_DIFF] = f"{zlib.crc32(new_tar):08x}"
            if deleted is not None:
                d = json.dumps(deleted).encode()
                items.append((info(archive.DELETED_FILES, d), d))
            data = json.dumps(meta).encode()
            ti.size = len(data)
        items.append((ti, data))
    return write_tar(out, items)


class World:
    """Where an import unpacks (DIR) and builds its bundle (BUNDLE); OUTSIDE must stay untouched."""

    def __init__(self, tmp_path):
        os.makedirs(tmp_path, exist_ok=True)
        self.dir = str(tmp_path / "unpack")
        os.mkdir(self.dir, 0o700)
        self.bundle = str(tmp_path / "bundle")
        os.mkdir(self.bundle)
        self.outside = str(tmp_path / "outside")
        os.mkdir(self.outside)

    def import_(self, path: str, limits=None):
        imp = archive.unpack(path, self.dir, limits)
        archive.build_bundle(imp, self.bundle, path, limits)
        return imp

    def refused(self, path: str, *needles: str, limits=None) -> DamagedImage:
        with pytest.raises(DamagedImage) as ei:
            self.import_(path, limits)
        msg = str(ei.value)
        for n in needles:
            assert n in msg, f"{n!r} not in {msg!r}"
        assert "\n" not in msg
        self.assert_outside_untouched()
        return ei.value

    def assert_outside_untouched(self) -> None:
        assert os.listdir(self.outside) == [], f"written outside: {os.listdir(self.outside)}"


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


# --- the good case first: the checks must not refuse a sound archive ------------------------------

@pytest.mark.skipif(not ROOT, reason="extracting owners and device nodes needs root")
def test_sound_archive_unpacks_with_rootfs(good, world):
    imp = world.import_(good)
    assert sorted(os.listdir(imp.images)) == sorted(
        ["inventory.img", "pstree.img", "pages-1.img", "descriptors.json", manifest.MANIFEST_FILE])
    assert imp.spec["hostname"] == "h" and imp.meta["rootfs"] == "full"
    rootfs = os.path.join(world.bundle, "rootfs")
    assert open(os.path.join(rootfs, "bin", "prog")).read() == "#!/bin/sh\necho hi\n"
    assert os.readlink(os.path.join(rootfs, "bin", "link")) == "prog"
    st = os.stat(os.path.join(rootfs, "bin", "prog"))
    assert st.st_nlink == 2 and stat.S_IMODE(st.st_mode) == 0o755
    cfg = json.load(open(os.path.join(world.bundle, "config.json")))
    assert cfg["root"]["path"] == "rootfs" and "cgroupsPath" not in cfg["linux"]


@pytest.mark.parametrize("compress", ["zstd", "gzip", "none"])
def test_each_compression_is_read_back(tmp_path, compress):
    images = fake_checkpoint(str(tmp_path / "images"))
    path = str(tmp_path / f"a.{compress}")
    res = archive.export(images, path, spec=SPEC, container_id="x", compress=compress)
    assert res.rootfs == "none" and os.path.getsize(path) == res.bytes
    head = open(path, "rb").read(4)
    assert {"zstd": head == b"\x28\xb5\x2f\xfd", "gzip": head[:2] == b"\x1f\x8b", "none": True}[compress]
    d = tmp_path / "out"
    d.mkdir(mode=0o700)
    imp = archive.unpack(path, str(d))
    for name in ("inventory.img", "pages-1.img"):
        assert open(os.path.join(imp.images, name), "rb").read() == open(os.path.join(images, name), "rb").read()
    cfg = json.load(open(d / archive.CONFIG_DUMP))
    assert len(cfg["id"]) == 64 and cfg["name"] == "x" and cfg["runtime"] == "runc"


def test_archive_without_rootfs_needs_the_users(good, tmp_path, world):
    images = fake_checkpoint(str(tmp_path / "images2"))
    path = str(tmp_path / "norootfs.tar")
    archive.export(images, path, spec=SPEC, container_id="x", compress="none")
    imp = archive.unpack(path, world.dir)
    with pytest.raises(UsageError, match="carries no rootfs.*DIR/rootfs"):
        archive.build_bundle(imp, world.bundle, path)


# --- hostile: the outer archive ---------------------------------------------------------------------

def test_absolute_member_is_refused(good, tmp_path, world):
    target = os.path.join(world.outside, "evil")
    bad = write_tar(str(tmp_path / "bad.tar"), members(good)[:3] + [(info(target, b"x"), b"x")])
    world.refused(bad, repr(target), "outside")


def test_dotdot_member_is_refused(good, tmp_path, world):
    bad = write_tar(str(tmp_path / "bad.tar"), [(info("checkpoint/../../outside/evil", b"x"), b"x")]
                    + members(good))
    world.refused(bad, "checkpoint/../../outside/evil", "outside")


def test_symlink_in_checkpoint_dir_then_file_through_it(good, tmp_path, world):
    """A link member pointing outside, then a file 'through' it: the link itself is refused."""
    link = info("checkpoint/sub", None, tarfile.SYMTYPE, world.outside)
    bad = write_tar(str(tmp_path / "bad.tar"), [(link, None), (info("checkpoint/sub/x", b"x"), b"x")]
                    + members(good))
    world.refused(bad, "checkpoint/sub", "links")


def test_device_node_outside_rootfs_is_refused(good, tmp_path, world):
    dev = info("checkpoint/null", None, tarfile.CHRTYPE)
    dev.devmajor, dev.devminor = 1, 3
    bad = write_tar(str(tmp_path / "bad.tar"), [(dev, None)] + members(good))
    world.refused(bad, "checkpoint/null", "devices")
    top = info("stats-dump", None, tarfile.BLKTYPE)
    bad2 = write_tar(str(tmp_path / "bad2.tar"), [(top, None)] + members(good))
    d2 = tmp_path / "unpack2"
    d2.mkdir(mode=0o700)
    with pytest.raises(DamagedImage, match="stats-dump.*not a regular file"):
        archive.unpack(bad2, str(d2))


def test_member_twice_is_refused(good, tmp_path, world):
    items = members(good)
    bad = write_tar(str(tmp_path / "bad.tar"), items + [items[2]])
    world.refused(bad, items[2][0].name, "appears twice")


def test_member_count_bound(good, world):
    world.refused(good, "more than 5 members", limits=archive.Limits(max_members=5))


def test_json_bound_covers_the_checkpoints_json_files(good, world):
    """The manifest (and fastckpt.json, descriptors.json) are read whole into memory as the .dump files are:
    the same bound (first in the archive, the manifest is the member named)."""
    world.refused(good, "checkpoint/fastckpt-manifest.json", "more than 100", limits=archive.Limits(max_json=100))


def test_many_members_are_checked_in_bounded_memory(tmp_path):
    """A rootfs tar of many members (an archive may hold 2,000,000) is checked without keeping their headers:
    tarfile keeps each one it reads (~500 bytes: 25 MB for these 50,000, ~1 GB at the bound)."""
    import tracemalloc

    path = str(tmp_path / "many.tar")
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for i in range(50_000):
            t.addfile(tarfile.TarInfo(f"d/f{i:06d}"), io.BytesIO(b""))
    tracemalloc.start()
    try:
        archive.scan_tar("a.tar", path, archive.ROOTFS_DIFF, archive._Budget("a.tar", archive.Limits()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak >> 20} MiB held while checking 50,000 members"


def test_byte_bound(good, world):
    world.refused(good, "more than 1000 bytes unpacked", limits=archive.Limits(max_bytes=1000))


def test_huge_pax_header_is_refused(good, tmp_path, world):
    ti = info("checkpoint/x", b"x")
    ti.pax_headers = {"comment": "A" * (archive.MAX_HEADER + 10)}
    bad = write_tar(str(tmp_path / "bad.tar"), members(good) + [(ti, b"x")])
    world.refused(bad, "pax header")


# --- hostile: the rootfs ------------------------------------------------------------------------------

@pytest.mark.skipif(not ROOT, reason="extracting owners and device nodes needs root")
def test_symlink_then_file_through_it_stays_inside_rootfs(good, tmp_path, world):
    """'esc' -> the outside directory (absolute, and by ..), then 'esc/pwned': links resolve inside the
    rootfs as in a chroot, so the file lands in the rootfs and nothing is written outside."""
    depth = "../" * 12
    items = [(info("esc", None, tarfile.SYMTYPE, world.outside), None),
             (info("esc/pwned", b"abs"), b"abs"),
             (info("up", None, tarfile.SYMTYPE, depth + world.outside.lstrip("/")), None),
             (info("up/pwned2", b"rel"), b"rel")]
    bad = with_rootfs(good, str(tmp_path / "bad.tar"), items)
    world.import_(bad)
    world.assert_outside_untouched()
    inside = os.path.join(world.bundle, "rootfs", world.outside.lstrip("/"))
    assert open(os.path.join(inside, "pwned")).read() == "abs"
    assert open(os.path.join(inside, "pwned2")).read() == "rel"


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_file_replacing_a_symlink_does_not_follow_it(good, tmp_path, world):
    victim = os.path.join(world.outside, "victim")
    items = [(info("f", None, tarfile.SYMTYPE, victim), None), (info("f", b"over"), b"over")]
    bad = with_rootfs(good, str(tmp_path / "bad.tar"), items)
    world.import_(bad)
    world.assert_outside_untouched()
    f = os.path.join(world.bundle, "rootfs", "f")
    assert not os.path.islink(f) and open(f).read() == "over"


@pytest.mark.parametrize("linkname", ["../../../../etc/passwd", "/etc/passwd"])
def test_hard_link_out_of_rootfs_is_refused(good, tmp_path, world, linkname):
    items = [(info("pw", None, tarfile.LNKTYPE, linkname), None)]
    bad = with_rootfs(good, str(tmp_path / "bad.tar"), items)
    e = world.refused(bad, "rootfs-diff.tar:pw")
    assert not os.path.exists(os.path.join(world.bundle, "rootfs", "pw"))
    assert "hard link" in str(e) or "outside" in str(e)


def test_dotdot_in_rootfs_is_refused_before_extracting(good, tmp_path, world):
    items = [(info("ok", b"1"), b"1"), (info("../../outside/evil", b"x"), b"x")]
    bad = with_rootfs(good, str(tmp_path / "bad.tar"), items)
    world.refused(bad, "rootfs-diff.tar:../../outside/evil", "outside the rootfs")
    assert not os.path.exists(os.path.join(world.bundle, "rootfs", "ok")), "extracted before the check"


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_device_node_inside_rootfs_is_made_there(good, tmp_path, world):
    dev = info("dev/null", None, tarfile.CHRTYPE)
    dev.devmajor, dev.devminor = 1, 3
    bad = with_rootfs(good, str(tmp_path / "dev.tar"), [(dev, None)])
    world.import_(bad)
    st = os.lstat(os.path.join(world.bundle, "rootfs", "dev", "null"))
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.FIFOTYPE], ids=["chr", "fifo"])
def test_node_swapped_for_a_link_does_not_chmod_the_host_file(good, tmp_path, world, monkeypatch, kind):
    """A host user who can write in a directory of the rootfs being extracted (the archive made it 0777)
    swaps a device node or FIFO, just made, for a link to a host file: its mode is not set through it."""
    host_file = os.path.join(world.outside, "shadow")
    with open(host_file, "w") as f:
        f.write("secret")
    os.chmod(host_file, 0o600)
    node = info("node", None, kind)
    node.devmajor, node.devminor = 1, 3
    node.mode = 0o666
    bad = with_rootfs(good, str(tmp_path / "node.tar"), [(node, None)])
    real_mknod, real_mkfifo = os.mknod, os.mkfifo

    def swap(name, dir_fd):
        os.unlink(name, dir_fd=dir_fd)
        os.symlink(host_file, name, dir_fd=dir_fd)

    def mknod(name, *a, dir_fd=None, **kw):
        real_mknod(name, *a, dir_fd=dir_fd, **kw)
        if name == "node":
            swap(name, dir_fd)

    def mkfifo(name, *a, dir_fd=None, **kw):
        real_mkfifo(name, *a, dir_fd=dir_fd, **kw)
        if name == "node":
            swap(name, dir_fd)

    monkeypatch.setattr(os, "mknod", mknod)
    monkeypatch.setattr(os, "mkfifo", mkfifo)
    with pytest.raises(DamagedImage, match="rootfs-diff.tar:node.*replaced"):
        world.import_(bad)
    st = os.stat(host_file)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, oct(st.st_mode)


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_deleted_files_cannot_escape(good, tmp_path, world):
    keep = os.path.join(world.outside, "keep")
    with open(keep, "w") as f:
        f.write("k")
    bad = with_rootfs(good, str(tmp_path / "bad.tar"), [(info("x", b"1"), b"1")],
                      deleted=["../../outside/keep"])
    with pytest.raises(DamagedImage, match="deleted.files.*outside the rootfs"):
        world.import_(bad)
    assert os.path.exists(keep)
    # through a link: removed inside the rootfs only
    os.unlink(keep)
    bad2 = with_rootfs(good, str(tmp_path / "bad2.tar"),
                       [(info("l", None, tarfile.SYMTYPE, world.outside), None)], deleted=["/l/keep2"])
    with open(os.path.join(world.outside, "keep2"), "w") as f:
        f.write("k")
    w2 = World(tmp_path / "w2")
    w2.import_(bad2)
    assert os.path.exists(os.path.join(world.outside, "keep2")), "deleted.files removed a file outside"


# --- damaged -----------------------------------------------------------------------------------------------

def _zstd_archive(tmp_path) -> str:
    images = fake_checkpoint(str(tmp_path / "zimages"))
    with open(os.path.join(images, "pages-1.img"), "wb") as f:
        f.write(os.urandom(1 << 20))
    manifest.write(images)
    path = str(tmp_path / "z.tar.zst")
    archive.export(images, path, spec=SPEC, container_id="x", compress="zstd")
    return path


def test_truncated_zstd_archive_names_the_member(tmp_path, world):
    path = _zstd_archive(tmp_path)
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.tar.zst")
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    e = world.refused(cut, "damaged or truncated")
    assert "checkpoint/pages-1.img" in str(e) or "member" in str(e), str(e)


def test_truncated_at_member_boundary(good, tmp_path, world):
    """Cut right after a whole member: no end-of-archive blocks, tarfile alone would say nothing."""
    items = members(good)
    cut = write_tar(str(tmp_path / "cut.tar"), items[:5])
    raw = open(cut, "rb").read()
    end = raw.rstrip(b"\0")
    with open(cut, "wb") as f:
        f.write(end + b"\0" * (-len(end) % 512))
    world.refused(cut, "truncated", items[4][0].name)


def test_altered_image_byte_is_refused_naming_the_file(good, tmp_path, world):
    items = members(good)
    out = []
    for ti, data in items:
        if ti.name == "checkpoint/pages-1.img":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        out.append((ti, data))
    bad = write_tar(str(tmp_path / "bad.tar"), out)
    world.refused(bad, "checkpoint/pages-1.img")


def test_altered_spec_dump_is_refused(good, tmp_path, world):
    out = []
    for ti, data in members(good):
        if ti.name == archive.SPEC_DUMP:
            data = data.replace(b'"h"', b'"X"')
        out.append((ti, data))
    bad = write_tar(str(tmp_path / "bad.tar"), out)
    world.refused(bad, "spec.dump", "altered")


def test_garbage_is_not_an_archive(tmp_path, world):
    p = tmp_path / "junk"
    p.write_bytes(os.urandom(4096))
    world.refused(str(p), "not a checkpoint archive")


# --- the CLI: one line, exit 1, nothing left --------------------------------------------------------------

@pytest.mark.skipif(not ROOT, reason="restore needs root")
def test_cli_refuses_hostile_archive_and_leaves_nothing(good, tmp_path):
    bad = write_tar(str(tmp_path / "bad.tar"), members(good)[:2] + [(info("/etc/evil-fastckpt", b"x"), b"x")])
    bundle = tmp_path / "newbundle"
    root = tmp_path / "runc-root"
    r = subprocess.run([sys.executable, "-m", "fastckpt", "--root", str(root), "restore", "-d", "--import", bad,
                        "--bundle", str(bundle), "fct-hostile"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastckpt: ") and "/etc/evil-fastckpt" in lines[0], r.stderr
    assert lines[0].endswith("; refused, nothing was restored"), lines[0]
    assert not os.path.exists("/etc/evil-fastckpt")
    assert not bundle.exists(), f"the bundle was left: {list(bundle.iterdir())}"
    assert not (root / "fct-hostile").exists()


def test_cli_usage_errors(tmp_path):
    def cli(*a):
        return subprocess.run([sys.executable, "-m", "fastckpt", *a], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)

    r = cli("checkpoint", "--export", str(tmp_path / "a"), "--compress", "lz4", "x")
    assert r.returncode == 2 and "Invalid compression 'lz4'" in r.stderr and len(r.stderr.splitlines()) == 1
    r = cli("checkpoint", "--compress", "gzip", "x")
    assert r.returncode == 2 and "--compress needs --export" in r.stderr
    r = cli("restore", "--import", str(tmp_path / "a"), "--image-path", str(tmp_path), "x")
    assert r.returncode == 2 and "exclude each other" in r.stderr
    for flag in ("--podman-image", "--podman-image-id"):  # podman's import needs both
        r = cli("checkpoint", "--export", str(tmp_path / "a"), flag, "localhost/x", "x")
        assert r.returncode == 2 and "--podman-image and --podman-image-id go together" in r.stderr, r


@pytest.mark.skipif(not ROOT, reason="restore needs root")
def test_cli_import_of_what_is_no_file(tmp_path):
    """A directory, a FIFO or nothing given to --import: one line saying which, exit 2, nothing left."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name, want in (("dir", "is a directory, not an archive"), ("fifo", "not a regular file"),
                       ("none", "no such file")):
        r = subprocess.run([sys.executable, "-m", "fastckpt", "--root", str(tmp_path / "root"), "restore", "-d",
                            "--import", str(tmp_path / name), "--bundle", str(tmp_path / "b"), "fct-nofile"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and want in r.stderr and len(r.stderr.splitlines()) == 1, (name, r)
    assert not (tmp_path / "b").exists() and not (tmp_path / "root").exists()


@pytest.mark.skipif(not ROOT, reason="restore needs root")
def test_failed_import_puts_back_the_users_config_json(good, tmp_path):
    """An import into a bundle of the user's that holds a config.json writes the archive's; when the
    restore fails (here: the fake images), the user's config.json is back as it was."""
    import fastckpt

    bundle = tmp_path / "mine"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"the": "user\'s own"}')
    with pytest.raises(fastckpt.Error):
        fastckpt.restore("fct-cfg-" + os.urandom(4).hex(), root=str(tmp_path / "runc-root"), import_archive=good,
                         bundle=str(bundle), detach=True)
    assert (bundle / "config.json").read_text() == '{"the": "user\'s own"}'
    assert sorted(os.listdir(bundle)) == ["config.json"], os.listdir(bundle)


def test_full_rootfs_archive_refuses_a_nonempty_rootfs(good, world):
    """The archive's whole rootfs does not go over files the user has there (nothing is merged)."""
    os.makedirs(os.path.join(world.bundle, "rootfs", "mine"))
    imp = archive.unpack(good, world.dir)
    with pytest.raises(UsageError, match="must not exist or be empty"):
        archive.build_bundle(imp, world.bundle, good)
    assert os.listdir(os.path.join(world.bundle, "rootfs")) == ["mine"]


def test_export_follows_no_link_out_of_the_rootfs(tmp_path):
    """The exported rootfs holds its links as links; a path through one (a running container swapping a
    directory for a link to the host's files) is not opened, and its file's bytes become zeros."""
    import errno as _errno

    outside = tmp_path / "host-secret"
    outside.mkdir()
    (outside / "key").write_bytes(b"SECRET")
    rootfs = tmp_path / "rootfs"
    (rootfs / "d").mkdir(parents=True)
    (rootfs / "d" / "key").write_bytes(b"public")
    (rootfs / "l").symlink_to(outside)
    tar = archive.RootfsTar(str(rootfs))
    names = [n for n, _, _ in tar.items]
    assert "l" in names and not any(n.startswith("l/") for n in names)
    # the swap, after the listing: d becomes a link to the host's directory
    (rootfs / "d" / "key").unlink()
    (rootfs / "d").rmdir()
    (rootfs / "d").symlink_to(outside)
    with pytest.raises(OSError) as ei:
        archive._open_in(str(rootfs), "d/key", directory=False)
    assert ei.value.errno in (_errno.ELOOP, _errno.ENOTDIR)
    data = b"".join(tar.chunks())
    assert len(data) == tar.size and b"SECRET" not in data
