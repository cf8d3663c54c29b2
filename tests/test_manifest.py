"""Damaged checkpoints are refused before CRIU runs: fastckpt-manifest.json and the structural checks.

Unit tests work on crafted image directories (CRIU images framed here byte
by byte, independently of fastckpt's reader, their entries encoded with the
protobuf classes of CRIU's own .proto files; no test here can skip for want
of protobuf: it is needed, and missing it fails); integration tests
(real CRIU and runc) damage real checkpoints of a process tree and of a
runc container and check that `fastckpt restore` refuses them at once,
naming the file, without running CRIU and leaving nothing behind, while an
intact checkpoint still restores.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import struct
import time
import zlib

import pytest
import xxhash

import ckpt_support as cs
import restore_support as rs

from google.protobuf import json_format  # (a failure, not a skip, when missing)

from fastckpt import images, imagedir, manifest
from fastckpt.errors import DamagedImage, ImageDirError, ImageError

PAGE = 4096
PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4
QUICK = 15.0  # seconds: a refusal takes well under a second; the restore watchdog's bound is >= 60 s


# --- crafted image directories -------------------------------------------------------------

# magic.h's numbers, typed here (independently of the generated fastckpt._proto.magic)
COMMON_MAGIC = 0x54564319
MAGICS = {"INVENTORY": (0x58313116, ["inventory_entry"]), "PSTREE": (0x50273030, ["pstree_entry"]),
          "PAGEMAP": (0x56084025, ["pagemap_head", "pagemap_entry"])}


def frame(magic, entries) -> bytes:
    """A CRIU image: head magic (not for the inventory), type magic, size-prefixed entries; ENTRIES are
    dicts, encoded by the message classes of CRIU's .proto files (a pagemap's first is its head)."""
    number, types = MAGICS[magic]
    out = b"" if magic == "INVENTORY" else struct.pack("<I", COMMON_MAGIC)
    out += struct.pack("<I", number)
    for i, e in enumerate(entries):
        msg = json_format.ParseDict(e, images.message_class(types[min(i, len(types) - 1)])())
        payload = msg.SerializeToString()
        out += struct.pack("<I", len(payload)) + payload
    return out


def _img(path, magic, entries):
    with open(path, "wb") as f:
        f.write(frame(magic, entries))


def unframe(data: bytes):
    """The payloads of a CRIU image's entries (either head magic or none)."""
    off = 8 if struct.unpack_from("<I", data)[0] in (COMMON_MAGIC, 0x55105940) else 4
    out = []
    while off < len(data):
        (n,) = struct.unpack_from("<I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def _pages(path, n, seed=0):
    data = bytes((seed + i) % 251 for i in range(n * PAGE))
    with open(path, "wb") as f:
        f.write(data)


def make_images(d, *, with_manifest=True, runc_style=False):
    """A small checkpoint in D: two tasks, a pagemap each (with parent, lazy and present entries)."""
    os.makedirs(d, exist_ok=True)
    _img(os.path.join(d, "inventory.img"), "INVENTORY", [{"img_version": 2, "fdinfo_per_id": True}])
    _img(os.path.join(d, "pstree.img"), "PSTREE", [{"pid": 10, "ppid": 0, "pgid": 10, "sid": 10, "threads": [10]},
                                                   {"pid": 11, "ppid": 10, "pgid": 10, "sid": 10, "threads": [11]}])
    # task 10: 3 + 2 present pages, 4 in the parent, 5 lazy (not in the file)
    _img(os.path.join(d, "pagemap-10.img"), "PAGEMAP", [
        {"pages_id": 1},
        {"vaddr": 0x400000, "compat_nr_pages": 0, "flags": PE_PRESENT, "nr_pages": 3},
        {"vaddr": 0x500000, "compat_nr_pages": 0, "flags": PE_PARENT, "nr_pages": 4},
        {"vaddr": 0x600000, "compat_nr_pages": 0, "flags": PE_LAZY, "nr_pages": 5},
        {"vaddr": 0x700000, "compat_nr_pages": 0, "flags": PE_PRESENT | PE_LAZY, "nr_pages": 2},
    ])
    _pages(os.path.join(d, "pages-1.img"), 5, seed=1)
    # task 11, an old CRIU's entries: no flags means present, in_parent means in the parent
    _img(os.path.join(d, "pagemap-11.img"), "PAGEMAP", [
        {"pages_id": 2},
        {"vaddr": 0x400000, "compat_nr_pages": 2},
        {"vaddr": 0x500000, "compat_nr_pages": 6, "in_parent": True},
    ])
    _pages(os.path.join(d, "pages-2.img"), 2, seed=2)
    for name in ("core-10.img", "core-11.img", "mm-10.img"):
        with open(os.path.join(d, name), "wb") as f:
            f.write(name.encode() * 50)
    with open(os.path.join(d, "descriptors.json"), "w") as f:
        json.dump(["/dev/null"] * 3, f)
    if not runc_style:
        with open(os.path.join(d, "fastckpt.json"), "w") as f:
            json.dump({"format": 1, "kind": "process"}, f)
    with open(os.path.join(d, "stats-dump"), "wb") as f:
        f.write(b"\x40\x59\x10\x55\x06\x33\x09\x57\x00\x00\x00\x00")
    with open(os.path.join(d, "dump.log"), "w") as f:
        f.write("(00.000001) dump log\n")
    if with_manifest:
        manifest.write(str(d))
    return str(d)


CHECKPOINT_FILES = ["core-10.img", "core-11.img", "descriptors.json", "fastckpt.json", "inventory.img",
                    "mm-10.img", "pagemap-10.img", "pagemap-11.img", "pages-1.img", "pages-2.img",
                    "pstree.img", "stats-dump"]


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def flip(path, offset, bit=0x01):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ bit]))


def damaged(image_path, *needles) -> DamagedImage:
    with pytest.raises(DamagedImage) as ei:
        manifest.verify(image_path)
    e = ei.value
    assert isinstance(e, ImageError) and isinstance(e, OSError)
    assert e.errno == errno.EBADMSG
    for n in needles:
        assert n in str(e), f"{n!r} not in {str(e)!r}"
    return e


# --- the manifest -------------------------------------------------------------------------------

def test_manifest_lists_the_checkpoint_files(tmp_path):
    d = make_images(tmp_path / "img")
    path = os.path.join(d, manifest.MANIFEST_FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        m = json.load(f)
    assert m["format"] == 1 and m["algorithm"] == "xxh3_64" and m["chunk_size"] == manifest.CHUNK_SIZE
    # every file of the checkpoint; not the log, not the manifest itself
    assert sorted(m["files"]) == CHECKPOINT_FILES
    for name, entry in m["files"].items():
        with open(os.path.join(d, name), "rb") as f:
            data = f.read()
        assert entry["size"] == len(data)
        assert entry["xxh3_64"] == [xxhash.xxh3_64_hexdigest(data)], name
    assert manifest.verify(d) == m


def test_chunks_and_threads(tmp_path, monkeypatch):
    """Small chunks, computed in parallel: each chunk's checksum is the XXH3-64 of its bytes."""
    monkeypatch.setattr(manifest, "CHUNK_SIZE", 3 * PAGE)
    monkeypatch.setattr(manifest, "_PARALLEL_MIN", 0)
    d = make_images(tmp_path / "img")
    with open(os.path.join(d, manifest.MANIFEST_FILE)) as f:
        m = json.load(f)
    assert m["chunk_size"] == 3 * PAGE
    with open(os.path.join(d, "pages-1.img"), "rb") as f:
        data = f.read()
    want = [xxhash.xxh3_64_hexdigest(data[i:i + 3 * PAGE]) for i in range(0, len(data), 3 * PAGE)]
    assert len(want) == 2 and m["files"]["pages-1.img"]["xxh3_64"] == want
    manifest.verify(d)
    # the chunk size is the manifest's, not the module's
    monkeypatch.setattr(manifest, "CHUNK_SIZE", 64 << 20)
    manifest.verify(d)
    flip(os.path.join(d, "pages-1.img"), 4 * PAGE + 7)
    e = damaged(d, "pages-1.img", "altered: checksum mismatch", f"bytes {3 * PAGE}-{5 * PAGE - 1}")
    assert e.path == os.path.join(d, "pages-1.img")


def test_follower_checksums_chunks_as_they_are_written_also_after_an_idle_spell(tmp_path):
    """The Follower checksums each complete chunk of a pages image while it grows; after a spell with
    nothing written (it then looks less often) it still follows a file that grows again."""
    d = tmp_path / "img"
    d.mkdir()
    (d / "pages-9.img").write_bytes(b"old")  # there before: an older checkpoint's, not followed
    chunk = 4 * PAGE
    data = os.urandom(5 * chunk)
    f = manifest.Follower(str(d), chunk_size=chunk)
    try:
        def wait_for(n):
            deadline = time.monotonic() + 30
            while len(f.known.get("pages-1.img", {})) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            return len(f.known.get("pages-1.img", {}))

        with open(d / "pages-1.img", "wb") as out:
            out.write(data[:2 * chunk + 5])
            out.flush()
            assert wait_for(2) == 2
            time.sleep(3 * manifest.Follower.IDLE_INTERVAL)  # idle: the looks space out
            out.write(data[2 * chunk + 5:])
            out.flush()
            assert wait_for(5) == 5
    finally:
        known = f.stop()
    assert "pages-9.img" not in known
    assert known["pages-1.img"] == {i: xxhash.xxh3_64_intdigest(data[i * chunk:(i + 1) * chunk]) for i in range(5)}


def test_truncated_file(tmp_path):
    d = make_images(tmp_path / "img")
    truncate(os.path.join(d, "pages-1.img"), PAGE)
    e = damaged(d, "pages-1.img", f"truncated: {PAGE} of {5 * PAGE} bytes", d)
    assert e.problems == [("pages-1.img", f"truncated: {PAGE} of {5 * PAGE} bytes")]


def test_bit_flipped_file(tmp_path):
    d = make_images(tmp_path / "img")
    flip(os.path.join(d, "core-11.img"), 100, 0x80)
    damaged(d, "core-11.img", "altered: checksum mismatch")


def test_missing_file(tmp_path):
    d = make_images(tmp_path / "img")
    os.unlink(os.path.join(d, "core-10.img"))
    e = damaged(d, "core-10.img is missing")
    assert e.path == os.path.join(d, "core-10.img")


def test_grown_file(tmp_path):
    d = make_images(tmp_path / "img")
    with open(os.path.join(d, "pages-2.img"), "ab") as f:
        f.write(b"\0" * PAGE)
    damaged(d, "pages-2.img", f"{3 * PAGE} bytes, {2 * PAGE} expected")


def test_files_that_are_not_regular_are_refused_unopened(tmp_path):
    """A FIFO or a symlink in place of an image is named, not opened (a FIFO would block a read)."""
    d = make_images(tmp_path / "img")
    target = os.path.join(d, "core-11.img")
    os.rename(target, target + ".orig")
    os.symlink("core-11.img.orig", target)  # its content intact: only the kind of file is wrong
    os.unlink(os.path.join(d, "mm-10.img"))
    os.mkfifo(os.path.join(d, "mm-10.img"))
    t0 = time.monotonic()
    e = damaged(d, "core-11.img is not a regular file", "and 1 more damaged file: mm-10.img")
    assert e.problems == [("core-11.img", "not a regular file"), ("mm-10.img", "not a regular file")]
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("small_max", [0, 1 << 20])
def test_small_files_in_one_read_and_large_ones_in_chunks_agree(tmp_path, monkeypatch, small_max):
    """Files read whole (at most _SMALL_MAX bytes: the many small images of a many-process checkpoint)
    and files read in chunks give the same checksums; damage in either is found."""
    monkeypatch.setattr(manifest, "_SMALL_MAX", small_max)
    d = make_images(tmp_path / "img")
    with open(os.path.join(d, manifest.MANIFEST_FILE)) as f:
        m = json.load(f)
    for name in CHECKPOINT_FILES:
        with open(os.path.join(d, name), "rb") as f:
            data = f.read()
        assert m["files"][name]["xxh3_64"] == ([xxhash.xxh3_64_hexdigest(data)] if data else []), name
    # an empty image: no chunk either way
    open(os.path.join(d, "empty.img"), "wb").close()
    manifest.write(d)
    with open(os.path.join(d, manifest.MANIFEST_FILE)) as f:
        assert json.load(f)["files"]["empty.img"] == {"size": 0, "xxh3_64": []}
    manifest.verify(d)
    flip(os.path.join(d, "core-10.img"), 3)
    flip(os.path.join(d, "pages-1.img"), PAGE + 1)
    damaged(d, "core-10.img is altered: checksum mismatch", "and 1 more damaged file: pages-1.img")


def test_several_damaged_files(tmp_path):
    d = make_images(tmp_path / "img")
    os.unlink(os.path.join(d, "mm-10.img"))
    truncate(os.path.join(d, "core-10.img"), 3)
    e = damaged(d, "core-10.img is truncated: 3 of", "and 1 more damaged file: mm-10.img")
    assert [n for n, _ in e.problems] == ["core-10.img", "mm-10.img"]


def test_extra_files_and_logs_are_fine(tmp_path):
    d = make_images(tmp_path / "img")
    with open(os.path.join(d, "dump.log"), "a") as f:
        f.write("more\n")
    for name in ("restore.log", "stats-restore", "notes.txt", "extra.img"):
        with open(os.path.join(d, name), "w") as f:
            f.write("x")
    manifest.verify(d)


def test_damaged_manifest(tmp_path):
    d = make_images(tmp_path / "img")
    path = os.path.join(d, manifest.MANIFEST_FILE)
    with open(path, "r+b") as f:
        f.truncate(40)
    e = damaged(d, manifest.MANIFEST_FILE, "not JSON")
    assert e.path == path
    with open(path, "w") as f:
        json.dump({"format": 1, "algorithm": "crc32", "chunk_size": 4096,
                   "files": {"../etc/passwd": {"size": 1, "crc32": ["00000000"]}}}, f)
    damaged(d, manifest.MANIFEST_FILE, "file name")


def test_crc32_manifests_of_earlier_fastckpts_still_verify(tmp_path):
    """A manifest of CRC32s (zlib's, as fastckpt wrote them before XXH3): verified as such."""
    d = make_images(tmp_path / "img", with_manifest=False)
    files = {}
    for name in CHECKPOINT_FILES:
        with open(os.path.join(d, name), "rb") as f:
            data = f.read()
        files[name] = {"size": len(data), "crc32": [f"{zlib.crc32(data[i:i + 2 * PAGE]):08x}"
                                                    for i in range(0, len(data), 2 * PAGE)]}
    m = {"format": 1, "algorithm": "crc32", "chunk_size": 2 * PAGE, "files": files}
    with open(os.path.join(d, manifest.MANIFEST_FILE), "w") as f:
        json.dump(m, f)
    assert manifest.verify(d) == m
    flip(os.path.join(d, "pages-1.img"), 2 * PAGE + 1)
    damaged(d, "pages-1.img", "altered: checksum mismatch", f"bytes {2 * PAGE}-{4 * PAGE - 1}")


def test_unknown_algorithm_checks_sizes_and_structure(tmp_path):
    d = make_images(tmp_path / "img")
    path = os.path.join(d, manifest.MANIFEST_FILE)
    with open(path) as f:
        m = json.load(f)
    m["algorithm"] = "blake9"
    with open(path, "w") as f:
        json.dump(m, f)
    flip(os.path.join(d, "core-10.img"), 5)  # a checksum this fastckpt cannot check
    assert manifest.verify(d)["algorithm"] == "blake9"
    truncate(os.path.join(d, "pages-2.img"), PAGE)
    damaged(d, "pages-2.img", f"truncated: {PAGE} of {2 * PAGE} bytes")


def test_write_replaces_a_stale_manifest_and_leaves_none_on_failure(tmp_path, monkeypatch):
    d = make_images(tmp_path / "img")
    path = os.path.join(d, manifest.MANIFEST_FILE)
    with open(os.path.join(d, "core-10.img"), "ab") as f:
        f.write(b"new dump")
    manifest.write(d)
    manifest.verify(d)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(manifest, "checksums", full)
    with pytest.raises(ImageDirError) as ei:
        manifest.write(d)
    assert ei.value.errno == errno.ENOSPC
    assert manifest.MANIFEST_FILE in str(ei.value) and "No space left" in str(ei.value)
    assert not os.path.exists(path)
    assert not [n for n in os.listdir(d) if "manifest" in n]


def test_failed_dump_discards_the_manifest(tmp_path):
    d = make_images(tmp_path / "img")
    imagedir.discard_partial_images(d)
    assert sorted(os.listdir(d)) == ["dump.log"]


# --- images without a manifest: the structure --------------------------------------------------

def test_structure_of_a_consistent_dir(tmp_path):
    d = make_images(tmp_path / "img", with_manifest=False, runc_style=True)
    assert manifest.verify(d) is None
    manifest.check_structure(d)


def pagemap_pages(path):
    """(pages_id, pages in the pages file) of the pagemap at PATH, through fastckpt's reader."""
    pm = images.read_pagemap(path)
    return pm.pages_id, pm.stored_pages


def test_pagemap_reader_agrees_with_an_independent_one(tmp_path):
    d = make_images(tmp_path / "img", with_manifest=False)
    for name, want_id, want_pages in (("pagemap-10.img", 1, 5), ("pagemap-11.img", 2, 2)):
        assert pagemap_pages(os.path.join(d, name)) == (want_id, want_pages)
        assert _independent_present_pages(os.path.join(d, name)) == (want_id, want_pages)


def _independent_present_pages(path):
    """(pages_id, present pages) of a pagemap, unframed here, CRIU's rules for old entries applied."""
    with open(path, "rb") as f:
        payloads = unframe(f.read())
    head = json_format.MessageToDict(images.message_class("pagemap_head").FromString(payloads[0]),
                                     preserving_proto_field_name=True)
    n = 0
    for p in payloads[1:]:
        e = json_format.MessageToDict(images.message_class("pagemap_entry").FromString(p),
                                      preserving_proto_field_name=True)
        if e.get("in_parent"):
            flags = e.get("flags", 0) | PE_PARENT
        else:
            flags = e.get("flags", PE_PRESENT)
        if flags & PE_PRESENT:
            n += int(e.get("nr_pages", e["compat_nr_pages"]))
    return head["pages_id"], n


@pytest.mark.parametrize("size, needles", [
    (4 * PAGE, ["pages-1.img", f"truncated: {4 * PAGE} of {5 * PAGE} bytes", "pagemap-10.img", "5 pages"]),
    (5 * PAGE - 100, ["pages-1.img", f"truncated: {5 * PAGE - 100} of {5 * PAGE} bytes"]),
    (0, ["pages-1.img", f"truncated: 0 of {5 * PAGE} bytes"]),
    (6 * PAGE, ["pages-1.img", f"{6 * PAGE} bytes", "5 pages", f"({5 * PAGE} bytes)"]),
], ids=["one-page-short", "cut-in-a-page", "empty", "one-page-more"])
def test_structure_pages_size_mismatch(tmp_path, size, needles):
    d = make_images(tmp_path / "img", with_manifest=False, runc_style=True)
    truncate(os.path.join(d, "pages-1.img"), size)
    e = damaged(d, *needles)
    assert e.path == os.path.join(d, "pages-1.img")


def test_structure_pages_file_missing(tmp_path):
    d = make_images(tmp_path / "img", with_manifest=False)
    os.unlink(os.path.join(d, "pages-2.img"))
    damaged(d, "pages-2.img is missing", "pagemap-11.img says it holds 2 pages")


def test_structure_truncated_pagemap(tmp_path):
    d = make_images(tmp_path / "img", with_manifest=False)
    path = os.path.join(d, "pagemap-10.img")
    truncate(path, os.path.getsize(path) - 3)
    damaged(d, "pagemap-10.img is truncated")


@pytest.mark.parametrize("name", ["inventory.img", "pstree.img"])
def test_structure_inventory_and_pstree(tmp_path, name):
    d = make_images(tmp_path / "img", with_manifest=False)
    path = os.path.join(d, name)
    size = os.path.getsize(path)
    truncate(path, size - 2)
    damaged(d, name, "truncated")
    truncate(path, 0)
    damaged(d, name, "truncated")
    with open(path, "wb") as f:  # a pagemap under the wrong name: its magic says so
        f.write(frame("PAGEMAP", [{"pages_id": 1}]))
    damaged(d, name, "magic")
    os.unlink(path)
    damaged(d, f"{name} is missing")


def test_structure_undecodable_entry(tmp_path):
    d = make_images(tmp_path / "img", with_manifest=False)
    # a pstree entry without its required fields: framing fine, the message is not
    with open(os.path.join(d, "pstree.img"), "wb") as f:
        f.write(bytes.fromhex("19435654" "30302750") + (2).to_bytes(4, "little") + bytes.fromhex("0801"))
    damaged(d, "pstree.img", "undecodable", "ppid")


# --- real checkpoints --------------------------------------------------------------------------

def run_fastckpt(root, *args, workdir):
    t0 = time.monotonic()
    r = rs.run(rs.fastckpt_cmd(*(["--root", root] if root else []), *args), workdir)
    return r, time.monotonic() - t0


def assert_refused(r, elapsed, images, *needles):
    """`fastckpt restore` exited 1 at once with one line naming the file; CRIU never ran."""
    rs.assert_error(r, 1, "is damaged", *needles)
    assert elapsed < QUICK, f"the refusal took {elapsed:.1f}s"
    assert not os.path.exists(os.path.join(images, "restore.log")), "CRIU ran"
    assert not os.path.exists(os.path.join(images, "stats-restore")), "CRIU ran"


def _truncate_pages(images):
    path = os.path.join(images, "pages-1.img")
    size = os.path.getsize(path)
    assert size >= 2 * PAGE
    truncate(path, size // PAGE // 2 * PAGE)
    return ["pages-1.img", f"truncated: {size // PAGE // 2 * PAGE} of {size} bytes"]


def _flip_pages(images):
    name = sorted(n for n in os.listdir(images) if n.startswith("pages-"))[-1]
    flip_middle(images, name)
    return [name, "altered: checksum mismatch"]


def _delete_core(images):
    name = sorted(n for n in os.listdir(images) if n.startswith("core-"))[0]
    os.unlink(os.path.join(images, name))
    return [f"{name} is missing"]


DAMAGE = [_truncate_pages, _flip_pages, _delete_core]
DAMAGE_IDS = ["truncated-pages", "flipped-pages", "deleted-core"]


def copy_images(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def assert_real_manifest(images):
    """The manifest of a real dump lists every checkpoint file; an independent pagemap decoder agrees
    with the pagemap check."""
    with open(os.path.join(images, manifest.MANIFEST_FILE)) as f:
        m = json.load(f)
    names = sorted(n for n in os.listdir(images)
                   if n.endswith(".img") or n in ("descriptors.json", "fastckpt.json", "stats-dump"))
    assert sorted(m["files"]) == names
    assert "dump.log" not in m["files"] and manifest.MANIFEST_FILE not in m["files"]
    for n in names:
        assert m["files"][n]["size"] == os.path.getsize(os.path.join(images, n))
    pagemaps = [n for n in names if n.startswith("pagemap-")]
    assert pagemaps
    for n in pagemaps:
        pages_id, present = _independent_present_pages(os.path.join(images, n))
        assert present * PAGE == os.path.getsize(os.path.join(images, f"pages-{pages_id}.img"))
        assert pagemap_pages(os.path.join(images, n)) == (pages_id, present)
    manifest.verify(images)
    manifest.check_structure(images)


@pytest.fixture
def restored_trees(tmp_path):
    """Pids of process trees that a test restored, or whose restore it refused (sessions of their own):
    killed and reaped afterwards, and so are CRIUs still working in the test's directory (a CRIU
    looping on a damaged image that was not refused: its restoring tasks survive its watchdog)."""
    pids = []
    yield pids
    left = []
    for pid in pids:
        rs.kill_tree(pid)
        left += rs.reap_session(pid, timeout=10)
    criu = rs.criu_pids_in(str(tmp_path))
    for pid in criu:
        rs.kill_tree(pid, group=False)
    assert not left and not criu, f"left behind: processes {left}, criu {criu}"


def checkpoint_tree(proc_tree, tmp_path, images):
    count = str(tmp_path / "count")
    tree = proc_tree.counter(count)
    tree.wait_advancing()
    r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(tree.pid), "--image-path", images), str(tmp_path))
    assert r.returncode == 0, str(r)
    assert tree.wait_gone() == -9  # CRIU killed the tree after dumping it
    # its pid, group and session must be free for a restore: the shell's `sleep` too
    assert not rs.reap_session(tree.pid), f"pid {tree.pid} still in use"
    return tree


@pytest.mark.integration
@pytest.mark.parametrize("damage", DAMAGE, ids=DAMAGE_IDS)
def test_process_tree_damaged_checkpoint_refused(proc_tree, tmp_path, damage, restored_trees):
    images = str(tmp_path / "images")
    tree = checkpoint_tree(proc_tree, tmp_path, images)
    restored_trees.append(tree.pid)  # killed at the end should a restore happen after all
    assert_real_manifest(images)
    needles = damage(images)
    r, elapsed = run_fastckpt(None, "restore", "--image-path", images, workdir=str(tmp_path))
    assert_refused(r, elapsed, images, images, *needles)
    assert not rs.pids_using(tree.pid), "a process of the tree was restored"
    assert not rs.criu_pids_in(str(tmp_path))


@pytest.mark.integration
def test_process_tree_intact_checkpoint_restores(proc_tree, tmp_path, restored_trees):
    images = str(tmp_path / "images")
    tree = checkpoint_tree(proc_tree, tmp_path, images)
    spare = copy_images(images, str(tmp_path / "spare"))
    # logs may change (a failed restore writes one): the checkpoint is still intact
    with open(os.path.join(images, "dump.log"), "a") as f:
        f.write("appended\n")
    stopped = tree.count() or 0  # empty: the dump caught the shell between truncating and writing it
    pid_file = str(tmp_path / "restored.pid")
    restored_trees.append(tree.pid)
    r, _ = run_fastckpt(None, "restore", "--image-path", images, "--pid-file", pid_file,
                        workdir=str(tmp_path))
    assert r.returncode == 0, str(r)
    with open(pid_file) as f:
        assert int(f.read()) == tree.pid
    cs.wait_until(lambda: (tree.count() or 0) > stopped, "the restored counter to go on")
    assert os.path.isfile(os.path.join(images, "restore.log"))
    manifest.verify(spare)


@pytest.mark.integration
def test_checkpoint_reports_a_manifest_failure(proc_tree, tmp_path, monkeypatch):
    """In-process API: the dump succeeded, the manifest could not be written: said clearly, target named."""
    import fastckpt

    tree = proc_tree.counter(str(tmp_path / "count"))
    images = str(tmp_path / "images")

    def full(path, known=None):
        raise ImageDirError(f"cannot write {manifest.MANIFEST_FILE} in {path}: No space left on device",
                            errno=errno.ENOSPC)

    monkeypatch.setattr(manifest, "write", full)
    with pytest.raises(ImageDirError) as ei:
        fastckpt.checkpoint(pid=tree.pid, image_path=images, leave_running=True)
    msg = str(ei.value)
    assert ei.value.errno == errno.ENOSPC
    for needle in ("checkpoint completed", images, f"process {tree.pid} was left running",
                   "manifest could not be written", "No space left"):
        assert needle in msg, msg
    assert tree.alive()
    assert os.path.exists(os.path.join(images, "pstree.img"))
    assert not os.path.exists(os.path.join(images, manifest.MANIFEST_FILE))


@pytest.mark.integration
@pytest.mark.parametrize("damage", DAMAGE, ids=DAMAGE_IDS)
def test_container_damaged_checkpoint_refused(container, runc_root, tmp_path, damage, restored_trees):
    ct = container()
    images = str(tmp_path / "images")
    r = cs.fastckpt("--root", runc_root, "checkpoint", "--image-path", images, ct.id)
    cs.assert_ok(r)
    assert ct.runc_state() is None
    assert_real_manifest(images)
    needles = damage(images)
    r, elapsed = run_fastckpt(runc_root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id,
                              workdir=str(tmp_path))
    assert_refused(r, elapsed, images, *needles)
    rs.assert_nothing_left(ct.id, runc_root, str(tmp_path))
    assert ct.runc_state() is None


@pytest.mark.integration
def test_container_intact_checkpoint_restores(container, runc_root, tmp_path):
    ct = container()
    images = str(tmp_path / "images")
    cs.assert_ok(cs.fastckpt("--root", runc_root, "checkpoint", "--image-path", images, ct.id))
    stopped = ct.count()
    r, _ = run_fastckpt(runc_root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id,
                        workdir=str(tmp_path))
    assert r.returncode == 0, str(r)
    assert ct.status() == "running"
    ct.wait_count(stopped + 2)
    manifest.verify(images)  # a restore changes nothing of the checkpoint


@pytest.mark.integration
def test_runc_checkpoint_truncated_pages_refused(container, runc_root, tmp_path, restored_trees):
    """Images of `runc checkpoint` have no manifest: the pagemap/pages check catches the truncation."""
    ct = container()
    images = str(tmp_path / "images")
    rc = cs.run_quiet(["runc", "--root", runc_root, "checkpoint", "--image-path", images, ct.id])
    assert rc == 0, f"runc checkpoint failed (exit {rc})"
    assert not os.path.exists(os.path.join(images, manifest.MANIFEST_FILE))
    assert manifest.verify(images) is None  # intact: the structure checks pass
    for n in os.listdir(images):
        if n.startswith("pagemap-"):
            pages_id, present = _independent_present_pages(os.path.join(images, n))
            assert present * PAGE == os.path.getsize(os.path.join(images, f"pages-{pages_id}.img"))
    size = os.path.getsize(os.path.join(images, "pages-1.img"))
    needles = _truncate_pages(images)
    r, elapsed = run_fastckpt(runc_root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id,
                              workdir=str(tmp_path))
    assert_refused(r, elapsed, images, *needles, f"pages of {PAGE} bytes", "pagemap-")
    assert f"{size // PAGE} pages" in r.stderr
    rs.assert_nothing_left(ct.id, runc_root, str(tmp_path))


@pytest.mark.integration
def test_api_raises_damaged_image(tmp_path, proc_tree, restored_trees):
    import fastckpt

    images = str(tmp_path / "images")
    restored_trees.append(checkpoint_tree(proc_tree, tmp_path, images).pid)
    truncate(os.path.join(images, "pages-1.img"), 0)
    with pytest.raises(fastckpt.ImageError) as ei:
        fastckpt.restore(image_path=images)
    assert isinstance(ei.value, fastckpt.DamagedImage) and isinstance(ei.value, DamagedImage)
    assert ei.value.path == os.path.join(images, "pages-1.img")
    assert not os.path.exists(os.path.join(images, "restore.log"))


# --- the pages images checked while CRIU restores (manifest.verify_overlapped) ----------------------------

BIG_PAGES = manifest.OVERLAP_MIN + 4 * PAGE  # a pages image large enough to be checked during the restore


def make_big_images(d):
    """make_images' checkpoint plus a pages image of BIG_PAGES bytes (not framed: the manifest covers it)."""
    make_images(d, with_manifest=False)
    with open(os.path.join(d, "pages-3.img"), "wb") as f:
        block = bytes(range(256)) * (PAGE // 256)
        for i in range(BIG_PAGES // PAGE):
            f.write(block[i % 256:] + block[:i % 256])
    manifest.write(str(d))
    return str(d)


def test_overlapped_verification_leaves_only_the_large_pages_images(tmp_path):
    d = make_big_images(tmp_path / "i")
    check = manifest.verify_overlapped(d)
    assert check is not None and sorted(check.sizes) == ["pages-3.img"]  # the small ones were checked before
    try:
        check.result()  # intact
    finally:
        check.close()
    assert check.done()


def test_overlapped_verification_finds_a_flipped_pages_byte_in_its_thread(tmp_path):
    d = make_big_images(tmp_path / "i")
    flip(os.path.join(d, "pages-3.img"), BIG_PAGES - 10)  # in its second (last) chunk
    check = manifest.verify_overlapped(d)  # sizes right, the metadata intact: CRIU may start
    assert check is not None
    try:
        with pytest.raises(DamagedImage) as ei:
            check.result()
    finally:
        check.close()
    e = ei.value
    assert e.errno == errno.EBADMSG and e.path == os.path.join(d, "pages-3.img")
    assert f"pages-3.img is altered: checksum mismatch in bytes 16777216-{BIG_PAGES - 1}" in str(e), str(e)
    damaged(d, "pages-3.img is altered: checksum mismatch")  # what verify() says, in line


@pytest.mark.parametrize("damage", ["flipped-metadata", "truncated-pages", "grown-pages", "flipped-small-pages"])
def test_overlapped_verification_refuses_before_criu(tmp_path, damage):
    """Sizes, the metadata images and the small pages images are checked before CRIU starts."""
    d = make_big_images(tmp_path / "i")
    if damage == "flipped-metadata":
        flip(os.path.join(d, "core-10.img"), 7)
        needle = "core-10.img is altered: checksum mismatch"
    elif damage == "truncated-pages":
        truncate(os.path.join(d, "pages-3.img"), BIG_PAGES - PAGE)
        needle = f"pages-3.img is truncated: {BIG_PAGES - PAGE} of {BIG_PAGES} bytes"
    elif damage == "grown-pages":
        truncate(os.path.join(d, "pages-3.img"), BIG_PAGES + PAGE)
        needle = f"pages-3.img is altered: {BIG_PAGES + PAGE} bytes, {BIG_PAGES} expected"
    else:
        flip(os.path.join(d, "pages-1.img"), 5)
        needle = "pages-1.img is altered: checksum mismatch"
    with pytest.raises(DamagedImage) as ei:
        manifest.verify_overlapped(d)
    assert needle in str(ei.value), str(ei.value)


def test_small_pages_images_are_all_checked_before_criu(tmp_path):
    """Pages images of less than OVERLAP_MIN bytes in all: nothing is left for a thread."""
    d = make_images(tmp_path / "i")
    assert manifest.verify_overlapped(d) is None
    flip(os.path.join(d, "pages-2.img"), 3)
    with pytest.raises(DamagedImage, match="pages-2.img is altered"):
        manifest.verify_overlapped(d)


def test_pages_check_reports_read_errors(tmp_path):
    """A pages image that went, or that ended early, while its thread read it: a DamagedImage naming it."""
    d = make_big_images(tmp_path / "i")
    want = {"pages-3.img": ["0" * 16] * 2}
    missing = manifest.PagesCheck(d, {"gone.img": BIG_PAGES}, {"gone.img": want["pages-3.img"]},
                                  manifest.CHUNK_SIZE, manifest.ALGORITHM)
    short = manifest.PagesCheck(d, {"pages-3.img": BIG_PAGES + PAGE}, want, manifest.CHUNK_SIZE, manifest.ALGORITHM)
    try:
        with pytest.raises(DamagedImage, match="gone.img is unreadable: No such file or directory"):
            missing.result()
        with pytest.raises(DamagedImage, match=f"pages-3.img is truncated: {BIG_PAGES} of {BIG_PAGES + PAGE} bytes"):
            short.result()
    finally:
        missing.close()
        short.close()


def test_pages_check_close_stops_its_thread(tmp_path):
    d = make_big_images(tmp_path / "i")
    flip(os.path.join(d, "pages-3.img"), 0)
    check = manifest.verify_overlapped(d)
    check.close()  # at once: whatever it had done, its thread is gone
    assert check.done()
    assert not [t for t in __import__("threading").enumerate() if t.name == "fastckpt-pages-check"]


# a process tree of 64 MiB (not one zero page): its pages image is checked while CRIU restores it
BIG_TREE = """
import os, sys, time
mem = bytearray(range(1, 256)) * ((64 << 20) // 255)
path, n = sys.argv[1], 0
while True:
    n += 1
    with open(path + ".t", "w") as f:
        f.write(f"{n}\\n")
    os.replace(path + ".t", path)
    time.sleep(0.05)
"""


def checkpoint_big_tree(proc_tree, tmp_path, images):
    import sys

    count = str(tmp_path / "count")
    tree = proc_tree([sys.executable, "-c", BIG_TREE, count], count_file=count)
    tree.wait_advancing()
    r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(tree.pid), "--image-path", images), str(tmp_path))
    assert r.returncode == 0, str(r)
    assert tree.wait_gone() == -9
    assert not rs.reap_session(tree.pid), f"pid {tree.pid} still in use"
    return tree


def big_tree_images(proc_tree, tmp_path, restored_trees):
    """A 64 MiB tree checkpointed into tmp_path/images (its restored self removed after the test): (the
    images, the tree, its count at the checkpoint, its largest pages image, checked while CRIU restores)."""
    images = str(tmp_path / "images")
    tree = checkpoint_big_tree(proc_tree, tmp_path, images)
    restored_trees.append(tree.pid)
    return images, tree, tree.count(), largest_pages(images)


def flip_middle(images, name):
    """A bit of IMAGES/NAME flipped half-way through it (its size unchanged)."""
    path = os.path.join(images, name)
    flip(path, os.path.getsize(path) // 2)


def largest_pages(images):
    name = max((n for n in os.listdir(images) if manifest.is_pages_image(n)),
               key=lambda n: os.path.getsize(os.path.join(images, n)))
    assert os.path.getsize(os.path.join(images, name)) >= manifest.OVERLAP_MIN, "no pages image to overlap"
    return name


def assert_tree_gone(pid):
    """No process of the tree is left: killed by CRIU; its zombie, reparented to PID 1 (which reaps slowly
    here), may take a moment to go."""
    rs.wait_until(lambda: not rs.pids_using(pid), f"the processes of the tree (pid {pid}) to go", timeout=10)


def assert_refused_by_criu_notify(r, images, name):
    """Refused with the damaged file named, after CRIU read the pages and before the tree ran: CRIU's log
    says it aborted at the post-restore notification."""
    rs.assert_error(r, 1, "is damaged", f"{name} is altered: checksum mismatch", images)
    with open(os.path.join(images, "restore.log")) as f:
        log = f.read()
    assert "Aborting restore due to post-restore script" in log, log[-2000:]


@pytest.mark.integration
def test_process_tree_flipped_pages_refused_during_the_restore(proc_tree, tmp_path, restored_trees):
    import robust_support as rb

    images, tree, stopped, name = big_tree_images(proc_tree, tmp_path, restored_trees)
    flip_middle(images, name)
    r = rs.run(rs.fastckpt_cmd("restore", "--image-path", images), str(tmp_path))
    assert_refused_by_criu_notify(r, images, name)
    assert_tree_gone(tree.pid)
    assert tree.count() == stopped, "the restored tree ran"
    assert not rs.criu_pids_in(str(tmp_path))
    assert not rb.restore_cgroups(r.pid), rb.restore_cgroups(r.pid)


@pytest.mark.integration
def test_process_tree_truncated_big_pages_refused_before_criu(proc_tree, tmp_path, restored_trees):
    images = str(tmp_path / "images")
    restored_trees.append(checkpoint_big_tree(proc_tree, tmp_path, images).pid)
    name = largest_pages(images)
    size = os.path.getsize(os.path.join(images, name))
    truncate(os.path.join(images, name), size - PAGE)
    r, elapsed = run_fastckpt(None, "restore", "--image-path", images, workdir=str(tmp_path))
    assert_refused(r, elapsed, images, name, f"truncated: {size - PAGE} of {size} bytes")


@pytest.mark.integration
def test_api_pages_read_error_during_the_restore(proc_tree, tmp_path, restored_trees, monkeypatch):
    """An I/O error of the pages check (simulated: the read of the pages image fails) fails the restore with
    the file named, through the API; the tree CRIU had restored is killed, CRIU's cgroup removed."""
    import fastckpt
    import robust_support as rb

    images, tree, stopped, name = big_tree_images(proc_tree, tmp_path, restored_trees)
    real = manifest._chunk_sum

    def failing(image_path, n, *a, **kw):
        if n == name:
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.path.join(image_path, n))
        return real(image_path, n, *a, **kw)

    monkeypatch.setattr(manifest, "_chunk_sum", failing)
    with pytest.raises(DamagedImage) as ei:
        fastckpt.restore(image_path=images)
    assert f"{name} is unreadable: Input/output error" in str(ei.value), str(ei.value)
    assert os.path.exists(os.path.join(images, "restore.log"))  # CRIU ran
    assert_tree_gone(tree.pid)
    assert tree.count() == stopped, "the restored tree ran"
    assert not rb.restore_cgroups(os.getpid()), rb.restore_cgroups(os.getpid())
    assert not [t for t in __import__("threading").enumerate() if t.name == "fastckpt-pages-check"]


@pytest.mark.integration
def test_container_flipped_pages_refused_during_the_restore(containers, tmp_path):
    """A 64 MiB container: a flipped byte in its pages image is found while CRIU restores it; the restore
    fails naming the file, the container never ran again, nothing is left; the intact copy restores
    with its memory intact."""
    ct = containers(64)
    images = str(tmp_path / "images")
    cs.assert_ok(cs.fastckpt("--root", ct.root, "checkpoint", "--image-path", images, ct.id))
    assert ct.runc_state() is None
    stopped = ct.counter.last()
    intact = copy_images(images, str(tmp_path / "intact"))
    name = largest_pages(images)
    flip_middle(images, name)
    r = rs.run(rs.fastckpt_cmd("--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle,
                               ct.id), str(tmp_path))
    assert_refused_by_criu_notify(r, images, name)
    rs.assert_nothing_left(ct.id, ct.root, str(tmp_path))
    assert ct.runc_state() is None
    time.sleep(0.3)
    assert ct.counter.last() == stopped, "the restored container ran"

    r = rs.run(rs.fastckpt_cmd("--root", ct.root, "restore", "-d", "--image-path", intact, "-b", ct.bundle,
                               ct.id), str(tmp_path))
    assert r.returncode == 0, str(r)
    ct.counter.assert_continued(stopped)
    ct.assert_memory_intact()


@pytest.mark.integration
def test_container_flipped_metadata_refused_before_criu(containers, tmp_path):
    """The metadata images are checked before CRIU starts even when the pages are checked during it."""
    ct = containers(64)
    images = str(tmp_path / "images")
    cs.assert_ok(cs.fastckpt("--root", ct.root, "checkpoint", "--image-path", images, ct.id))
    largest_pages(images)  # the pages would be checked during the restore
    name = sorted(n for n in os.listdir(images) if n.startswith("mm-"))[0]
    flip_middle(images, name)
    r, elapsed = run_fastckpt(ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id,
                              workdir=str(tmp_path))
    assert_refused(r, elapsed, images, f"{name} is altered: checksum mismatch")
    rs.assert_nothing_left(ct.id, ct.root, str(tmp_path))
    assert ct.runc_state() is None


@pytest.mark.integration
@pytest.mark.parametrize("damaged_pages", [False, True], ids=["intact", "flipped-pages"])
def test_ctrl_c_during_an_overlapped_restore(containers, tmp_path, slow_criu, damaged_pages):
    """Ctrl-C while CRIU restores (and the pages are checked): held back as before; the restore completes
    (then says it was interrupted after it) or, damaged, is undone (then says nothing was restored)."""
    import signal

    import robust_support as rb

    ct = containers(64)
    images = str(tmp_path / "images")
    cs.assert_ok(cs.fastckpt("--root", ct.root, "checkpoint", "--image-path", images, ct.id))
    stopped = ct.counter.last()
    name = largest_pages(images)
    if damaged_pages:
        flip(os.path.join(images, name), 5 * PAGE + 1)
    mark = str(tmp_path / "criu-starting")
    cli = rb.Cli(["--root", ct.root, "restore", "-d", "--image-path", images, "-b", ct.bundle, ct.id],
                 str(tmp_path), env=slow_criu(mark))
    try:
        rb.wait_for(lambda: os.path.exists(mark) or not cli.running(), "criu to get its request", timeout=60)
        assert cli.running(), "fastckpt ended before CRIU got its request"
        cli.signal_group(signal.SIGINT)
        r = cli.wait()
    finally:
        cli.stop()
    assert r.returncode == 130, str(r)
    assert "Traceback" not in r.stderr, r.stderr
    if damaged_pages:
        assert "interrupted: nothing was restored and nothing was left behind" in r.stderr, r.stderr
        rs.assert_nothing_left(ct.id, ct.root, str(tmp_path))
        time.sleep(0.3)
        assert ct.counter.last() == stopped, "the restored container ran"
    else:
        assert f"interrupted after the restore completed: container {ct.id!r} runs" in r.stderr, r.stderr
        assert ct.status() == "running"
        ct.counter.assert_continued(stopped)
        ct.assert_memory_intact()


@pytest.mark.integration
def test_session_flipped_pages_refused_during_the_restore(proc_tree, tmp_path, restored_trees):
    """fastckpt.Session's restore (a warm CRIU service) checks the pages the same way."""
    import fastckpt

    images, tree, stopped, name = big_tree_images(proc_tree, tmp_path, restored_trees)
    flip(os.path.join(images, name), os.path.getsize(os.path.join(images, name)) - 1)
    with fastckpt.Session() as s:
        with pytest.raises(DamagedImage) as ei:
            s.restore(image_path=images)
    assert f"{name} is altered: checksum mismatch" in str(ei.value), str(ei.value)
    with open(os.path.join(images, "restore.log")) as f:
        assert "Aborting restore due to post-restore script" in f.read()
    assert_tree_gone(tree.pid)
    assert tree.count() == stopped, "the restored tree ran"


@pytest.mark.integration
def test_auto_dedup_restore_checks_the_pages_first(containers, tmp_path):
    """restore --auto-dedup: CRIU punches the pages it restored out of the images, so they are checked
    before CRIU (read meanwhile, they would be zeros and mismatch): an intact checkpoint restores; a
    flipped byte is refused before CRIU starts."""
    ct = containers(64)
    images = str(tmp_path / "images")
    cs.assert_ok(cs.fastckpt("--root", ct.root, "checkpoint", "--image-path", images, ct.id))
    stopped = ct.counter.last()
    damaged_copy = copy_images(images, str(tmp_path / "damaged"))
    name = largest_pages(images)
    flip_middle(damaged_copy, name)
    r, elapsed = run_fastckpt(ct.root, "restore", "-d", "--auto-dedup", "--image-path", damaged_copy, "-b",
                              ct.bundle, ct.id, workdir=str(tmp_path))
    assert_refused(r, elapsed, damaged_copy, f"{name} is altered: checksum mismatch")
    rs.assert_nothing_left(ct.id, ct.root, str(tmp_path))

    blocks = os.stat(os.path.join(images, name)).st_blocks
    r, _ = run_fastckpt(ct.root, "restore", "-d", "--auto-dedup", "--image-path", images, "-b", ct.bundle, ct.id,
                        workdir=str(tmp_path))
    assert r.returncode == 0, str(r)
    assert os.stat(os.path.join(images, name)).st_blocks < blocks  # CRIU punched the restored pages out
    ct.counter.assert_continued(stopped)
    ct.assert_memory_intact()


@pytest.mark.integration
def test_process_tree_big_intact_restores_with_its_pages_checked_meanwhile(proc_tree, tmp_path, restored_trees):
    """An intact 64 MiB tree restores (its pages image checked while CRIU restores it) and runs on."""
    import fastckpt

    images, tree, stopped, _ = big_tree_images(proc_tree, tmp_path, restored_trees)
    res = fastckpt.restore(image_path=images)
    assert res.pid == tree.pid
    cs.wait_until(lambda: (tree.count() or 0) > stopped, "the restored tree to count on")
    with open(os.path.join(images, "restore.log")) as f:
        assert "Running post-restore scripts" in f.read()  # the notification the pages check waits at
    assert not [t for t in __import__("threading").enumerate() if t.name == "fastckpt-pages-check"]
