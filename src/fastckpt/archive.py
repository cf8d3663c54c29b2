"""Checkpoint archives in podman's layout: ``checkpoint --export`` and ``restore --import``.

An archive is one tar stream (zstd by default, gzip, or none), laid out as
``podman container checkpoint --export`` (podman 4.3) lays it out, so that
either side restores the other's:

* ``checkpoint/``: CRIU's images and runc's ``descriptors.json`` (fastckpt's
  also ``fastckpt.json`` and the manifest ``fastckpt-manifest.json``, first, so
  that its checksums travel with the images);
* ``spec.dump``: the container's OCI ``config.json``;
* ``config.dump``: podman's record of the container (JSON); fastckpt writes
  the fields podman's import needs: ``id`` (64 hex digits), ``name``,
  ``rootfsImageID``/``rootfsImageName`` (an image podman has: its rootfs is
  what ``rootfs-diff.tar`` is applied to) and ``runtime``;
* ``network.status``, ``stats-dump`` (CRIU's statistics of the dump);
* ``rootfs-diff.tar``: files of the rootfs (podman: those the container
  changed; fastckpt: the whole rootfs of the runc bundle, which has no image
  layer to diff against, unless ``ignore_rootfs``); ``deleted.files``: a JSON
  list of paths the container removed; ``devshm-checkpoint.tar``: podman's
  ``/dev/shm`` content;
* ``fastckpt-archive.json`` (fastckpt's, last): what the archive carries and the
  CRC32 of every top-level file, checked on import.

Export streams each file from its place into the compressor: no second copy
of the images on disk, memory bounded whatever their size.  Import reads the
archive once, in order, into a private directory; a member that would escape
it (absolute, ``..``, through a link), a link or device outside the rootfs, a
member the archive lists twice, too many members or bytes, or a damaged or
truncated stream is refused with one line naming the member, before anything
is restored.  The rootfs is extracted without following any link it holds
outside itself (links are resolved inside the rootfs, as in a chroot).
"""
from __future__ import annotations

import errno
import json
import os
import stat
import tarfile
import time
import zlib

from ._record import Record
from .atomicfile import write_atomic
from .errors import DamagedImage, Error, UsageError

CHECKPOINT_DIR = "checkpoint"
CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
NETWORK_STATUS = "network.status"
STATS_DUMP = "stats-dump"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
DEVSHM_TAR = "devshm-checkpoint.tar"
ARCHIVE_META = "fastckpt-archive.json"
# top-level files an import keeps; podman's others (ctr.log, artifacts/, volumes/...) are skipped
_TOP_FILES = (CONFIG_DUMP, SPEC_DUMP, NETWORK_STATUS, STATS_DUMP, ROOTFS_DIFF, DELETED_FILES, DEVSHM_TAR,
              ARCHIVE_META)
_JSON_FILES = (CONFIG_DUMP, SPEC_DUMP, NETWORK_STATUS, DELETED_FILES, ARCHIVE_META)

COMPRESSIONS = ("zstd", "gzip", "none")
ZSTD_LEVEL = 3  # podman's (klauspost's "default" speed is zstd's level 3)
GZIP_LEVEL = 6  # Go's and zlib's default

FORMAT = 1
MAX_MEMBERS = 2_000_000  # members of the archive and of its rootfs tar together
MAX_BYTES = 1 << 40  # bytes unpacked, all files together
MAX_JSON = 64 << 20  # a .dump file or a list held in memory
MAX_HEADER = 1 << 20  # a pax or GNU long-name header held in memory
MAX_LINK_DEPTH = 40  # links followed inside the rootfs for one path

_CHUNK = 1 << 20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"


class Limits(Record, frozen=True):
    """Bounds of an import: members (archive and rootfs together), bytes unpacked, one JSON file."""

    max_members: int = MAX_MEMBERS
    max_bytes: int = MAX_BYTES
    max_json: int = MAX_JSON  # a JSON file (.dump, deleted.files, checkpoint/*.json)


class ExportResult(Record):
    path: str
    compress: str
    bytes: int  # size of the archive
    rootfs: str  # "full" (the whole rootfs is in rootfs-diff.tar) or "none"
    members: int = 0


class Imported(Record):
    """An archive unpacked in ``directory``: its images in ``images``, the rest as read."""

    directory: str
    images: str
    spec: dict
    config: dict
    meta: dict  # fastckpt-archive.json, or {} for an archive of podman's
    files: dict  # top-level file name -> size
    counted: tuple = (0, 0)  # members and bytes the archive took of the import's bounds


# --- errors -----------------------------------------------------------------------------

def _refused(archive: str, member: str | None, what: str) -> DamagedImage:
    where = f", member {member!r}" if member else ""
    return DamagedImage(f"archive {archive}{where}: {what}; refused", path=archive,
                        problems=[(member or archive, what)])


# --- compression ----------------------------------------------------------------------------

def check_compress(value: str | None) -> str:
    value = value or "zstd"
    if value not in COMPRESSIONS:
        raise UsageError(f"Invalid compression {value!r}: use one of {', '.join(COMPRESSIONS)}")
    return value


def _compressor(f, compress: str, threads: int = 0):
    """A writable stream that compresses into F; close() finishes it (F stays open)."""
    if compress == "zstd":
        import zstandard

        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=threads, write_checksum=True)
        return cctx.stream_writer(f, closefd=False)
    if compress == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=f, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
    return _Uncompressed(f)


class _Uncompressed:
    def __init__(self, f):
        self.f = f

    def write(self, data) -> int:
        return self.f.write(data)

    def close(self) -> None:
        self.f.flush()


def _decompressor(f, path: str):
    head = f.read(4)
    f.seek(0)
    if head == _ZSTD_MAGIC:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(f, read_size=_CHUNK, read_across_frames=True,
                                                          closefd=False)
    if head[:2] == _GZIP_MAGIC:
        import gzip

        return gzip.GzipFile(fileobj=f, mode="rb")
    f.seek(257)
    magic = f.read(5)
    f.seek(0)
    if magic != b"ustar":
        raise _refused(path, None, "not a checkpoint archive (neither zstd, gzip nor tar)")
    return f


# --- export ----------------------------------------------------------------------------------

def podman_id(container_id: str) -> str:
    """A 64-hex-digit id for podman's record: the container's own when it is one, else a new one."""
    if len(container_id) == 64 and all(c in "0123456789abcdef" for c in container_id):
        return container_id
    return os.urandom(32).hex()


def podman_name(container_id: str) -> str:
    """The container id as podman accepts a name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in container_id)
    return out if out[:1].isascii() and out[:1].isalnum() else "c" + out


def config_dump(container_id: str, spec: dict, image_name: str | None, image_id: str | None) -> dict:
    """podman's container record, as much of it as `podman container restore --import` needs."""
    process = spec.get("process") or {}
    return {
        "id": podman_id(container_id),
        "name": podman_name(container_id),
        "rootfsImageID": image_id or "",
        "rootfsImageName": image_name or "",
        "RawImageName": image_name or "",
        "runtime": "runc",
        "command": list(process.get("args") or []),
        "createdTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stopSignal": 15,
        "stopTimeout": 10,
        "umask": "0022",
    }


class _CrcReader:
    """A file's bytes for tarfile, counted and checksummed; a file that shrank is padded with zeros."""

    def __init__(self, fd: int, size: int, crc: bool = True):
        self.fd, self.left, self.crc, self.checksum = fd, size, 0, crc

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = os.read(self.fd, n) if n else b""
        while len(data) < n:
            more = os.read(self.fd, n - len(data))
            if not more:  # the file shrank while exported: zeros keep the archive whole
                data += bytes(n - len(data))
                break
            data += more
        self.left -= len(data)
        if self.checksum:
            self.crc = zlib.crc32(data, self.crc)
        return data


class _GenReader:
    """A read() over an iterator of byte strings (the rootfs tar, made while it is read)."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.buf = b""
        self.crc = 0

    def read(self, n: int = -1) -> bytes:
        while len(self.buf) < n or n < 0:
            try:
                self.buf += next(self.chunks)
            except StopIteration:
                break
        data, self.buf = (self.buf, b"") if n < 0 else (self.buf[:n], self.buf[n:])
        self.crc = zlib.crc32(data, self.crc)
        return data


def _info(name: str, size: int = 0, mode: int = 0o600, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.type, ti.mtime = size, mode, kind, int(time.time())
    ti.uname = ti.gname = ""
    return ti


class _Writer:
    """The outer tar stream: members added from files, bytes or iterators; CRCs of top-level files kept."""

    def __init__(self, out, compress: str, threads: int = 0):
        self.z = _compressor(out, compress, threads)
        self.tar = tarfile.open(fileobj=self.z, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_CHUNK)
        self.tar.copybufsize = _CHUNK
        self.crcs: dict[str, str] = {}
        self.members = 0

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600) -> None:
        import io

        self.tar.addfile(_info(name, len(data), mode), io.BytesIO(data))
        self.crcs[name] = f"{zlib.crc32(data):08x}"
        self.members += 1

    def add_file(self, path: str, name: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Error(f"cannot export {path}: not a regular file")
            reader = _CrcReader(fd, st.st_size, crc="/" not in name)  # checkpoint/: the manifest has them
            self.tar.addfile(_info(name, st.st_size, stat.S_IMODE(st.st_mode)), reader)
        finally:
            os.close(fd)
        if "/" not in name:
            self.crcs[name] = f"{reader.crc:08x}"
        self.members += 1

    def add_stream(self, name: str, size: int, chunks) -> None:
        reader = _GenReader(chunks)
        self.tar.addfile(_info(name, size, 0o600), reader)
        self.crcs[name] = f"{reader.crc:08x}"
        self.members += 1

    def add_dir(self, name: str, mode: int = 0o700) -> None:
        self.tar.addfile(_info(name, 0, mode, tarfile.DIRTYPE))
        self.members += 1

    def close(self) -> None:
        self.tar.close()
        self.z.close()


def _open_in(rootfs: str, rel: str, directory: bool) -> int:
    """An fd of REL below ROOTFS, following no link on the way (a running container may swap a
    directory for a link to the host's files while it is exported: that fails with ELOOP/ENOTDIR)."""
    fd = os.open(rootfs, _DIR_FLAGS)
    try:
        parts = [p for p in rel.split("/") if p] if rel else []
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            flags = _DIR_FLAGS if directory or not last else os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            nfd = os.open(p, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _rootfs_entries(rootfs: str):
    """(relative name, lstat, link target) of every file of ROOTFS, parents first, on its own filesystem.

    Sockets are left out (nothing can be restored of them); the contents of
    mounts below the rootfs are too.  Directories are read through fds opened
    without following links."""
    root_dev = os.lstat(rootfs).st_dev
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            fd = _open_in(rootfs, rel, directory=True)
            try:
                names = sorted(os.listdir(fd))
                found = []
                for n in names:
                    try:
                        st = os.lstat(n, dir_fd=fd)
                        target = os.readlink(n, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                    except FileNotFoundError:
                        continue  # gone meanwhile (a container left running)
                    found.append((n, st, target))
            finally:
                os.close(fd)
        except OSError as e:
            raise Error(f"cannot read {os.path.join(rootfs, rel)} of the rootfs: {e.strerror}",
                        errno=e.errno) from None
        subdirs = []
        for n, st, target in found:
            name = f"{rel}/{n}" if rel else n
            if stat.S_ISSOCK(st.st_mode):
                continue
            yield name, st, target
            if stat.S_ISDIR(st.st_mode) and st.st_dev == root_dev:
                subdirs.append(name)
        stack.extend(reversed(subdirs))


def _tarinfo(name: str, st: os.stat_result, target: str | None, links: dict) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""  # numeric owners, as the images' own
    ti.mtime = int(st.st_mtime)
    m = st.st_mode
    if stat.S_ISREG(m) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
        ti.type, ti.linkname = tarfile.LNKTYPE, links[(st.st_dev, st.st_ino)]
    elif stat.S_ISREG(m):
        ti.type, ti.size = tarfile.REGTYPE, st.st_size
        if st.st_nlink > 1:
            links[(st.st_dev, st.st_ino)] = name
    elif stat.S_ISDIR(m):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(m):
        ti.type, ti.linkname = tarfile.SYMTYPE, target
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(m):
        ti.type = tarfile.FIFOTYPE
    return ti


def _header(ti: tarfile.TarInfo) -> bytes:
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _pad(n: int) -> int:
    return -n % tarfile.BLOCKSIZE


class RootfsTar:
    """The whole rootfs as one tar (the member ``rootfs-diff.tar``), its size known before it is made.

    The files are listed once (names, stats: ~100 bytes each in memory); the
    tar is then made while the outer archive reads it, each file streamed."""

    def __init__(self, rootfs: str):
        self.rootfs = rootfs
        root = os.lstat(rootfs)
        self.items = [(".", root, None)] + list(_rootfs_entries(rootfs))
        links: dict = {}
        size = 0
        for name, st, target in self.items:
            ti = _tarinfo(name, st, target, links)
            size += len(_header(ti)) + ti.size + _pad(ti.size)
        size += 2 * tarfile.BLOCKSIZE
        self.size = size + (-size % tarfile.RECORDSIZE)
        self.members = len(self.items)

    def chunks(self):
        links: dict = {}
        done = 0
        for name, st, target in self.items:
            ti = _tarinfo(name, st, target, links)
            head = _header(ti)
            done += len(head)
            yield head
            if ti.size:
                yield from self._data(name, ti.size)
                done += ti.size + _pad(ti.size)
                if _pad(ti.size):
                    yield bytes(_pad(ti.size))
        tail = self.size - done
        yield bytes(tail)

    def _data(self, name: str, size: int):
        try:
            fd = _open_in(self.rootfs, name, directory=False)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                fd = None
        except OSError:
            fd = None  # gone or swapped meanwhile (a container left running): zeros keep the archive whole
        left = size
        try:
            while left:
                data = os.read(fd, min(_CHUNK, left)) if fd is not None else b""
                if not data:
                    data = bytes(min(_CHUNK, left))
                left -= len(data)
                yield data
        finally:
            if fd is not None:
                os.close(fd)


def checkpoint_files(image_path: str) -> list[str]:
    """The files of a checkpoint that travel in ``checkpoint/``: the manifest first, then what it covers."""
    from . import manifest

    names = sorted(n for n in os.listdir(image_path)
                   if manifest.is_checkpoint_file(n) and os.path.isfile(os.path.join(image_path, n)))
    if os.path.isfile(os.path.join(image_path, manifest.MANIFEST_FILE)):
        names.insert(0, manifest.MANIFEST_FILE)
    return names


def export(image_path: str, path: str, *, spec: dict, container_id: str, compress: str = "zstd",
           rootfs: str | None = None, image_name: str | None = None, image_id: str | None = None,
           threads: int = 0) -> ExportResult:
    """Write the checkpoint in IMAGE_PATH (with SPEC, the OCI config) as an archive at PATH.

    ROOTFS: the directory whose whole content goes into ``rootfs-diff.tar``
    (None: the archive carries no rootfs).  IMAGE_NAME/IMAGE_ID: the image
    podman is to restore it on.  The archive appears at PATH complete or not
    at all (written beside it, then renamed)."""
    compress = check_compress(compress)
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(image_path, "inventory.img")):
        raise Error(f"{image_path} holds no checkpoint (no inventory.img) to export", errno=errno.ENOENT)
    rootfs_tar = RootfsTar(rootfs) if rootfs else None
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise Error(f"cannot write the archive {path}: {e.strerror}", errno=e.errno) from None
    try:
        with open(fd, "wb", buffering=_CHUNK) as out:
            w = _Writer(out, compress, threads)
            w.add_dir(CHECKPOINT_DIR + "/")
            for name in checkpoint_files(image_path):
                w.add_file(os.path.join(image_path, name), f"{CHECKPOINT_DIR}/{name}")
            w.add_bytes(SPEC_DUMP, json.dumps(spec, indent=1).encode())
            w.add_bytes(CONFIG_DUMP, json.dumps(config_dump(container_id, spec, image_name, image_id),
                                                indent=1).encode())
            w.add_bytes(NETWORK_STATUS, b"null")
            stats = os.path.join(image_path, STATS_DUMP)
            if os.path.isfile(stats):
                w.add_file(stats, STATS_DUMP)
            if rootfs_tar is not None:
                w.add_stream(ROOTFS_DIFF, rootfs_tar.size, rootfs_tar.chunks())
            meta = {"format": FORMAT, "container_id": container_id, "rootfs": "full" if rootfs_tar else "none",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "crc32": dict(w.crcs)}
            w.add_bytes(ARCHIVE_META, json.dumps(meta, indent=1).encode())
            w.close()
        os.rename(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, Error):
            what = "no space left on its disk" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            raise Error(f"cannot write the archive {path}: {what}", errno=e.errno) from None
        raise
    return ExportResult(path=path, compress=compress, bytes=os.stat(path).st_size,
                        rootfs="full" if rootfs_tar else "none",
                        members=w.members + (rootfs_tar.members if rootfs_tar else 0))


# --- import: the outer archive ---------------------------------------------------------------

class _SafeTarInfo(tarfile.TarInfo):
    """tarfile's header reader, refusing pax and GNU long-name headers too big to hold in memory."""

    def _proc_pax(self, tarfile_):
        if self.size > MAX_HEADER:
            raise tarfile.HeaderError(f"a pax header of {self.size} bytes")
        return super()._proc_pax(tarfile_)

    def _proc_gnulong(self, tarfile_):
        if self.size > MAX_HEADER:
            raise tarfile.HeaderError(f"a long-name header of {self.size} bytes")
        return super()._proc_gnulong(tarfile_)


def member_parts(name: str) -> list[str] | None:
    """The path components of a member name, or None when it is absolute or climbs out ('..')."""
    if not name or "\0" in name or name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


class _Budget:
    def __init__(self, archive: str, limits: Limits):
        self.archive, self.limits = archive, limits
        self.members = 0
        self.bytes = 0

    def take(self, member: str, size: int) -> None:
        self.members += 1
        self.bytes += max(size, 0)
        if self.members > self.limits.max_members:
            raise _refused(self.archive, member, f"more than {self.limits.max_members} members")
        if self.bytes > self.limits.max_bytes:
            raise _refused(self.archive, member, f"more than {self.limits.max_bytes} bytes unpacked")


def _copy_out(src, fd: int, size: int, checksum: bool = True) -> int:
    """Copy SIZE bytes of the member's stream to FD; their CRC32 (0 unless CHECKSUM)."""
    crc = 0
    left = size
    while left:
        data = src.read(min(_CHUNK, left))
        if not data:
            raise EOFError("unexpected end of data")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if checksum:
            crc = zlib.crc32(data, crc)
        left -= len(data)
    return crc


def _read_errors() -> tuple:
    """What reading a damaged or truncated archive raises (tar, gzip, zlib, zstd)."""
    import gzip

    import zstandard

    return (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)


class _EndSeen(_SafeTarInfo):
    """Records how the header reading of a tar stream ended: tarfile stops silently at a damaged or
    cut-short header after the first member, as at the end-of-archive blocks."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            tf.fastckpt_end = "end"
            raise
        except tarfile.HeaderError as e:
            tf.fastckpt_end = f"damaged or truncated ({e})"
            raise


def _each(tar):
    """TAR's members one at a time, none kept: tarfile keeps every header it read (~500 bytes each: ~1 GB
    for the 2,000,000 members an archive may have)."""
    for ti in tar:
        tar.members.clear()
        yield ti


def _members(tar, path: str, after: list):
    """The members of TAR; an error once the stream ends anywhere but at the end-of-archive blocks."""
    tar.fastckpt_end = None
    for ti in _each(tar):
        after[0] = ti.name
        yield ti
    if tar.fastckpt_end != "end":
        what = tar.fastckpt_end or "truncated (no end-of-archive blocks)"
        raise _refused(path, None, f"{what} after member {after[0]!r}" if after[0] else what)


def unpack(path: str, directory: str, limits: Limits | None = None) -> Imported:
    """Unpack the archive at PATH into DIRECTORY (empty, private): its images in DIRECTORY/checkpoint.

    Every member is checked as it comes; the archive is read to its end and
    the checksums it carries compared before this returns (DamagedImage
    otherwise, naming the member)."""
    limits = limits or Limits()
    budget = _Budget(path, limits)
    images = os.path.join(directory, CHECKPOINT_DIR)
    os.mkdir(images, 0o700)
    seen: set[str] = set()
    crcs: dict[str, str] = {}
    sizes: dict[str, int] = {}
    last: list = [None]
    current = None
    read_errors = _read_errors()
    try:
        f = open(path, "rb")
    except OSError as e:
        raise Error(f"cannot open the archive {path}: {e.strerror}", errno=e.errno) from None
    with f:
        try:
            stream = _decompressor(f, path)
            tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=_EndSeen, bufsize=_CHUNK)
            for ti in _members(tar, path, last):
                current = ti.name
                budget.take(ti.name, ti.size if ti.isreg() else 0)
                parts = member_parts(ti.name)
                if parts is None:
                    raise _refused(path, ti.name, "a path outside the archive's directory")
                key = "/".join(parts)
                if key in seen and not ti.isdir():
                    raise _refused(path, ti.name, "appears twice")
                seen.add(key)
                top = parts[0] if parts else ""
                if not parts or (top == CHECKPOINT_DIR and len(parts) == 1):
                    if not ti.isdir():
                        raise _refused(path, ti.name, "not a directory")
                    continue
                if top == CHECKPOINT_DIR:
                    if len(parts) != 2 or not ti.isreg():
                        raise _refused(path, ti.name, "not a regular file directly in checkpoint/ (links, "
                                                      "devices and subdirectories are refused there)")
                    # the manifest, fastckpt.json, descriptors.json: read whole into memory
                    if parts[1].endswith(".json") and ti.size > limits.max_json:
                        raise _refused(path, ti.name, f"{ti.size} bytes, more than {limits.max_json}")
                    target = os.path.join(images, parts[1])
                elif len(parts) == 1 and top in _TOP_FILES:
                    if not ti.isreg():
                        raise _refused(path, ti.name, "not a regular file")
                    if top in _JSON_FILES and ti.size > limits.max_json:
                        raise _refused(path, ti.name, f"{ti.size} bytes, more than {limits.max_json}")
                    target = os.path.join(directory, top)
                else:
                    if not (ti.isreg() or ti.isdir()):
                        raise _refused(path, ti.name, "a link or device outside the rootfs")
                    continue  # podman's ctr.log, artifacts/, volumes/...: not needed to restore
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    crc = _copy_out(tar.extractfile(ti), fd, ti.size, checksum=len(parts) == 1)
                finally:
                    os.close(fd)
                if len(parts) == 1:
                    crcs[top] = f"{crc:08x}"
                    sizes[top] = ti.size
                current = None
        except DamagedImage:
            raise
        except read_errors as e:
            raise _refused(path, current, f"damaged or truncated ({e or type(e).__name__})") from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise Error(f"no space left to unpack the archive {path} in {directory}", errno=e.errno) from None
            raise Error(f"cannot unpack the archive {path}: {e.strerror or e}", errno=e.errno) from None
    imp = _finish(path, directory, images, crcs, sizes, limits)
    imp.counted = (budget.members, budget.bytes)
    return imp


def _read_json(directory: str, name: str, path: str):
    try:
        with open(os.path.join(directory, name), "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise _refused(path, name, f"not JSON ({e})") from None


def _finish(path: str, directory: str, images: str, crcs: dict, sizes: dict, limits: Limits) -> Imported:
    meta = _read_json(directory, ARCHIVE_META, path) or {}
    if not isinstance(meta, dict):
        raise _refused(path, ARCHIVE_META, "not a JSON object")
    for name, want in (meta.get("crc32") or {}).items():
        if name == ARCHIVE_META:
            continue
        if name not in crcs:
            raise _refused(path, name, "missing (listed in fastckpt-archive.json)")
        if crcs[name] != want:
            raise _refused(path, name, f"altered: CRC32 {crcs[name]}, the archive says {want}")
    if not os.path.exists(os.path.join(images, "inventory.img")):
        raise _refused(path, f"{CHECKPOINT_DIR}/inventory.img", "missing: no checkpoint in this archive")
    spec = _read_json(directory, SPEC_DUMP, path)
    if not isinstance(spec, dict):
        raise _refused(path, SPEC_DUMP, "missing or not a JSON object (the container's OCI config)")
    config = _read_json(directory, CONFIG_DUMP, path) or {}
    if not isinstance(config, dict):
        raise _refused(path, CONFIG_DUMP, "not a JSON object")
    deleted = _read_json(directory, DELETED_FILES, path)
    if deleted is not None and not (isinstance(deleted, list) and all(isinstance(d, str) for d in deleted)):
        raise _refused(path, DELETED_FILES, "not a JSON list of paths")
    # the images' own checksums (fastckpt's manifest), or their structure (podman's and runc's)
    from . import manifest

    try:
        manifest.verify(images)
    except DamagedImage as e:
        member = f"{CHECKPOINT_DIR}/{e.problems[0][0]}" if e.problems else CHECKPOINT_DIR
        raise _refused(path, member, e.problems[0][1] if e.problems else str(e)) from None
    return Imported(directory=directory, images=images, spec=spec, config=config, meta=meta, files=sizes)


# --- import: the rootfs ------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Root:
    """A directory to extract a rootfs tar into: every path is resolved inside it, links included
    (an absolute link or '..' stops at its top, as in a chroot), and nothing is followed at the end."""

    def __init__(self, path: str, archive: str, member_label: str):
        self.path = path
        self.archive = archive
        self.label = member_label  # "rootfs-diff.tar" etc., for messages
        self.fd = os.open(path, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    def refuse(self, member: str, what: str) -> DamagedImage:
        return _refused(self.archive, f"{self.label}:{member}", what)

    def parent(self, parts: list[str], member: str, create: bool) -> int | None:
        """An fd of the directory PARTS name (made when CREATE), or None when it is missing."""
        stack = [os.dup(self.fd)]
        queue = list(parts)
        links = 0
        try:
            while queue:
                p = queue.pop(0)
                if p in ("", "."):
                    continue
                if p == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                try:
                    stack.append(os.open(p, _DIR_FLAGS, dir_fd=stack[-1]))
                    continue
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(p, 0o755, dir_fd=stack[-1])
                    stack.append(os.open(p, _DIR_FLAGS, dir_fd=stack[-1]))
                    continue
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                try:
                    target = os.readlink(p, dir_fd=stack[-1])
                except OSError:
                    raise self.refuse(member, f"{p!r} on its path is not a directory") from None
                links += 1
                if links > MAX_LINK_DEPTH:
                    raise self.refuse(member, "too many links on its path")
                if target.startswith("/"):
                    for fd in stack[1:]:
                        os.close(fd)
                    del stack[1:]
                queue[:0] = target.split("/")
            out = stack.pop()
            return out
        finally:
            for fd in stack:
                os.close(fd)

    def remove(self, dir_fd: int, name: str) -> None:
        """Remove NAME (a whole tree if a directory) in DIR_FD, following no link."""
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            return
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            for child in os.listdir(fd):
                self.remove(fd, child)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)

    def own_node(self, parent: int, name: str, ti: tarfile.TarInfo, kind: int) -> None:
        """Owner and mode of the device node or FIFO just made as NAME, set on that node only: chmod
        follows links, so it goes through an O_PATH fd of the node (someone who can write in its
        directory may have swapped it for a link to a host file meanwhile: refused)."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
                raise self.refuse(ti.name, "replaced by something else while it was extracted")
            os.chown(f"/proc/self/fd/{fd}", ti.uid, ti.gid)
            os.chmod(f"/proc/self/fd/{fd}", ti.mode & 0o7777)
        finally:
            os.close(fd)

    def extract(self, ti: tarfile.TarInfo, data) -> None:
        parts = member_parts(ti.name)
        if parts is None:
            raise self.refuse(ti.name, "a path outside the rootfs")
        if not parts:  # the rootfs' own directory
            if ti.isdir():
                os.fchmod(self.fd, ti.mode & 0o7777)
                os.fchown(self.fd, ti.uid, ti.gid)
            return
        parent = self.parent(parts[:-1], ti.name, create=True)
        name = parts[-1]
        try:
            try:
                old = os.lstat(name, dir_fd=parent)
            except FileNotFoundError:
                old = None
            if old is not None and not (ti.isdir() and stat.S_ISDIR(old.st_mode)):
                self.remove(parent, name)
            mode = ti.mode & 0o7777
            if ti.isreg():
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=parent)
                try:
                    _copy_out(data, fd, ti.size, checksum=False)
                    os.fchown(fd, ti.uid, ti.gid)
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
            elif ti.isdir():
                if old is None:
                    os.mkdir(name, 0o700, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                try:
                    os.fchown(fd, ti.uid, ti.gid)
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
                return  # directories keep the time their files give them
            elif ti.issym():
                os.symlink(ti.linkname, name, dir_fd=parent)
                os.chown(name, ti.uid, ti.gid, dir_fd=parent, follow_symlinks=False)
            elif ti.islnk():
                src = member_parts(ti.linkname)
                if not src:
                    raise self.refuse(ti.name, f"a hard link to {ti.linkname!r}, outside the rootfs")
                sparent = self.parent(src[:-1], ti.name, create=False)
                if sparent is None:
                    raise self.refuse(ti.name, f"a hard link to {ti.linkname!r}, which is not in the rootfs")
                try:
                    st = os.lstat(src[-1], dir_fd=sparent)
                    if stat.S_ISDIR(st.st_mode):
                        raise self.refuse(ti.name, "a hard link to a directory")
                    os.link(src[-1], name, src_dir_fd=sparent, dst_dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    raise self.refuse(ti.name, f"a hard link to {ti.linkname!r}, which is not in the rootfs") \
                        from None
                finally:
                    os.close(sparent)
                return
            elif ti.ischr() or ti.isblk():
                kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
                os.mknod(name, kind | mode, os.makedev(ti.devmajor, ti.devminor), dir_fd=parent)
                self.own_node(parent, name, ti, kind)
            elif ti.isfifo():
                os.mkfifo(name, mode, dir_fd=parent)
                self.own_node(parent, name, ti, stat.S_IFIFO)
            else:
                raise self.refuse(ti.name, f"a member of tar type {ti.type!r}, which a rootfs cannot hold")
            os.utime(name, (ti.mtime, ti.mtime), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)


def _check_rootfs_member(archive: str, label: str, ti: tarfile.TarInfo, budget: _Budget) -> None:
    member = f"{label}:{ti.name}"
    budget.take(member, ti.size if ti.isreg() else 0)
    if member_parts(ti.name) is None:
        raise _refused(archive, member, "a path outside the rootfs")
    if ti.islnk() and not member_parts(ti.linkname):
        raise _refused(archive, member, f"a hard link to {ti.linkname!r}, outside the rootfs")
    if not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk() or ti.ischr() or ti.isblk() or ti.isfifo()):
        raise _refused(archive, member, f"a member of tar type {ti.type!r}, which a rootfs cannot hold")


def scan_tar(archive: str, path: str, label: str, budget: _Budget) -> int:
    """Check every header of the tar at PATH (a member of ARCHIVE) before anything of it is extracted."""
    n = 0
    last: list = [None]
    try:
        with tarfile.open(path, mode="r:", tarinfo=_EndSeen) as tar:
            for ti in _members(tar, f"{archive}: {label}", last):
                _check_rootfs_member(archive, label, ti, budget)
                n += 1
    except DamagedImage:
        raise
    except (tarfile.TarError, EOFError) as e:
        raise _refused(archive, f"{label}:{last[0]}" if last[0] else label,
                       f"damaged or truncated ({e})") from None
    return n


def extract_tar(archive: str, path: str, label: str, dest: str) -> None:
    """Extract the tar at PATH (checked by scan_tar) into DEST, resolving every path inside DEST."""
    root = _Root(dest, archive, label)
    try:
        with tarfile.open(path, mode="r:", tarinfo=_SafeTarInfo) as tar:
            for ti in _each(tar):
                root.extract(ti, tar.extractfile(ti) if ti.isreg() else None)
    except (tarfile.TarError, EOFError) as e:
        raise _refused(archive, label, f"damaged or truncated ({e})") from None
    finally:
        root.close()


def remove_deleted(archive: str, paths: list[str], dest: str) -> None:
    """Remove the paths of deleted.files from the rootfs DEST (resolved inside it)."""
    root = _Root(dest, archive, DELETED_FILES)
    try:
        for p in paths:
            parts = member_parts(p.lstrip("/"))
            if not parts:
                raise root.refuse(p, "a path outside the rootfs")
            parent = root.parent(parts[:-1], p, create=False)
            if parent is None:
                continue
            try:
                root.remove(parent, parts[-1])
            finally:
                os.close(parent)
    finally:
        root.close()


# --- import: the bundle ----------------------------------------------------------------------------

STANDINS_DIR = "mounts"  # in the bundle: stand-ins for bind-mount sources this host lacks
# podman's rootfs is an overlay whose top directory podman makes 0555: CRIU finds the
# restored root with the mode it had, so a rootfs given for podman's archive gets it
PODMAN_ROOT_MODE = 0o555


def _standin(spec: dict, m: dict, index: int, bundle: str, rootfs: str) -> str:
    """A file or directory in the bundle to bind-mount where a source this host lacks was."""
    dest = m.get("destination", "")
    os.makedirs(os.path.join(bundle, STANDINS_DIR), mode=0o700, exist_ok=True)
    path = os.path.join(bundle, STANDINS_DIR, f"{index}-{os.path.basename(dest.rstrip('/')) or 'root'}")
    is_dir = dest == "/dev/shm" or os.path.isdir(os.path.join(rootfs, dest.lstrip("/")))
    if os.path.lexists(path):
        return path
    if is_dir:
        os.mkdir(path, 0o1777 if dest == "/dev/shm" else 0o755)
        if dest == "/dev/shm":
            os.chmod(path, 0o1777)
        return path
    content = b""
    if dest == "/etc/hostname":
        content = (spec.get("hostname") or "localhost").encode() + b"\n"
    elif dest == "/etc/hosts":
        content = b"127.0.0.1\tlocalhost\n::1\tlocalhost\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    return path


def bundle_spec(spec: dict, bundle: str, rootfs: str) -> tuple[dict, dict[str, str]]:
    """The OCI config for the bundle: root `rootfs`, cgroups named after the new container, stand-ins
    for bind-mount sources this host lacks.  Returns it and {destination: stand-in}."""
    spec = json.loads(json.dumps(spec))
    spec.setdefault("root", {})["path"] = "rootfs"
    linux = spec.setdefault("linux", {})
    linux.pop("cgroupsPath", None)  # the old container's (podman's parent): the new one gets its own
    standins = {}
    for i, m in enumerate(spec.get("mounts") or []):
        bind = m.get("type") == "bind" or "bind" in (m.get("options") or []) or "rbind" in (m.get("options") or [])
        if bind and m.get("source") and not os.path.exists(m["source"]):
            m["source"] = standins[m.get("destination", "")] = _standin(spec, m, i, bundle, rootfs)
    return spec, standins


def build_bundle(imp: Imported, bundle: str, archive: str, limits: Limits | None = None) -> list:
    """Make BUNDLE (config.json, rootfs) from the unpacked archive; returns what was made (the undo list:
    paths made, (path, bytes) of a config.json of the user's it replaced).

    The rootfs: the archive's whole one, or BUNDLE/rootfs (the image's files)
    with rootfs-diff.tar applied and deleted.files removed.  Every tar is
    checked before anything of it is extracted."""
    limits = limits or Limits()
    budget = _Budget(archive, limits)  # the archive's members count too
    budget.members, budget.bytes = imp.counted
    made: list = []
    rootfs = os.path.join(bundle, "rootfs")
    full = imp.meta.get("rootfs") == "full"
    diff = os.path.join(imp.directory, ROOTFS_DIFF) if ROOTFS_DIFF in imp.files else None
    devshm = os.path.join(imp.directory, DEVSHM_TAR) if DEVSHM_TAR in imp.files else None
    if full and diff is None:
        raise _refused(archive, ROOTFS_DIFF, "missing (fastckpt-archive.json says the rootfs is carried)")
    if full:
        if os.path.lexists(rootfs) and (not os.path.isdir(rootfs) or os.listdir(rootfs)):
            raise UsageError(f"the archive carries the whole rootfs: {rootfs} must not exist or be empty")
    elif not os.path.isdir(rootfs):
        image = imp.config.get("rootfsImageName") or "the container's image"
        raise UsageError(f"the archive carries no rootfs, only its changes: give --bundle DIR with DIR/rootfs "
                         f"holding the files of {image}")
    for path, label in ((diff, ROOTFS_DIFF), (devshm, DEVSHM_TAR)):
        if path:
            scan_tar(archive, path, label, budget)
    deleted = _read_json(imp.directory, DELETED_FILES, archive) or []
    for p in deleted:
        if not member_parts(p.lstrip("/")):
            raise _refused(archive, DELETED_FILES, f"{p!r}: a path outside the rootfs")
    if not os.path.isdir(rootfs):
        os.mkdir(rootfs, 0o755)
        made.append(rootfs)
    if diff:
        extract_tar(archive, diff, ROOTFS_DIFF, rootfs)
    if deleted:
        remove_deleted(archive, deleted, rootfs)
    if not full and (imp.config.get("rootfsImageID") or imp.config.get("rootfsImageName")):
        os.chmod(rootfs, PODMAN_ROOT_MODE)
    spec, standins = bundle_spec(imp.spec, bundle, rootfs)
    if standins:
        made.append(os.path.join(bundle, STANDINS_DIR))
    if devshm and "/dev/shm" in standins:
        extract_tar(archive, devshm, DEVSHM_TAR, standins["/dev/shm"])
    cfg = os.path.join(bundle, "config.json")
    try:
        with open(cfg, "rb") as f:
            made.append((cfg, f.read()))  # the user's: put back if the import fails
    except FileNotFoundError:
        made.append(cfg)
    write_atomic(cfg, json.dumps(spec, indent=2).encode(), 0o666)
    return made


def _undo(made: list) -> None:
    """Undo what build_bundle made: paths are removed, (path, bytes) files of the user's written back."""
    import shutil

    for item in reversed(made):
        if isinstance(item, tuple):
            try:
                write_atomic(*item, 0o666)
            except OSError:
                pass
        elif os.path.isdir(item) and not os.path.islink(item):
            shutil.rmtree(item, ignore_errors=True)
        else:
            try:
                os.unlink(item)
            except OSError:
                pass




def restore_import(container_id: str | None, options, *, root: str, session=None, limits: Limits | None = None):
    """``restore --import``: unpack the archive privately, build the bundle, restore it as a runc container.

    The unpacked images are removed afterwards; a failed import or restore
    also removes what it made of the bundle."""
    import shutil
    import tempfile

    from . import privileges, restorer, runc

    privileges.require_privileges("restore")
    archive = os.path.abspath(options.import_archive)
    if container_id is None:
        raise UsageError("restore --import needs a container id: the archive holds a container")
    runc.validate_id(container_id)
    if os.path.isdir(archive):
        raise UsageError(f"--import {archive} is a directory, not an archive (an image directory is restored "
                         "with --image-path)")
    if not os.path.isfile(archive):
        what = "not a regular file" if os.path.lexists(archive) else "no such file"
        raise UsageError(f"--import {archive}: {what}")
    if os.path.exists(os.path.join(root, container_id)):
        from .errors import ContainerStateError

        raise ContainerStateError(f"container {container_id!r} already exists (in runc root {root})",
                                  errno=errno.EEXIST)
    bundle = options.resolved_bundle()
    made: list = []
    if not os.path.isdir(bundle):
        try:
            # 0700: the archive's rootfs may hold device nodes and setuid files, which host users must
            # not reach through it (podman keeps its layers in a 0700 storage for the same reason)
            os.makedirs(bundle, mode=0o700)
        except OSError as e:
            raise Error(f"cannot create the bundle {bundle}: {e.strerror}", errno=e.errno) from None
        made.append(bundle)
    tmp = None
    try:
        try:
            tmp = tempfile.mkdtemp(prefix=".fastckpt-import-", dir=bundle)
            imp = unpack(archive, tmp, limits)
            made += build_bundle(imp, bundle, archive, limits)
        except DamagedImage as e:
            raise DamagedImage(f"{e}, nothing was restored", path=e.path, errno=e.errno,
                               problems=e.problems) from None
        except KeyboardInterrupt:
            from .errors import Interrupted

            raise Interrupted(f"interrupted while the archive was unpacked: nothing was restored and nothing "
                              f"was left behind for container {container_id!r}") from None
        # unpack() checked the images against their manifest (and every member against the archive's
        # CRC32s): the restore does not read them once more
        return restorer.restore_images(container_id, options.replace(import_archive=None, image_path=imp.images,
                                                                     bundle=bundle), root, session, verified=True)
    except BaseException:
        # a failed restore leaves no runc state: one there is a restore that completed (and was
        # interrupted after), whose container runs from the bundle
        if not os.path.exists(os.path.join(root, container_id, "state.json")):
            _undo(made)
        raise
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# --- checkpoint --export ----------------------------------------------------------------------------

def _container_spec(ct) -> tuple[dict, str]:
    """The OCI config (the bundle's config.json) and the rootfs of a runc container."""
    bundle = ct.bundle
    if not bundle:
        raise UsageError(f"container {ct.id!r} names no bundle (runc's bundle= label): nothing to export as "
                         "spec.dump")
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            return json.load(f), ct.rootfs
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the container's OCI config {path} for the archive: {e}") from None


def checkpoint_export(container_id: str | None, options, *, pid=None, root: str, session=None):
    """``checkpoint --export``: checkpoint (into --image-path, or a private directory beside the archive,
    removed once exported), then write the archive.  Everything the export needs is checked first: a
    refused export leaves the container as it was."""
    import shutil
    import tempfile

    from . import engine, runc

    if container_id is None or pid is not None:
        raise UsageError("--export needs a container (a process tree has no bundle to carry)")
    compress = check_compress(options.compress)
    path = os.path.abspath(options.export)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise UsageError(f"--export {path}: its directory {parent} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"--export {path} is a directory")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--export {path}: its directory {parent} is not writable")
    runc.validate_id(container_id)
    spec, rootfs = _container_spec(runc.load(container_id, root))
    if options.podman_image:
        mode = stat.S_IMODE(os.stat(rootfs).st_mode)
        if mode != PODMAN_ROOT_MODE:
            raise UsageError(f"--podman-image: podman restores on an overlay root of mode "
                             f"{PODMAN_ROOT_MODE:o} and CRIU checks it, but the container's rootfs {rootfs} "
                             f"has mode {mode:o} (chmod {PODMAN_ROOT_MODE:o} it before the container starts)")
    wanted = options
    options = options.replace(export=None, compress=None, ignore_rootfs=False, podman_image=None,
                              podman_image_id=None)
    tmp = None
    if not options.image_path:
        tmp = tempfile.mkdtemp(prefix=".fastckpt-export-", dir=parent)
        options = options.replace(image_path=tmp)
    try:
        res = engine.checkpoint(container_id, options, root=root, session=session)
    except BaseException as e:
        # a checkpoint that completed (then was interrupted, or its manifest failed) names its images: they
        # are all there is of the container now
        if tmp and not getattr(e, "completed_images", None):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        res.archive = export(res.image_path, path, spec=spec, container_id=container_id, compress=compress,
                             rootfs=None if wanted.ignore_rootfs else rootfs, image_name=wanted.podman_image,
                             image_id=wanted.podman_image_id)
    except KeyboardInterrupt:
        from .errors import Interrupted

        raise Interrupted(f"interrupted after the checkpoint completed, while it was exported: images in "
                          f"{res.image_path}; no archive was written") from None
    except Error as e:
        state = "was left running" if options.leave_running else "was checkpointed and is gone"
        raise Error(f"the checkpoint completed (images in {res.image_path}; container {container_id!r} "
                    f"{state}), but the export failed: {e}", errno=e.errno) from e
    if tmp:  # the images live on in the archive only
        if res.work_path == tmp:
            _keep_stats(res)
        shutil.rmtree(tmp, ignore_errors=True)
        res.image_path = None
    return res


def _keep_stats(res) -> None:
    """res.stats() after its work directory is gone: CRIU's statistics are kept (a few bytes) and decoded
    when asked for, from a private copy."""
    try:
        with open(os.path.join(res.work_path, STATS_DUMP), "rb") as f:
            raw = f.read()
    except OSError:
        return
    stats_of_directory = res.stats

    def stats():
        import tempfile

        with tempfile.TemporaryDirectory(prefix="fastckpt-stats-") as d:
            with open(os.path.join(d, STATS_DUMP), "wb") as f:
                f.write(raw)
            object.__setattr__(res, "work_path", d)
            try:
                return stats_of_directory()
            finally:
                object.__setattr__(res, "work_path", None)

    res.work_path = res.log_path = None
    res.stats = stats
