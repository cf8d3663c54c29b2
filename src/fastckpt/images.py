"""CRIU's image files, as far as fastckpt reads them: the statistics of a dump or restore.

After a dump CRIU leaves ``stats-dump`` in its work directory, after a
restore ``stats-restore``.  Such a file is a CRIU image:

* one or two 32-bit little-endian magic numbers: a "service file" head
  magic, then the magic of the image type (images of old CRIUs have only the
  latter);
* then entries, each a 32-bit little-endian byte count and that many bytes
  of a protobuf message -- here a single ``stats_entry``, which holds a
  ``dump_stats_entry`` or a ``restore_stats_entry``.

The messages are declared below as data and built into protobuf classes at
the first decode, in a private descriptor pool: no generated code, and no
protobuf import for anyone who never asks for statistics.
"""
from __future__ import annotations

import errno
import os
import struct

from .errors import ImageError

# head magics: every image but the inventory starts with one of them
IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
# the type magic of statistics files
STATS_MAGIC = 0x57093306

STATS_FILE = "stats-{kind}"
KINDS = ("dump", "restore")

_U32 = struct.Struct("<I")

# The schema of CRIU's statistics (proto2): message -> (field, number, type, required).
# Times are microseconds, counts are pages.
_DUMP_FIELDS: tuple[tuple[str, int, str, bool], ...] = (
    ("freezing_time", 1, "uint32", True),
    ("frozen_time", 2, "uint32", True),
    ("memdump_time", 3, "uint32", True),
    ("memwrite_time", 4, "uint32", True),
    ("pages_scanned", 5, "uint64", True),
    ("pages_skipped_parent", 6, "uint64", True),
    ("pages_written", 7, "uint64", True),
    ("irmap_resolve", 8, "uint32", False),
    ("pages_lazy", 9, "uint64", True),
    ("page_pipes", 10, "uint64", False),
    ("page_pipe_bufs", 11, "uint64", False),
    ("shpages_scanned", 12, "uint64", False),
    ("shpages_skipped_parent", 13, "uint64", False),
    ("shpages_written", 14, "uint64", False),
)
_RESTORE_FIELDS: tuple[tuple[str, int, str, bool], ...] = (
    ("pages_compared", 1, "uint64", True),
    ("pages_skipped_cow", 2, "uint64", True),
    ("forking_time", 3, "uint32", True),
    ("restore_time", 4, "uint32", True),
    ("pages_restored", 5, "uint64", False),
)
_PACKAGE = "fastckpt.criu"
_ENTRY_TYPES = {"dump": "dump_stats_entry", "restore": "restore_stats_entry"}

_stats_entry_class = None


def _build_stats_entry_class():
    """The protobuf class of ``stats_entry``, built once from the schema above."""
    global _stats_entry_class
    if _stats_entry_class is not None:
        return _stats_entry_class
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as e:  # a declared dependency, but say so plainly if it is gone
        raise ImageError(f"decoding CRIU's statistics needs the protobuf package: {e}",
                         errno=errno.ENOPKG) from e

    FD = descriptor_pb2.FieldDescriptorProto
    types = {"uint32": FD.TYPE_UINT32, "uint64": FD.TYPE_UINT64}
    f = descriptor_pb2.FileDescriptorProto(name="fastckpt/criu-stats.proto", package=_PACKAGE,
                                           syntax="proto2")

    def message(name, fields):
        m = f.message_type.add(name=name)
        for fname, number, ftype, required in fields:
            m.field.add(name=fname, number=number, type=types[ftype],
                        label=FD.LABEL_REQUIRED if required else FD.LABEL_OPTIONAL)

    message(_ENTRY_TYPES["dump"], _DUMP_FIELDS)
    message(_ENTRY_TYPES["restore"], _RESTORE_FIELDS)
    entry = f.message_type.add(name="stats_entry")
    for number, kind in enumerate(KINDS, 1):
        entry.field.add(name=kind, number=number, type=FD.TYPE_MESSAGE, label=FD.LABEL_OPTIONAL,
                        type_name=f".{_PACKAGE}.{_ENTRY_TYPES[kind]}")

    pool = descriptor_pool.DescriptorPool()  # private: never clashes with pycriu's classes
    pool.Add(f)
    desc = pool.FindMessageTypeByName(f"{_PACKAGE}.stats_entry")
    _stats_entry_class = message_factory.GetMessageClass(desc)
    return _stats_entry_class


# --- the image format ---------------------------------------------------------------

def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError(f"CRIU image {path} does not exist", path=path, errno=errno.ENOENT) from None
    except IsADirectoryError:
        raise ImageError(f"CRIU image {path} is a directory, not an image", path=path,
                         errno=errno.EISDIR) from None
    except OSError as e:
        raise ImageError(f"cannot read CRIU image {path}: {e.strerror}", path=path, errno=e.errno) from None


def _split_magic(data: bytes, path: str) -> tuple[int, int]:
    """(type magic, offset of the first entry) of an image's bytes."""
    if len(data) < 4:
        raise ImageError(f"CRIU image {path} is damaged: {len(data)} bytes, too short for its magic",
                         path=path)
    (magic,) = _U32.unpack_from(data, 0)
    if magic not in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC):
        return magic, 4  # an image of an old CRIU, or the inventory: no head magic
    if len(data) < 8:
        raise ImageError(f"CRIU image {path} is damaged: truncated after its head magic", path=path)
    return _U32.unpack_from(data, 4)[0], 8


def image_magic(path: str) -> int:
    """The type magic of the CRIU image at PATH (e.g. :data:`STATS_MAGIC`), head magic skipped."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ImageError(f"CRIU image {path} does not exist", path=path, errno=errno.ENOENT) from None
    except OSError as e:
        raise ImageError(f"cannot read CRIU image {path}: {e.strerror}", path=path, errno=e.errno) from None
    return _split_magic(head, path)[0]


def _entries(data: bytes, offset: int, path: str):
    """The payloads of the size-prefixed entries from OFFSET to the end."""
    out = []
    while offset < len(data):
        if len(data) - offset < 4:
            raise ImageError(f"CRIU image {path} is damaged: truncated in the size of entry "
                             f"{len(out)} (at byte {offset})", path=path)
        (size,) = _U32.unpack_from(data, offset)
        offset += 4
        if len(data) - offset < size:
            raise ImageError(f"CRIU image {path} is damaged: entry {len(out)} is truncated "
                             f"({len(data) - offset} of its {size} bytes)", path=path)
        out.append(data[offset:offset + size])
        offset += size
    return out


# --- statistics ------------------------------------------------------------------------

def stats_path(work_dir: str, kind: str = "dump") -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return os.path.join(work_dir, STATS_FILE.format(kind=kind))


def decode_stats(data: bytes, kind: str = "dump", path: str = "<bytes>") -> dict[str, int]:
    """The statistics in DATA, the bytes of a ``stats-KIND`` image (PATH names it in errors)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    magic, offset = _split_magic(data, path)
    if magic != STATS_MAGIC:
        raise ImageError(f"{path} is not a CRIU statistics image (magic {magic:#010x}, "
                         f"expected {STATS_MAGIC:#010x})", path=path)
    entries = _entries(data, offset, path)
    if not entries:
        raise ImageError(f"CRIU image {path} is damaged: it holds no statistics entry", path=path)
    cls = _build_stats_entry_class()
    from google.protobuf.message import DecodeError

    entry = cls()
    try:
        entry.ParseFromString(entries[0])
    except DecodeError as e:
        raise ImageError(f"CRIU image {path} is damaged: cannot decode its statistics ({e})",
                         path=path) from None
    if not entry.IsInitialized():  # the parser does not insist on required fields: we do
        missing = ", ".join(f.rsplit(".", 1)[-1] for f in entry.FindInitializationErrors())
        raise ImageError(f"CRIU image {path} is damaged: cannot decode its statistics "
                         f"(required fields missing: {missing})", path=path)
    if not entry.HasField(kind):
        other = [k for k in KINDS if entry.HasField(k)]
        what = f"{other[0]} statistics" if other else "no statistics"
        raise ImageError(f"CRIU image {path} holds {what}, not {kind} statistics", path=path)
    stats = getattr(entry, kind)
    fields = _DUMP_FIELDS if kind == "dump" else _RESTORE_FIELDS
    # absent optional fields (older CRIUs) are left out, not shown as 0
    return {name: getattr(stats, name) for name, _, _, _ in fields if stats.HasField(name)}


def read_stats(work_dir: str, kind: str = "dump") -> dict[str, int]:
    """CRIU's statistics of its last dump (KIND "dump") or restore ("restore") in WORK_DIR.

    Keys are CRIU's field names: times (``*_time``) in microseconds, the
    rest counts of pages.  Raises :class:`~fastckpt.errors.ImageError` naming
    the file when it is missing or damaged.
    """
    path = stats_path(work_dir, kind)
    return decode_stats(_read(path), kind, path)


def stats_report(work_dir: str, kind: str, wall_time: float, frozen_time: float | None = None
                 ) -> dict[str, object]:
    """What ``--print-stats`` prints: CRIU's statistics and fastckpt's wall time (WALL_TIME seconds),
    and, when fastckpt froze the container itself, how long it was frozen (FROZEN_TIME seconds)."""
    report: dict[str, object] = {"criu": read_stats(work_dir, kind), "wall_time_ms": round(wall_time * 1000.0, 3)}
    if frozen_time is not None:
        report["frozen_time_ms"] = round(frozen_time * 1000.0, 3)
    return report


def encode_stats(values: dict[str, int], kind: str = "dump", *, head_magic: int | None = IMG_SERVICE_MAGIC
                 ) -> bytes:
    """The bytes of a ``stats-KIND`` image holding VALUES (for tests and tools)."""
    cls = _build_stats_entry_class()
    entry = cls()
    sub = getattr(entry, kind)
    for name, value in values.items():
        setattr(sub, name, value)
    payload = entry.SerializeToString()
    head = _U32.pack(head_magic) if head_magic is not None else b""
    return head + _U32.pack(STATS_MAGIC) + _U32.pack(len(payload)) + payload
