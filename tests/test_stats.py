"""CRIU's statistics: the decoder of stats-dump/stats-restore on crafted bytes, and
`--print-stats` / ``result.stats()`` against real dumps and restores of process trees.

The crafted images are written here byte by byte (a few lines of protobuf
wire format), not with fastckpt's own encoder, so the decoder is checked
against an independent writer; CRIU's own decoder (pycriu) is a second
reference where it is installed.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys

import pytest

import ckpt_support as cs
import fastckpt
from fastckpt import cli, images
from fastckpt.engine import CheckpointResult
from fastckpt.errors import Error, ImageError
from fastckpt.restorer import RestoreResult

SERVICE = 0x55105940
COMMON = 0x54564319
STATS = 0x57093306
INVENTORY = 0x58313116
PAGE = os.sysconf("SC_PAGE_SIZE")

DUMP = {
    "freezing_time": 1234, "frozen_time": 56789, "memdump_time": 2000, "memwrite_time": 300,
    "pages_scanned": 4096, "pages_skipped_parent": 7, "pages_written": 1 << 33,  # > 32 bits: a real uint64
    "irmap_resolve": 5, "pages_lazy": 0, "page_pipes": 8, "page_pipe_bufs": 9,
    "shpages_scanned": 10, "shpages_skipped_parent": 11, "shpages_written": 12,
}
DUMP_NUMBERS = {name: n for n, name in enumerate(DUMP, 1)}
RESTORE = {"pages_compared": 9, "pages_skipped_cow": 2, "forking_time": 310, "restore_time": 21892,
           "pages_restored": 32}
RESTORE_NUMBERS = {name: n for n, name in enumerate(RESTORE, 1)}


# --- an independent writer of CRIU images -------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def message(values: dict, numbers: dict) -> bytes:
    """A protobuf message of varint fields."""
    return b"".join(varint(numbers[k] << 3) + varint(v) for k, v in values.items())


def stats_entry(dump=None, restore=None) -> bytes:
    out = b""
    for number, sub in ((1, dump), (2, restore)):
        if sub is not None:
            out += varint(number << 3 | 2) + varint(len(sub)) + sub
    return out


def image(*entries: bytes, magics=(SERVICE, STATS)) -> bytes:
    return b"".join(struct.pack("<I", m) for m in magics) + b"".join(
        struct.pack("<I", len(e)) + e for e in entries)


def dump_image(values=DUMP, **kw) -> bytes:
    return image(stats_entry(dump=message(values, DUMP_NUMBERS)), **kw)


def restore_image(values=RESTORE, **kw) -> bytes:
    return image(stats_entry(restore=message(values, RESTORE_NUMBERS)), **kw)


def write(tmp_path, data: bytes, kind="dump"):
    path = tmp_path / f"stats-{kind}"
    path.write_bytes(data)
    return path


def pycriu_entry(data: bytes, kind: str) -> dict:
    """CRIU's own decoding of a stats image (skips when pycriu is not installed)."""
    pyimages = pytest.importorskip("pycriu.images")
    img = pyimages.load(io.BytesIO(data))
    assert img["magic"] == "STATS"
    assert len(img["entries"]) == 1
    return {k: int(v) for k, v in img["entries"][0][kind].items()}


# --- the decoder on crafted bytes ------------------------------------------------------------

def test_decodes_a_dump_stats_file(tmp_path):
    write(tmp_path, dump_image())
    assert images.read_stats(str(tmp_path)) == DUMP
    assert images.read_stats(str(tmp_path), "dump") == DUMP
    assert list(images.read_stats(str(tmp_path))) == list(DUMP)  # CRIU's order


def test_decodes_a_restore_stats_file(tmp_path):
    write(tmp_path, restore_image(), "restore")
    assert images.read_stats(str(tmp_path), "restore") == RESTORE


def test_crafted_bytes_agree_with_criu_own_decoder():
    assert pycriu_entry(dump_image(), "dump") == DUMP
    assert pycriu_entry(restore_image(), "restore") == RESTORE


def test_image_without_head_magic(tmp_path):
    """Images of old CRIUs have only the type magic."""
    write(tmp_path, dump_image(magics=(STATS,)))
    assert images.read_stats(str(tmp_path)) == DUMP


def test_absent_optional_fields_are_left_out(tmp_path):
    required = {k: DUMP[k] for k in ("freezing_time", "frozen_time", "memdump_time", "memwrite_time",
                                     "pages_scanned", "pages_skipped_parent", "pages_written", "pages_lazy")}
    write(tmp_path, dump_image(required))
    assert images.read_stats(str(tmp_path)) == required


def test_unknown_fields_of_a_newer_criu_are_ignored(tmp_path):
    extra = message(DUMP, DUMP_NUMBERS) + varint(99 << 3) + varint(1)
    write(tmp_path, image(stats_entry(dump=extra)))
    assert images.read_stats(str(tmp_path)) == DUMP


def test_image_magic(tmp_path):
    p = write(tmp_path, dump_image())
    assert images.image_magic(str(p)) == images.STATS_MAGIC == STATS
    inv = tmp_path / "inventory.img"
    inv.write_bytes(struct.pack("<I", INVENTORY) + b"\0" * 8)
    assert images.image_magic(str(inv)) == INVENTORY
    common = tmp_path / "core-1.img"
    common.write_bytes(struct.pack("<II", COMMON, 0x55053847))
    assert images.image_magic(str(common)) == 0x55053847


def assert_image_error(exc_info, path, *needles, code=errno.EBADMSG):
    e = exc_info.value
    assert isinstance(e, Error) and isinstance(e, OSError)
    assert str(path) in str(e), str(e)
    assert e.path == str(path)
    assert e.errno == code
    what = str(e).replace(str(path), "<path>")  # tmp_path holds the test's name: never match on it
    for needle in needles:
        assert needle in what, str(e)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ImageError) as ei:
        images.read_stats(str(tmp_path))
    assert_image_error(ei, tmp_path / "stats-dump", "does not exist", code=errno.ENOENT)
    with pytest.raises(ImageError) as ei:
        images.read_stats(str(tmp_path / "nowhere"), "restore")
    assert_image_error(ei, tmp_path / "nowhere" / "stats-restore", "does not exist", code=errno.ENOENT)
    with pytest.raises(ImageError) as ei:
        images.image_magic(str(tmp_path / "x.img"))
    assert_image_error(ei, tmp_path / "x.img", code=errno.ENOENT)


@pytest.mark.parametrize("data, needle", [
    (image(stats_entry(dump=message(DUMP, DUMP_NUMBERS)), magics=(SERVICE, INVENTORY)), "not a CRIU statistics"),
    (image(stats_entry(dump=message(DUMP, DUMP_NUMBERS)), magics=(0xDEADBEEF,)), "not a CRIU statistics"),
    (b"", "too short for its magic"),
    (b"\x40\x59", "too short for its magic"),
    (struct.pack("<I", SERVICE), "truncated after its head magic"),
], ids=["inventory-magic", "bad-magic", "empty", "2-bytes", "head-magic-only"])
def test_bad_magic(tmp_path, data, needle):
    p = write(tmp_path, data)
    with pytest.raises(ImageError) as ei:
        images.read_stats(str(tmp_path))
    assert_image_error(ei, p, needle)


def test_truncated_entry(tmp_path):
    good = dump_image()
    for cut in (1, 5, len(good) - 8 - 4 - 1):  # into the payload, down to one byte of it
        p = write(tmp_path, good[:-cut])
        with pytest.raises(ImageError) as ei:
            images.read_stats(str(tmp_path))
        assert_image_error(ei, p, "damaged", "truncated")


def test_truncated_entry_size(tmp_path):
    p = write(tmp_path, image(magics=(SERVICE, STATS)) + b"\x05\x00")
    with pytest.raises(ImageError) as ei:
        images.read_stats(str(tmp_path))
    assert_image_error(ei, p, "damaged", "truncated")


def test_no_entry(tmp_path):
    p = write(tmp_path, image())
    with pytest.raises(ImageError) as ei:
        images.read_stats(str(tmp_path))
    assert_image_error(ei, p, "no statistics entry")


@pytest.mark.parametrize("payload", [
    b"\xff\xff\xff",  # a varint that never ends
    stats_entry(dump=message({"freezing_time": 1}, DUMP_NUMBERS)),  # required fields missing
], ids=["garbage", "missing-required"])
def test_undecodable_entry(tmp_path, payload):
    p = write(tmp_path, image(payload))
    with pytest.raises(ImageError) as ei:
        images.read_stats(str(tmp_path))
    assert_image_error(ei, p, "damaged", "cannot decode")


def test_wrong_kind(tmp_path):
    p = write(tmp_path, restore_image(), "dump")
    with pytest.raises(ImageError) as ei:
        images.read_stats(str(tmp_path), "dump")
    assert_image_error(ei, p, "restore statistics, not dump")


def test_bad_kind_argument(tmp_path):
    with pytest.raises(ValueError):
        images.read_stats(str(tmp_path), "pre-dump")


def test_image_error_is_exported_and_pickles(tmp_path):
    assert fastckpt.ImageError is ImageError
    assert fastckpt.read_stats is images.read_stats
    with pytest.raises(ImageError) as ei:
        images.read_stats(str(tmp_path))
    e = pickle.loads(pickle.dumps(ei.value))
    assert type(e) is ImageError and e.path == ei.value.path and e.errno == errno.ENOENT


def test_own_encoder_round_trips():
    assert images.decode_stats(images.encode_stats(DUMP)) == DUMP
    assert images.decode_stats(images.encode_stats(RESTORE, "restore"), "restore") == RESTORE
    assert images.encode_stats(DUMP) == dump_image()  # the same bytes as the independent writer


# --- the results' stats() and the CLI's printing, on crafted files ----------------------------------

def test_result_stats_read_the_work_dir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write(work, dump_image())
    write(work, restore_image(), "restore")
    c = CheckpointResult(image_path=str(tmp_path), work_path=str(work), log_path="", pid=1, wall_time=0.0125)
    assert c.stats() == {"criu": DUMP, "wall_time_ms": 12.5}
    r = RestoreResult(pid=1, image_path=str(tmp_path), work_path=str(work), log_path="", wall_time=2.0)
    assert r.stats() == {"criu": RESTORE, "wall_time_ms": 2000.0}
    # nothing of the stats is kept in the result (its fields are what --json prints)
    assert "stats" not in c.__dict__ and "stats" not in r.__dict__
    missing = CheckpointResult(image_path=str(tmp_path), work_path=str(tmp_path / "none"), log_path="", pid=1)
    with pytest.raises(ImageError):
        missing.stats()


@pytest.mark.parametrize("command", ["checkpoint", "restore"])
def test_print_stats_is_an_option(command):
    args = cli.build_parser().parse_args([command, "--print-stats"])
    assert args.print_stats is True
    assert cli.build_parser().parse_args([command]).print_stats is False


def test_print_result(tmp_path, capsys):
    write(tmp_path, dump_image())
    res = CheckpointResult(image_path=str(tmp_path), work_path=str(tmp_path), log_path="", pid=1, wall_time=0.5)
    parser = cli.build_parser()
    cli._print_result(res, parser.parse_args(["checkpoint", "--print-stats"]))
    assert json.loads(capsys.readouterr().out) == {"criu": DUMP, "wall_time_ms": 500.0}
    cli._print_result(res, parser.parse_args(["checkpoint", "--print-stats", "--json"]))
    out = json.loads(capsys.readouterr().out)  # one object: the result, its stats inside
    assert out["stats"] == {"criu": DUMP, "wall_time_ms": 500.0} and out["pid"] == 1
    cli._print_result(res, parser.parse_args(["checkpoint"]))
    assert capsys.readouterr().out == ""


# --- the cost: no protobuf unless statistics are asked for --------------------------------------

def modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "; import sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_cli_import_does_not_load_protobuf():
    mods = modules_after("import fastckpt.cli, fastckpt.images; fastckpt.cli.build_parser()")
    assert "fastckpt.images" in mods
    assert not {m for m in mods if m.startswith("google")}, "protobuf is imported without a need"


def test_version_does_not_load_protobuf():
    mods = modules_after("import fastckpt.cli, sys\ntry: fastckpt.cli.main(['--version'])\n"
                         "except SystemExit: pass")
    assert not {m for m in mods if m.startswith("google")}


def test_decoding_loads_protobuf(tmp_path):
    """The check above can fail: decoding does import protobuf."""
    write(tmp_path, dump_image())
    mods = modules_after(f"import fastckpt.images; fastckpt.images.read_stats({str(tmp_path)!r})")
    assert "google.protobuf" in mods


# --- real dumps and restores ---------------------------------------------------------------------

def pages_img_bytes(image_dir) -> int:
    return sum(os.path.getsize(os.path.join(image_dir, n)) for n in cs.images(str(image_dir), "pages-"))


def parse_stats(proc) -> dict:
    cs.assert_ok(proc)
    out = json.loads(proc.stdout)  # one JSON document, nothing else on stdout
    assert set(out) == {"criu", "wall_time_ms"}, out
    assert isinstance(out["wall_time_ms"], float) and out["wall_time_ms"] > 0
    return out


def check_dump_stats(out: dict, work_dir, image_dir) -> dict:
    criu = out["criu"]
    raw = (work_dir / "stats-dump").read_bytes()
    assert criu == images.read_stats(str(work_dir), "dump")  # what is on disk
    assert set(criu) == set(DUMP)  # CRIU 4.x writes every field
    # what CRIU itself wrote: the pages it counted are the pages in its images
    assert criu["pages_written"] > 0
    assert criu["pages_written"] * PAGE == pages_img_bytes(image_dir)
    assert criu["pages_scanned"] >= criu["pages_written"]
    assert criu["pages_skipped_parent"] == 0 and criu["pages_lazy"] == 0  # no parent, no lazy pages
    # CRIU froze and dumped within fastckpt's wall time
    assert out["wall_time_ms"] * 1000 >= criu["frozen_time"] > 0
    assert criu == pycriu_entry(raw, "dump")  # CRIU's own decoder
    return criu


@pytest.fixture
def restored():
    """A list to append pids of restored trees to (not our children): killed with their group."""
    pids = []
    yield pids
    for pid in pids:
        try:
            if cs.proc_alive(pid) and os.getsid(pid) == pid:  # still the restored session leader
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cs.wait_until(lambda: not cs.proc_alive(pid), f"restored pid {pid} to die")


def tree_pids(image_dir) -> list:
    return [int(n[len("core-"):-len(".img")]) for n in cs.images(str(image_dir), "core-")]


@pytest.mark.integration
def test_checkpoint_print_stats(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    img = tmp_path / "img"
    proc = cs.fastckpt("checkpoint", "--pid", str(tree.pid), "--image-path", str(img), "--print-stats")
    check_dump_stats(parse_stats(proc), img, img)
    tree.wait_gone()


@pytest.mark.integration
def test_checkpoint_print_stats_work_path(proc_tree, tmp_path):
    """The statistics are in the work directory, apart from the images."""
    tree = proc_tree.counter(str(tmp_path / "count"))
    img, work = tmp_path / "img", tmp_path / "work"
    proc = cs.fastckpt("checkpoint", "--pid", str(tree.pid), "--image-path", str(img), "--work-path", str(work),
                       "--leave-running", "--print-stats")
    check_dump_stats(parse_stats(proc), work, img)
    assert not (img / "stats-dump").exists()
    tree.wait_advancing()


@pytest.mark.integration
def test_api_checkpoint_stats(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    res = fastckpt.checkpoint(pid=tree.pid, image_path=str(tmp_path / "img"), leave_running=True)
    stats = res.stats()
    assert stats["wall_time_ms"] == round(res.wall_time * 1000, 3)
    check_dump_stats(stats, tmp_path / "img", tmp_path / "img")
    assert res.stats() == stats  # read again: the same file, the same numbers
    tree.wait_advancing()


@pytest.mark.integration
def test_restore_print_stats(proc_tree, restored, tmp_path):
    count = str(tmp_path / "count")
    tree = proc_tree.counter(count)
    img = tmp_path / "img"
    dump = check_dump_stats(parse_stats(cs.fastckpt("checkpoint", "--pid", str(tree.pid), "--image-path", str(img),
                                                    "--print-stats")), img, img)
    tree.wait_gone()
    # every pid of the tree must be free again for CRIU to restore it
    for pid in tree_pids(img):
        cs.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), f"pid {pid} of the dumped tree to be free")

    proc = cs.fastckpt("restore", "--image-path", str(img), "--pid-file", str(tmp_path / "pid"), "--print-stats")
    if proc.returncode == 0:
        restored.append(int((tmp_path / "pid").read_text()))
    out = parse_stats(proc)
    assert restored == [tree.pid]
    criu = out["criu"]
    raw = (img / "stats-restore").read_bytes()
    assert criu == images.read_stats(str(img), "restore")
    assert criu == pycriu_entry(raw, "restore")
    assert set(criu) == set(RESTORE)
    assert criu["pages_restored"] > 0
    # every page CRIU wrote came back: copied, or left shared with the parent (copy-on-write)
    assert dump["shpages_written"] == 0
    assert criu["pages_restored"] + criu["pages_skipped_cow"] == dump["pages_written"]
    assert criu["pages_compared"] >= criu["pages_skipped_cow"]
    assert out["wall_time_ms"] * 1000 >= criu["restore_time"] > 0
    cs.wait_advancing(lambda: cs.read_int(count), "the restored counter")
