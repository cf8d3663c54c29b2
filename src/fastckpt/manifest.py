"""Damaged checkpoints are refused before CRIU sees them.

CRIU trusts its images: a ``pages-*.img`` cut short (a full disk, a copy
stopped half-way) makes CRIU 4.2's restore loop for ever, writing its log as
fast as it can.  fastckpt therefore checks an image directory before every
restore:

* :func:`write`, after every successful checkpoint, leaves
  ``fastckpt-manifest.json`` (mode 0600) beside the images: the size and the
  checksums of every file of the checkpoint (CRIU's ``*.img``,
  ``descriptors.json``, ``fastckpt.json``, ``stats-dump``; not the logs, not
  the manifest).  Checksums are XXH3-64s (the ``xxhash`` package; ~3x zlib's
  CRC32 here, which the manifests of older fastckpts hold and which is still
  verified) of 16 MiB chunks: those of the pages images mostly while CRIU writes them (a
  :class:`Follower` on the other core), the rest after the dump by two threads
  (xxhash and the reads release the GIL).  Each file is opened once, its size taken
  from the descriptor, and a small one (most images of a many-process tree) read and
  checksummed in one go.  The manifest records its algorithm and chunk size, so both
  can change later.
* :func:`verify`, before CRIU runs on a restore: with a manifest, every file
  it lists must be there with its size and checksums (extra files are fine).
  A restore uses :func:`verify_overlapped`: the same, but the checksums of
  large pages images (:data:`OVERLAP_MIN` bytes and more in all) are checked
  by a :class:`PagesCheck` thread while CRIU restores, and waited for at CRIU's
  "post-restore" notification: CRIU has read every page into the restored
  tasks then, and they have not run yet; a damaged image fails the
  notification, and CRIU kills them (CRIU 4.2 ignores a failed "pre-resume",
  which comes after the network is unlocked).  Sizes and every other file are
  still checked before CRIU starts.
  Without a manifest (images made by ``runc checkpoint``), the structure is checked:
  ``inventory.img`` and ``pstree.img`` decode, and each ``pages-<id>.img``
  holds exactly the pages that its ``pagemap-*.img`` says are in it (read by
  :mod:`fastckpt.images`, CRIU's own schemas).

Either way a damaged checkpoint is a :class:`~fastckpt.errors.DamagedImage`
whose message names the file and what is wrong with it.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import zlib
from collections.abc import Sequence

from . import atomicfile
from .errors import DamagedImage, Error, ImageDirError

MANIFEST_FILE = "fastckpt-manifest.json"
FORMAT = 1
ALGORITHM = "xxh3_64"  # XXH3's 64-bit hash of each CHUNK_SIZE bytes of a file, as 16 hex digits
CHUNK_SIZE = 16 << 20
THREADS = 2

# fastckpt's and runc's files that belong to a checkpoint, besides CRIU's *.img
# (imagedir.META_FILE, runc.DESCRIPTORS_FILE, CRIU's statistics of the dump)
_CHECKPOINT_FILES = ("fastckpt.json", "descriptors.json", "stats-dump")
_READ_SLICE = 1 << 20  # bytes read (and checksummed) at a time by one thread
_PARALLEL_MIN = 16 << 20  # below this many bytes, threads cost more than they bring
_SMALL_MAX = 1 << 20  # a file of at most this many bytes is read and checksummed in one go
# a restore checks its pages images while CRIU restores (verify_overlapped) when they hold this many bytes
# (beyond those of one read each); fewer cost less than the thread and CRIU's notifications
OVERLAP_MIN = 16 << 20


def is_checkpoint_file(name: str) -> bool:
    """True for the files of an image directory that the manifest covers."""
    return name.endswith(".img") or name in _CHECKPOINT_FILES


def _scan(image_path: str, names: Sequence[str] | None, chunk_size: int, algorithm: str | None):
    """One pass over the files NAMES of IMAGE_PATH (None: its checkpoint files, as found): each regular
    file opened once, its size from the open descriptor and, for a file of one chunk of at most
    _SMALL_MAX bytes, its checksum (ALGORITHM's; None: no checksums) from one read -- the thousands of
    small images of a many-process checkpoint cost one open, fstat, read and close each.

    Returns (sizes, sums of the small files, problems): NAME -> size; NAME -> [checksum];
    (name, what is wrong) for a name missing, not a regular file (not opened) or unreadable.
    """
    small_max = min(_SMALL_MAX, chunk_size)
    sizes: dict[str, int] = {}
    small: dict[str, list[int]] = {}
    problems: list[tuple[str, str]] = []
    dfd = os.open(image_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with os.scandir(dfd) as it:  # the entries' types, without a stat each
            regular = {e.name: e.is_file(follow_symlinks=False) for e in it}
        if names is None:
            names = sorted(n for n, reg in regular.items() if reg and is_checkpoint_file(n))
        for name in names:
            reg = regular.get(name)
            if reg is None:
                problems.append((name, "missing"))
                continue
            if not reg:
                problems.append((name, "not a regular file"))
                continue
            try:  # no device, FIFO or symlink is opened (a swap since the listing fails or is refused)
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            except FileNotFoundError:
                problems.append((name, "missing"))
                continue
            except OSError as e:
                problems.append((name, "not a regular file" if e.errno == errno.ELOOP
                                 else f"unreadable: {e.strerror}"))
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    problems.append((name, "not a regular file"))
                    continue
                sizes[name] = size = st.st_size
                if algorithm is not None and size == 0:
                    small[name] = []  # no chunk
                elif algorithm is not None and size <= small_max:
                    data = os.read(fd, size)
                    while len(data) < size:  # a short read of a regular file: rare, but allowed
                        more = os.read(fd, size - len(data))
                        if not more:
                            raise _Short(name, len(data), size)
                        data += more
                    small[name] = [_digest(data, algorithm)]
            except OSError as e:
                problems.append((name, f"unreadable: {e.strerror}"))
            finally:
                os.close(fd)
    finally:
        os.close(dfd)
    return sizes, small, problems


# --- checksums -------------------------------------------------------------------------

class _Short(Exception):
    """A file ended before the bytes the caller expected (it shrank meanwhile)."""

    def __init__(self, name: str, got: int, expected: int):
        super().__init__(name, got, expected)
        self.name, self.got, self.expected = name, got, expected


class _Crc32:
    """zlib's CRC32, in the manifests of earlier fastckpts (still verified)."""

    def __init__(self):
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)

    def intdigest(self) -> int:
        return self.value


def _xxh3_64():
    import xxhash  # the maintained binding of XXH3: ~3x zlib's CRC32 here, the GIL released

    return xxhash.xxh3_64()


# algorithm name -> (a new hasher with update() and intdigest(), hex digits of a digest)
_ALGORITHMS = {"xxh3_64": (_xxh3_64, 16), "crc32": (_Crc32, 8)}


def _digest(data, algorithm: str) -> int:
    """The checksum of DATA in one call (what a hasher of ALGORITHM gives for the same bytes)."""
    if algorithm == "xxh3_64":
        import xxhash

        return xxhash.xxh3_64_intdigest(data)
    return zlib.crc32(data)


def _chunk_sum(image_path: str, name: str, offset: int, length: int, buf: bytearray,
               algorithm: str = ALGORITHM) -> int:
    view = memoryview(buf)
    h = _ALGORITHMS[algorithm][0]()
    done = 0
    fd = os.open(os.path.join(image_path, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        while done < length:
            want = min(len(buf), length - done)
            n = os.preadv(fd, [view[:want]], offset + done)
            if n == 0:
                raise _Short(name, offset + done, offset + length)
            h.update(view[:n])
            done += n
    finally:
        view.release()
        os.close(fd)
    return h.intdigest()


def checksums(image_path: str, sizes: dict[str, int], chunk_size: int | None = None,
              threads: int | None = None, known: dict[str, dict[int, int]] | None = None,
              algorithm: str = ALGORITHM, cancel=None) -> dict[str, list[int]]:
    """The checksum (ALGORITHM's) of each CHUNK_SIZE bytes of each file NAME -> SIZE (its first SIZE bytes).

    KNOWN: checksums of whole chunks already computed (by a :class:`Follower`), by
    file name and chunk index.  CANCEL: a threading.Event; once set, no further chunk is
    begun (what is returned then is incomplete).  OSError (file gone, unreadable) and
    :class:`_Short` (the file holds fewer bytes) propagate.
    """
    chunk_size = chunk_size or CHUNK_SIZE
    threads = threads or THREADS
    known = known or {}
    out: dict[str, list[int]] = {name: [0] * (-(-size // chunk_size)) for name, size in sizes.items()}
    items: list[tuple[str, int, int, int]] = []  # (name, chunk index, offset, length)
    for name, size in sizes.items():
        done = known.get(name, {})
        for i, off in enumerate(range(0, size, chunk_size)):
            length = min(chunk_size, size - off)
            if length == chunk_size and i in done:
                out[name][i] = done[i]
            else:
                items.append((name, i, off, length))
    items.sort(key=lambda it: -it[3])  # longest first: the two threads finish together
    total = sum(it[3] for it in items)
    n_threads = max(1, min(threads, len(items))) if total >= _PARALLEL_MIN else 1

    pending = iter(items)  # next() on a list iterator is atomic under the GIL
    errors: list[BaseException] = []
    stop = [False]
    slice_size = min(_READ_SLICE, chunk_size)

    def work() -> None:
        buf = bytearray(min(slice_size, max((it[3] for it in items), default=1)))
        while not stop[0] and not (cancel is not None and cancel.is_set()):
            item = next(pending, None)
            if item is None:
                return
            name, i, off, length = item
            try:
                out[name][i] = _chunk_sum(image_path, name, off, length, buf, algorithm)
            except BaseException as e:  # noqa: B902 -- handed to the caller's thread
                errors.append(e)
                stop[0] = True
                return

    if n_threads == 1:
        work()
    else:
        import threading

        helpers = [threading.Thread(target=work, name=f"fastckpt-sum{k}", daemon=True)
                   for k in range(n_threads - 1)]
        for t in helpers:
            t.start()
        try:
            work()  # this thread is one of the workers
        except BaseException:
            stop[0] = True
            raise
        finally:
            for t in helpers:
                t.join()
    if errors:
        raise errors[0]
    return out


def _hex(sums: Sequence[int], algorithm: str = ALGORITHM) -> list[str]:
    width = _ALGORITHMS[algorithm][1]
    return [f"{c:0{width}x}" for c in sums]


# --- write -----------------------------------------------------------------------------

class Follower:
    """Checksums CRIU's pages images while CRIU writes them.

    CRIU writes each ``pages-*.img`` from start to end; every chunk that is
    complete on disk is checksummed at once, on the other core, while the data
    is still in the page cache, so that after the dump :func:`write` has only
    the last partial chunks and the small files left to do.
    """

    IDLE_INTERVAL = 0.16  # seconds between looks while no pages image grows much
    BUSY_GROWTH = 4 << 20  # bytes of pages written between two looks that count as a large image being written

    def __init__(self, image_path: str, chunk_size: int = CHUNK_SIZE, interval: float = 0.01):
        import threading

        self.image_path, self.chunk_size, self.interval = image_path, chunk_size, interval
        self.known: dict[str, dict[int, int]] = {}
        # a file that is there already is an older checkpoint's, which CRIU will
        # truncate and write again: only files CRIU creates are followed
        self._old = set(os.listdir(image_path))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastckpt-sum-follow", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import threading

        try:  # this thread only: CRIU (and the frozen container) come first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
        buf = bytearray(_READ_SLICE)
        interval, total = self.interval, 0
        try:
            while not self._stop.wait(interval):
                with os.scandir(self.image_path) as it:
                    files = [(e.name, e.stat().st_size) for e in it
                             if is_pages_image(e.name) and e.name not in self._old]
                busy = False
                for name, size in files:
                    done = self.known.setdefault(name, {})
                    i = len(done)
                    while (i + 1) * self.chunk_size <= size and not self._stop.is_set():
                        done[i] = _chunk_sum(self.image_path, name, i * self.chunk_size, self.chunk_size, buf)
                        i += 1
                        busy = True
                # looks often while CRIU writes a large pages image; while it writes only small ones (a
                # many-process tree: a thousand and more entries to list each time) or none, less and less
                grown, total = sum(k for _, k in files) - total, sum(k for _, k in files)
                busy = busy or grown >= self.BUSY_GROWTH
                interval = self.interval if busy else min(interval * 2, self.IDLE_INTERVAL)
        except (OSError, _Short):
            self.known = {}  # whatever went wrong, write() computes it all again

    def stop(self) -> dict[str, dict[int, int]]:
        self._stop.set()
        self._thread.join()
        return self.known


def write(image_path: str, known: dict[str, dict[int, int]] | None = None) -> str:
    """Write the manifest of the checkpoint in IMAGE_PATH (after a successful dump); returns its path.

    KNOWN: chunk checksums a :class:`Follower` computed during the dump.

    Raises :class:`~fastckpt.errors.ImageDirError` when a file cannot be read
    or the manifest cannot be written; no manifest is left then.
    """
    path = os.path.join(image_path, MANIFEST_FILE)
    try:
        _unlink(path)  # a stale one must not outlive a failure below
        try:
            chunk_size = CHUNK_SIZE
            sizes, sums, problems = _scan(image_path, None, chunk_size, ALGORITHM)
            if problems:  # a file that went or cannot be read since the listing
                name, what = problems[0]
                raise ImageDirError(f"{name} in {image_path} is {what}", errno=errno.EIO)
            sums.update(checksums(image_path, {n: k for n, k in sizes.items() if n not in sums}, chunk_size,
                                  known=known))
        except _Short as e:
            raise ImageDirError(f"{e.name} in {image_path} changed while its checksum was computed "
                                f"({e.got} of {e.expected} bytes)", errno=errno.EIO) from None
        manifest = {
            "format": FORMAT,
            "algorithm": ALGORITHM,
            "chunk_size": chunk_size,
            "files": {name: {"size": size, ALGORITHM: _hex(sums[name])} for name, size in sizes.items()},
        }
        data = _format(manifest)
        atomicfile.write_atomic(path, data, 0o600)  # its temporary goes on any failure
    except OSError as e:
        if isinstance(e, ImageDirError):
            raise
        what = f": {e.filename}" if e.filename else ""
        raise ImageDirError(f"cannot write {MANIFEST_FILE} in {image_path}: {e.strerror or e}{what}",
                            errno=e.errno) from None
    return path


def _format(manifest: dict) -> bytes:
    """JSON, one line a file."""
    head = {k: v for k, v in manifest.items() if k != "files"}
    lines = [json.dumps(head)[:-1] + ', "files": {']
    files = manifest["files"]
    for i, name in enumerate(files):
        lines.append(f" {json.dumps(name)}: {json.dumps(files[name])}" + ("," if i < len(files) - 1 else ""))
    lines.append("}}")
    return ("\n".join(lines) + "\n").encode()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- verify ----------------------------------------------------------------------------

def _damaged(image_path: str, problems: list[tuple[str, str]]) -> DamagedImage:
    """One error for PROBLEMS, (file name, what is wrong) pairs: the first named, the others counted."""
    name, what = problems[0]
    msg = f"the checkpoint in {image_path} is damaged: {name} is {what}"
    if len(problems) > 1:
        others = ", ".join(n for n, _ in problems[1:4]) + (", ..." if len(problems) > 4 else "")
        msg += f" (and {len(problems) - 1} more damaged file{'s' if len(problems) > 2 else ''}: {others})"
    return DamagedImage(msg, path=os.path.join(image_path, name), problems=problems)


def read_manifest(image_path: str) -> dict | None:
    """The manifest of IMAGE_PATH (checked for form), or None if there is none."""
    path = os.path.join(image_path, MANIFEST_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DamagedImage(f"cannot read {path}: {e.strerror}", path=path, errno=e.errno) from None

    def bad(why: str) -> DamagedImage:
        return _damaged(image_path, [(MANIFEST_FILE, f"unreadable: {why}")])

    try:
        m = json.loads(data)
    except ValueError as e:
        raise bad(f"not JSON ({e})") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
        raise bad("no file list")
    if not isinstance(m.get("format"), int) or m["format"] < 1:
        raise bad(f"format {m.get('format')!r}")
    for name, entry in m["files"].items():
        if not name or "/" in name or name in (".", ".."):
            raise bad(f"file name {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or entry["size"] < 0:
            raise bad(f"entry of {name}")
    algorithm = m.get("algorithm")
    if algorithm in _ALGORITHMS:
        width = _ALGORITHMS[algorithm][1]
        cs = m.get("chunk_size")
        if not isinstance(cs, int) or cs <= 0:
            raise bad(f"chunk size {cs!r}")
        for name, entry in m["files"].items():
            sums = entry.get(algorithm)
            if (not isinstance(sums, list) or len(sums) != -(-entry["size"] // cs)
                    or not all(isinstance(s, str) and len(s) == width for s in sums)):
                raise bad(f"checksums of {name}")
            try:
                [int(s, 16) for s in sums]
            except ValueError:
                raise bad(f"checksums of {name}") from None
    return m


def verify(image_path: str) -> dict | None:
    """Check the checkpoint in IMAGE_PATH before CRIU restores it; returns its manifest (None: had none).

    With a manifest: every file it lists exists with its size and checksums.
    Without: :func:`check_structure`.  Raises
    :class:`~fastckpt.errors.DamagedImage` naming the (first) damaged file.
    """
    return _verify(image_path, False)[0]


def verify_overlapped(image_path: str) -> "PagesCheck | None":
    """:func:`verify`, but for the checksums of the large pages images, which a restore may check while
    CRIU restores: before CRIU, the manifest, every file's size (a cut-short pages image would make CRIU
    loop) and the checksums of all other files (the metadata images CRIU acts on: files, ghost files,
    mounts) and of the pages images of one read each; returned, a started :class:`PagesCheck` of the rest
    (None: nothing left, or less than OVERLAP_MIN bytes, then checked here too). Raises what verify()
    raises; the caller waits for the PagesCheck before the restored tree runs, and closes it."""
    m, later = _verify(image_path, True)
    if later is None:
        return None
    return PagesCheck(image_path, *later)


def is_pages_image(name: str) -> bool:
    return name.startswith("pages-") and name.endswith(".img")


def _verify(image_path: str, defer: bool):
    """verify()'s work: (the manifest or None, what is left to check or None). With DEFER, the
    pages images not checksummed by the first pass (larger than _SMALL_MAX) are left when they hold
    OVERLAP_MIN bytes or more: (their sizes, their expected checksums, chunk size, algorithm)."""
    m = read_manifest(image_path)
    if m is None:
        check_structure(image_path)
        return None, None
    files = m["files"]
    algorithm = m.get("algorithm")
    known = algorithm in _ALGORITHMS
    cs = m["chunk_size"] if known else CHUNK_SIZE
    try:  # sizes (and the checksums of the small files) in one pass
        found, small, problems = _scan(image_path, sorted(files), cs, algorithm if known else None)
    except _Short as e:
        raise _damaged(image_path, [(e.name, f"truncated: {e.got} of {files[e.name]['size']} bytes")]) from None
    except OSError as e:
        raise DamagedImage(f"cannot read image directory {image_path}: {e.strerror}", path=image_path,
                           errno=e.errno) from None
    for name in sorted(found):
        expected, size = files[name]["size"], found[name]
        if size < expected:
            problems.append((name, f"truncated: {size} of {expected} bytes"))
        elif size > expected:
            problems.append((name, f"altered: {size} bytes, {expected} expected"))
    problems.sort(key=lambda p: p[0])
    if problems:
        raise _damaged(image_path, problems)
    if not known:
        # written by a newer fastckpt with a checksum this one does not know: the sizes
        # matched; the structure is what can still be checked
        check_structure(image_path)
        return m, None
    sizes = {name: files[name]["size"] for name in sorted(files) if name not in small}
    later = {n: k for n, k in sizes.items() if is_pages_image(n)} if defer else {}
    if sum(later.values()) < OVERLAP_MIN:
        later = {}
    now = {n: k for n, k in sizes.items() if n not in later}
    sums = _checksums_or_damaged(image_path, now, cs, algorithm)
    sums.update(small)
    problems = _mismatches(files, sums, cs, algorithm)
    if problems:
        raise _damaged(image_path, problems)
    if not later:
        return m, None
    return m, (later, {n: files[n][algorithm] for n in later}, cs, algorithm)


def _checksums_or_damaged(image_path: str, sizes: dict[str, int], cs: int, algorithm: str, threads=None,
                          cancel=None) -> dict[str, list[int]]:
    """checksums(), a file that ended early or cannot be read a DamagedImage."""
    try:
        return checksums(image_path, sizes, cs, threads=threads, algorithm=algorithm, cancel=cancel)
    except _Short as e:
        raise _damaged(image_path, [(e.name, f"truncated: {e.got} of {sizes[e.name]} bytes")]) from None
    except OSError as e:
        name = os.path.basename(e.filename) if e.filename else "a file"
        raise _damaged(image_path, [(name, f"unreadable: {e.strerror}")]) from None


def _mismatches(files: dict, sums: dict[str, list[int]], cs: int, algorithm: str) -> list[tuple[str, str]]:
    """(name, what is wrong) for each file of SUMS whose checksums are not the manifest's FILES'."""
    problems = []
    for name in sorted(sums):
        want = [w.lower() for w in files[name][algorithm]]
        bad = [i for i, got in enumerate(_hex(sums[name], algorithm)) if got != want[i]]
        if bad:
            i = bad[0]
            end = min((i + 1) * cs, files[name]["size"]) - 1
            where = f"bytes {i * cs}-{end}" + (f" and {len(bad) - 1} more chunk{'s' if len(bad) > 2 else ''}"
                                               if len(bad) > 1 else "")
            problems.append((name, f"altered: checksum mismatch in {where}"))
    return problems


class PagesCheck:
    """The checksums of a checkpoint's large pages images, checked in a thread of its own while CRIU
    restores (see :func:`verify_overlapped`): CRIU reads the pages into the restored tasks before its
    "post-restore" notification, whose handler calls :meth:`result`; a mismatch fails the notification,
    and CRIU kills the restored tree before it ran one instruction of its own.

    One thread (CRIU's restore has the other core), started with Ctrl-C and SIGTERM blocked (the restore
    holds them back: a signal must not reach the process through this thread); :meth:`close` stops it
    after the chunk at hand and waits for it: it never outlives the restore."""

    def __init__(self, image_path: str, sizes: dict[str, int], want: dict[str, list[str]], chunk_size: int,
                 algorithm: str):
        import _signal
        import threading

        from .signals import DEFERRED

        self.image_path, self.sizes, self.chunk_size, self.algorithm = image_path, sizes, chunk_size, algorithm
        self._files = {n: {"size": sizes[n], algorithm: want[n]} for n in sizes}
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fastckpt-pages-check", daemon=True)
        old = _signal.pthread_sigmask(_signal.SIG_BLOCK, DEFERRED)  # inherited by the thread
        try:
            self._thread.start()
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old)

    def _run(self) -> None:
        try:
            sums = _checksums_or_damaged(self.image_path, self.sizes, self.chunk_size, self.algorithm, threads=1,
                                         cancel=self._cancel)
            if self._cancel.is_set():
                return
            problems = _mismatches(self._files, sums, self.chunk_size, self.algorithm)
            if problems:
                self._error = _damaged(self.image_path, problems)
        except BaseException as e:  # noqa: BLE001 -- given to result()'s caller
            self._error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> None:
        """Wait for the check; raises DamagedImage naming the damaged file (or what the check failed with)."""
        self._thread.join()
        if self._cancel.is_set() and self._error is None:
            raise Error(f"the check of the pages images in {self.image_path} was stopped before it finished")
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the check (if it still runs) and wait for its thread."""
        if self._thread.is_alive():
            self._cancel.set()
        self._thread.join()


# --- structure (images without a manifest) ------------------------------------------------

def _problem(image_path: str, name: str, kind: str):
    """The image NAME of type KIND (magic.h's name) decoded, or what is wrong with it, a string."""
    from . import images

    path = os.path.join(image_path, name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable: {e.strerror}"
    try:
        img = images.parse(data, path, kind)
    except DamagedImage as e:
        return e.problems[0][1]
    if not img.entries:
        return "truncated: it holds no entry"
    return img


def check_structure(image_path: str, page_size: int | None = None) -> None:
    """What can be checked of images without a manifest: ``inventory.img`` and ``pstree.img`` decode;
    each ``pages-<id>.img`` holds exactly the pages its pagemap says it holds.

    Raises :class:`~fastckpt.errors.DamagedImage` naming the file and the numbers.
    """
    problems: list[tuple[str, str]] = []
    for name, kind in (("inventory.img", "INVENTORY"), ("pstree.img", "PSTREE")):
        got = _problem(image_path, name, kind)
        if isinstance(got, str):
            problems.append((name, got))
    problems += page_problems(image_path, page_size)
    if problems:
        raise _damaged(image_path, problems)


def check_pages(image_path: str, page_size: int | None = None) -> None:
    """Each ``pages-<id>.img`` holds exactly the pages its pagemap says (DamagedImage otherwise):
    what a page server checks of what it received."""
    problems = page_problems(image_path, page_size)
    if problems:
        raise _damaged(image_path, problems)


def page_problems(image_path: str, page_size: int | None = None) -> list[tuple[str, str]]:
    """(file, what is wrong) for each pagemap that does not decode and each pages image whose size
    is not what its pagemaps say."""
    from . import images

    page_size = page_size or os.sysconf("SC_PAGE_SIZE")
    problems: list[tuple[str, str]] = []
    try:
        names = sorted(os.listdir(image_path))
    except OSError as e:
        raise ImageDirError(f"cannot read image directory {image_path}: {e.strerror}", errno=e.errno) from None
    stored: dict[int, list[tuple[str, int]]] = {}  # pages id -> [(pagemap, pages)]
    for name in names:
        if not (name.startswith("pagemap-") and name.endswith(".img")):
            continue
        got = _problem(image_path, name, "PAGEMAP")
        if isinstance(got, str):
            problems.append((name, got))
            continue
        pm = images.pagemap_runs(got.entries)
        stored.setdefault(pm.pages_id, []).append((name, pm.stored_pages))
    for pages_id, maps in sorted(stored.items()):
        pages = f"pages-{pages_id}.img"
        n = sum(k for _, k in maps)
        want = n * page_size
        by = " and ".join(m for m, _ in maps)
        try:
            st = os.stat(os.path.join(image_path, pages))
            size = st.st_size
        except FileNotFoundError:
            if n:
                problems.append((pages, f"missing ({by} says it holds {n} pages, {want} bytes)"))
            continue
        except OSError as e:
            problems.append((pages, f"unreadable: {e.strerror}"))
            continue
        if size < want:
            problems.append((pages, f"truncated: {size} of {want} bytes ({by} says it holds {n} pages "
                                    f"of {page_size} bytes)"))
        elif size > want:
            problems.append((pages, f"altered: {size} bytes, but {by} says it holds {n} pages of "
                                    f"{page_size} bytes ({want} bytes)"))
    return problems
