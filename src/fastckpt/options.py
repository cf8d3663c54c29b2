"""The options model shared by the API and the CLI.

A CLI flag is parsed once into the same frozen record that
``fastckpt.checkpoint(...)`` takes; validation lives here and only here.
Messages follow runc's for the same mistakes.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from ._record import Record
from .constants import CgroupMode, Namespace, NetworkLock
from .errors import UsageError

# --manage-cgroups-mode values, as runc spells them (plus CRIU's "ignore").
CGROUP_MODES = {
    "soft": CgroupMode.SOFT,
    "full": CgroupMode.FULL,
    "strict": CgroupMode.STRICT,
    "ignore": CgroupMode.IGNORE,
}

# --empty-ns values: OCI namespace type names.
EMPTY_NS = {"network": Namespace.NEWNET}

# fastckpt's network lock when none is asked for ("auto", see auto_network_lock).
DEFAULT_NETWORK_LOCK = None

NETWORK_LOCKS = {
    "iptables": NetworkLock.IPTABLES,
    "nftables": NetworkLock.NFTABLES,
    "skip": NetworkLock.SKIP,
}


class PageServer(Record, frozen=True):
    """Where memory pages go instead of the image directory."""

    address: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "PageServer":
        parts = text.split(":")
        if len(parts) != 2:
            raise UsageError(f"Use --page-server ADDRESS:PORT to specify page server (got {text!r})")
        address, port = parts
        if not address:
            raise UsageError(f"Use --page-server ADDRESS:PORT to specify page server (no address in {text!r})")
        if not (port.isascii() and port.isdigit()):  # plain digits, as runc's strconv.Atoi
            raise UsageError(f"Invalid port number {port!r} in --page-server {text!r}")
        return cls(address, int(port))

    def __post_init__(self):
        if not isinstance(self.port, int) or isinstance(self.port, bool):
            raise UsageError(f"Invalid port number {self.port!r} for the page server (an integer 1-65535)")
        if not isinstance(self.address, str) or not self.address:
            raise UsageError(f"Invalid page server address {self.address!r}")
        if not 0 < self.port < 65536:
            raise UsageError(f"Invalid port number {self.port} for the page server (1-65535)")

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


def parse_cgroup_mode(value: str | int | CgroupMode | None) -> CgroupMode | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return CGROUP_MODES[value]
        except KeyError:
            raise UsageError(
                f"Invalid manage cgroups mode {value!r}: use one of {', '.join(CGROUP_MODES)}"
            ) from None
    try:
        return CgroupMode(value)
    except ValueError:
        raise UsageError(f"Invalid manage cgroups mode {value!r}") from None


def parse_empty_ns(value: Iterable[str] | int | Namespace | None) -> Namespace:
    if value is None:
        return Namespace(0)
    if isinstance(value, int):
        mask = Namespace(value)
        unsupported = mask & ~Namespace.NEWNET
        if unsupported:
            raise UsageError(f"namespace {unsupported!r} is not supported by --empty-ns (only network)")
        return mask
    if isinstance(value, str):
        value = [value]
    mask = Namespace(0)
    for name in value:
        try:
            mask |= EMPTY_NS[name]
        except KeyError:
            raise UsageError(f"namespace {name!r} is not supported by --empty-ns (supported: network)") from None
    return mask


# What network namespace a target has, for auto_network_lock
NETNS_HOST, NETNS_OWN, NETNS_OWN_LO = "host", "own", "own-lo"


def auto_network_lock(netns: str, empty_ns: Namespace, tcp_established: bool,
                      dumped_with: str | None = "skip") -> NetworkLock | None:
    """fastckpt's default network lock (NETNS: NETNS_HOST, NETNS_OWN or NETNS_OWN_LO).

    DUMPED_WITH, for a restore: the lock the checkpoint was made with (its
    rules are in the images and only a locked restore removes them again);
    a checkpoint is skipped only when it was made without one.

    - a network namespace restored empty (--empty-ns network) needs no lock: skip;
    - a namespace of the target's own with no interface but loopback, and no
      established TCP connection to carry (no --tcp-established): nothing can
      reach it from outside and nothing inside runs while CRIU works: skip;
    - any other namespace of the target's own: nftables, one netlink
      transaction each way (~16 ms in all), where CRIU's default, iptables,
      runs iptables-restore four times (~60-90 ms) for the same isolation;
    - the host's network namespace (a process tree): CRIU's default, iptables,
      which only adds rules for TCP connections being dumped, where nftables
      would set up its tables every time (~25 ms).
    """
    if empty_ns & Namespace.NEWNET:
        return NetworkLock.SKIP
    if netns == NETNS_OWN_LO and not tcp_established and dumped_with == "skip":
        return NetworkLock.SKIP
    if netns in (NETNS_OWN, NETNS_OWN_LO):
        return NetworkLock.NFTABLES
    return None


def parse_network_lock(value: str | int | NetworkLock | None) -> NetworkLock | None:
    if value is None or value in ("", "auto"):
        return None
    if isinstance(value, str):
        try:
            return NETWORK_LOCKS[value]
        except KeyError:
            raise UsageError(
                f"Invalid network lock method {value!r}: use one of auto, {', '.join(NETWORK_LOCKS)}") from None
    try:
        return NetworkLock(value)
    except ValueError:
        raise UsageError(f"Invalid network lock method {value!r}") from None


def parse_externals(value) -> tuple:
    """CRIU's --external KEYs ("unix[INODE]", "net[INODE]:KEY", ...): a list of non-empty strings."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise UsageError(f"extra_externals must be a list of keys (a list, not the string {value!r})")
    try:
        keys = tuple(value)
    except TypeError:
        raise UsageError(f"extra_externals must be a list of keys, not {type(value).__name__}") from None
    for key in keys:
        if not isinstance(key, str) or not key:
            raise UsageError(f"each of extra_externals must be a string, not {key!r}")
        if "\0" in key:
            raise UsageError(f"external {key!r} contains a NUL byte")
    return keys


class _ImagePaths:
    """Where images and logs go; shared by checkpoint and restore options."""

    image_path: str | None
    work_path: str | None

    def resolved_image_path(self) -> str:
        return os.path.abspath(self.image_path or os.path.join(os.getcwd(), "checkpoint"))

    def resolved_work_path(self) -> str:
        return os.path.abspath(self.work_path) if self.work_path else self.resolved_image_path()


class CheckpointOptions(_ImagePaths, Record, frozen=True):
    """What ``runc checkpoint``'s flags say, as one value.

    Strings are accepted where the CLI has them (``page_server="host:port"``,
    ``manage_cgroups_mode="full"``, ``empty_ns=["network"]``) and are
    validated and converted on construction.
    """

    image_path: str | None = None  # default: ./checkpoint
    work_path: str | None = None  # default: the image path
    leave_running: bool = False
    tcp_established: bool = False
    ext_unix_sk: bool = False
    shell_job: bool = False
    file_locks: bool = False
    page_server: PageServer | None = None
    manage_cgroups_mode: CgroupMode | None = None
    empty_ns: Namespace = Namespace(0)
    network_lock: NetworkLock | None = DEFAULT_NETWORK_LOCK
    log_level: int = 4
    extra_externals: tuple = ()  # --external KEY strings handed to CRIU
    fast_migrations: bool = False  # the cgroup warm-up (ext/warm.h): slows the host's forks meanwhile
    # --export: the checkpoint as an archive in podman's layout (fastckpt.archive)
    export: str | None = None
    compress: str | None = None  # zstd (default), gzip or none
    ignore_rootfs: bool = False  # leave the rootfs out of the archive (podman's flag)
    podman_image: str | None = None  # config.dump's rootfsImageName: the image podman restores it on
    podman_image_id: str | None = None  # ... and its id (rootfsImageID)
    # runc's flags for iterative and lazy migration
    pre_dump: bool = False  # dump memory only (needs soft-dirty tracking), leave the container running
    parent_path: str | None = None  # previous (pre-dump) images, relative to the image path
    lazy_pages: bool = False  # leave memory to a lazy-pages daemon (needs userfaultfd and a page server)
    status_fd: int | None = None  # fd that gets a \0 once the lazy page server is ready
    auto_dedup: bool = False  # punch the pages a later dump repeats out of the parent's images

    def __post_init__(self):
        ps = self.page_server
        if isinstance(ps, str):
            ps = PageServer.parse(ps) if ps else None
        elif isinstance(ps, tuple):
            ps = PageServer(*ps)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("page_server", ps)
        set_("manage_cgroups_mode", parse_cgroup_mode(self.manage_cgroups_mode))
        set_("empty_ns", parse_empty_ns(self.empty_ns))
        set_("network_lock", parse_network_lock(self.network_lock))
        set_("extra_externals", parse_externals(self.extra_externals))
        _normalize_paths(self, ("image_path", "work_path", "export", "parent_path"))
        if isinstance(self.log_level, bool) or not isinstance(self.log_level, int) or not 0 <= self.log_level <= 4:
            raise UsageError(f"Invalid log level {self.log_level!r} (an integer 0-4)")
        _check_export(self)
        if self.parent_path and os.path.isabs(self.parent_path):
            raise UsageError("--parent-path must be relative (to the image path)")
        # as runc: --status-fd means something (and is checked) only with --lazy-pages
        set_("status_fd", parse_status_fd(self.status_fd) if self.lazy_pages else None)
        if self.lazy_pages and self.pre_dump:
            raise UsageError("--lazy-pages and --pre-dump cannot be used together")
        if self.export and (self.pre_dump or self.lazy_pages):
            raise UsageError("--export takes a complete checkpoint: not with --pre-dump or --lazy-pages")

    def resolved_parent_path(self) -> str | None:
        """The parent images as a path (--parent-path is relative to the image path), or None."""
        if not self.parent_path:
            return None
        return os.path.normpath(os.path.join(self.resolved_image_path(), self.parent_path))


def parse_status_fd(value) -> int | None:
    """--status-fd: a file descriptor number (runc's default -1: none)."""
    if value is None or value == "" or value == -1:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UsageError(f"invalid --status-fd argument {value!r}: a file descriptor number")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise UsageError(f"invalid --status-fd argument {value!r}: a file descriptor number")
        value = int(value)
    if value < 0:
        raise UsageError(f"invalid --status-fd argument {value}: a file descriptor number")
    return value


# --lsm-profile TYPE:NAME, as CRIU takes it
LSM_TYPES = ("apparmor", "selinux")


def parse_lsm_profile(value: str | None) -> str | None:
    if not value:
        return None
    kind, sep, name = value.partition(":")
    if not sep or kind not in LSM_TYPES or not name:
        raise UsageError(f"invalid --lsm-profile {value!r}: use TYPE:NAME with TYPE apparmor or selinux")
    return value


class RestoreOptions(_ImagePaths, Record, frozen=True):
    """What ``runc restore``'s flags say, as one value (strings accepted as in CheckpointOptions)."""

    image_path: str | None = None  # default: ./checkpoint
    work_path: str | None = None  # default: the image path
    bundle: str | None = None  # default: the current directory (containers only)
    detach: bool = False
    pid_file: str | None = None
    tcp_established: bool = False
    ext_unix_sk: bool = False
    shell_job: bool = False
    file_locks: bool = False
    manage_cgroups_mode: CgroupMode | None = None
    empty_ns: Namespace = Namespace(0)
    no_subreaper: bool = False
    no_pivot: bool = False
    network_lock: NetworkLock | None = DEFAULT_NETWORK_LOCK
    log_level: int = 4
    extra_externals: tuple = ()
    fast_migrations: bool = False  # the cgroup warm-up (ext/warm.h): slows the host's forks meanwhile
    import_archive: str | None = None  # --import: a checkpoint archive (podman's layout)
    # runc's: the AF_UNIX socket that gets the master of a terminal container's new pty
    console_socket: str | None = None
    lazy_pages: bool = False  # memory comes from a lazy-pages daemon (criu lazy-pages) on demand
    auto_dedup: bool = False
    lsm_profile: str | None = None  # TYPE:NAME, the LSM profile the restored processes get
    lsm_mount_context: str | None = None  # the SELinux mount context of the restored mounts

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("manage_cgroups_mode", parse_cgroup_mode(self.manage_cgroups_mode))
        set_("empty_ns", parse_empty_ns(self.empty_ns))
        set_("network_lock", parse_network_lock(self.network_lock))
        set_("extra_externals", parse_externals(self.extra_externals))
        _normalize_paths(self, ("image_path", "work_path", "bundle", "pid_file", "import_archive",
                                "console_socket", "lsm_profile", "lsm_mount_context"))
        if self.import_archive and self.image_path:
            raise UsageError("--import and --image-path exclude each other (the images are in the archive)")
        if isinstance(self.log_level, bool) or not isinstance(self.log_level, int) or not 0 <= self.log_level <= 4:
            raise UsageError(f"Invalid log level {self.log_level!r} (an integer 0-4)")
        set_("lsm_profile", parse_lsm_profile(self.lsm_profile))
        if self.import_archive and self.lazy_pages:
            raise UsageError("--import restores from the archive's pages: not with --lazy-pages")

    def resolved_bundle(self) -> str:
        return os.path.abspath(self.bundle or os.getcwd())


def _normalize_paths(obj, names) -> None:
    for name in names:
        v = getattr(obj, name)
        if v is None:
            continue
        try:
            v = os.fsdecode(v)
        except TypeError:
            raise UsageError(f"--{name.replace('_', '-')} must be a path, not {type(v).__name__}") from None
        if "\0" in v:
            raise UsageError(f"--{name.replace('_', '-')} contains a NUL byte")
        object.__setattr__(obj, name, v or None)


def _check_export(o: CheckpointOptions) -> None:
    """--compress and the podman image go with --export only; the compression is one of three."""
    if not o.export:
        for name in ("compress", "ignore_rootfs", "podman_image", "podman_image_id"):
            if getattr(o, name):
                raise UsageError(f"--{name.replace('_', '-')} needs --export FILE")
        return
    if o.page_server is not None:
        raise UsageError("--export and --page-server exclude each other (the pages go to the page server)")
    if bool(o.podman_image) != bool(o.podman_image_id):
        raise UsageError("--podman-image and --podman-image-id go together: podman restores an archive on an "
                         "image it has, named by both")
    from .archive import check_compress

    object.__setattr__(o, "compress", check_compress(o.compress))
