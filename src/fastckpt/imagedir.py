"""Image and work directories: made private (process memory goes there) and checked, opened for CRIU,
listed, cleared of a failed dump's images; and fastckpt's meta file in them."""
from __future__ import annotations

import errno
import json
import os
import stat

from . import manifest, runc
from .errors import Error, ImageDirError
from .options import NETNS_HOST


def make_private_dir(path: str, what: str) -> bool:
    """Create PATH (and parents) for process memory: the leaf is 0700; True if it was made here.

    An existing directory must be ours and writable by nobody else (it will
    hold process memory, and a writable one could be swapped under us).
    """
    made = not os.path.lexists(path)
    if not made and not os.path.isdir(path):  # makedirs would say "File exists"
        raise ImageDirError(f"{what} {path} is not a directory", errno=errno.ENOTDIR)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ImageDirError(f"cannot create {what} {path}: {e.strerror}", errno=e.errno) from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ImageDirError(f"{what} {path} is not a directory", errno=errno.ENOTDIR)
    check_private_dir(path, what, st)
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return made


def make_private_dirs(image_path: str, work_path: str) -> None:
    """The image and work directories; when the second cannot be had, the first is not left made."""
    made = make_private_dir(image_path, "image directory")
    if work_path == image_path:
        return
    try:
        make_private_dir(work_path, "work directory")
    except Error:
        if made:
            try:
                os.rmdir(image_path)
            except OSError:
                pass
        raise


def check_private_dir(path: str, what: str, st: os.stat_result | None = None) -> None:
    st = st or os.stat(path)
    if st.st_uid != os.geteuid():
        raise ImageDirError(f"{what} {path} belongs to uid {st.st_uid}, not to the user running fastckpt "
                            f"(uid {os.geteuid()}): refused", errno=errno.EPERM)
    if st.st_mode & 0o022:
        raise ImageDirError(f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): refused",
                            errno=errno.EPERM)


def require_writable_work_dir(path: str, log: str) -> None:
    """CRIU writes its LOG in the work directory (the image directory without --work-path): one it
    cannot write in is refused before CRIU runs (CRIU would fail naming a log it could not create)."""
    if os.access(path, os.W_OK):
        return
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = "is on a read-only file system" if read_only else "is not writable"
    raise ImageDirError(f"the work directory {path} {why}: CRIU cannot write its log ({log}) there; "
                        "give a writable directory with --work-path (work_path=)",
                        errno=errno.EROFS if read_only else errno.EACCES)


def open_dir_fd(path: str, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ImageDirError(f"cannot open {what} {path}: {e.strerror}", errno=e.errno) from None
    os.set_inheritable(fd, True)  # criu swrk is exec'd and uses the fd number
    return fd


def write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def list_images(path: str) -> dict[str, int]:
    out = {}
    with os.scandir(path) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                out[e.name] = e.stat(follow_symlinks=False).st_size
    return dict(sorted(out.items()))


def discard_partial_images(image_path: str) -> None:
    """After a failed dump nothing may look like a checkpoint: CRIU's images and
    fastckpt's files go, the logs stay."""
    try:
        names = os.listdir(image_path)
    except OSError:
        return
    for name in names:
        if name.endswith(".img") or name in (META_FILE, runc.DESCRIPTORS_FILE, "stats-dump",
                                             manifest.MANIFEST_FILE):
            try:
                os.unlink(os.path.join(image_path, name))
            except OSError:
                pass


# --- the meta file -------------------------------------------------------------

META_FILE = "fastckpt.json"


def write_meta(image_path: str, ct: runc.Container | None, netns: str = NETNS_HOST,
               network_lock: str = "iptables") -> None:
    """What fastckpt keeps beside CRIU's images: the kind of checkpoint and,
    for a container, runc's state (its config) so that restore needs no
    conversion; what network namespace it had and how it was locked."""
    meta = {"format": 1, "kind": "container" if ct else "process", "netns": netns,
            "network_lock": network_lock, "boot_id": boot_id()}
    if ct is not None:
        meta["id"] = ct.id
        meta["state"] = ct.state
    write_private(os.path.join(image_path, META_FILE), json.dumps(meta).encode())


def boot_id() -> str | None:
    """This boot's id (a restore on the same boot as its checkpoint knows the clocks went on)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def read_meta(image_path: str) -> dict | None:
    try:
        with open(os.path.join(image_path, META_FILE), "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise Error(f"cannot read {META_FILE} in {image_path}: {e}") from e
