"""CRIU itself: the binary libcriu runs, a libcriu options object bound to it (with the settings
checkpoint and restore share), one operation run, and what CRIU says of itself (version, kernel
features, `fastckpt check`)."""
from __future__ import annotations

import os

from . import _criu, cgroups, criu_proc, kdat, migration
from .constants import MIN_CRIU_VERSION
from .errors import CriuError, CriuNotFound, log_errors
from .options import NETNS_HOST, CheckpointOptions, auto_network_lock
from .privileges import require_privileges


def criu_binary() -> str:
    """The criu that libcriu will run: $FASTCKPT_CRIU, else `criu` from PATH."""
    name = criu_proc.criu_name()
    path = criu_proc.which(name)
    if not path:
        raise CriuNotFound(
            f"criu was not found ({name!r} on PATH={os.environ.get('PATH', '')}); "
            "install CRIU >= 4.1 (`make deps` does)"
        )
    return path


def new_opts(session=None) -> "_criu.Opts":
    """A fresh libcriu options object bound to the criu binary (or a session's warm CRIU service)."""
    binary = criu_binary()
    kdat.ensure(binary)
    opts = _criu.Opts()
    if os.geteuid() != 0:
        opts.set_unprivileged(True)  # CRIU's mode for CAP_CHECKPOINT_RESTORE without root
    if session is not None:
        opts.set_service_address(session.address)
    else:
        opts.set_service_binary(binary)
    return opts


def run_op(opts, op: str, session=None, *, log_path: str | None = None,
           timeout: float | None = None, setup=None, on_stop=None, watch=None,
           fresh: bool = False) -> tuple[int, int]:
    """Run one CRIU operation: in a session's warm service, or in a criu of our own
    spawning (its own session, under a watchdog); a watchdog stop is a CriuError."""
    if session is not None:
        return criu_proc.call(opts, op)
    r = criu_proc.run(opts, op, criu_binary(), log_path=log_path, timeout=timeout, setup=setup,
                      on_stop=on_stop, watch=watch, fresh=fresh)
    if isinstance(r, dict):
        return r
    ret, err, stopped = r
    if stopped:
        raise CriuError(op, ret, err, log_path, log_errors(log_path), detail=stopped)
    return ret, err


_version_cache: dict[str, tuple[int, int, int]] = {}


def criu_version() -> tuple[int, int, int]:
    """The version of the criu binary, asked once per process (and binary)."""
    path = criu_binary()
    if path not in _version_cache:
        ret, err = run_op(new_opts(), "version")
        if ret < 0:
            raise CriuError("version", ret, err)
        _version_cache[path] = (ret // 10000, ret // 100 % 100, ret % 100)
    return _version_cache[path]


def features() -> dict[str, bool]:
    """The kernel features CRIU finds (a CriuError when it cannot say)."""
    return run_op(new_opts(), "feature_check")


def check() -> dict[str, object]:
    """What `fastckpt check` reports: CRIU's path, version, `criu check` and kernel features."""
    path = criu_binary()
    require_privileges("check")  # CRIU's probes need them: refused in one line, as a checkpoint is
    version = criu_version()
    ret, err = run_op(new_opts(), "check")
    feats = features()
    notes = {}
    # userfaultfd alone does not make lazy pages work: CRIU's page server must size its pipe, and a
    # real lazy migration of a tiny process must work (probed once per boot, CRIU and limits)
    problem = migration.lazy_pages_problem(path) if feats.get("lazy_pages") else None
    if problem:
        feats["lazy_pages"] = False
        notes["lazy_pages"] = problem
    return {
        "criu": path,
        "version": ".".join(map(str, version)),
        "version_ok": version >= MIN_CRIU_VERSION,
        "check_ok": ret == 0,
        "libcriu": ".".join(map(str, _criu.LIBCRIU_VERSION)),
        "features": feats,
        "feature_notes": notes,
        "cgroups": cgroups.report(),
    }


def apply_common(opts: "_criu.Opts", o: CheckpointOptions, netns: str = NETNS_HOST,
                 dumped_with: str | None = "skip") -> str:
    """The options checkpoint and restore share; NETNS: what network namespace the target has.

    Returns the network lock used ("iptables", "nftables" or "skip")."""
    opts.set_log_level(o.log_level)
    opts.set_tcp_established(o.tcp_established)
    opts.set_ext_unix_sk(o.ext_unix_sk)
    opts.set_shell_job(o.shell_job)
    opts.set_file_locks(o.file_locks)
    if o.manage_cgroups_mode is not None:
        opts.set_manage_cgroups_mode(int(o.manage_cgroups_mode))
    if o.empty_ns:
        opts.set_empty_ns(int(o.empty_ns))
    lock = o.network_lock
    if lock is None:
        lock = auto_network_lock(netns, o.empty_ns, o.tcp_established, dumped_with)
    if lock is not None:
        opts.set_network_lock(int(lock))
    for key in o.extra_externals:
        opts.add_external(key)
    if o.auto_dedup:
        opts.set_auto_dedup(True)
    return lock.name.lower() if lock is not None else "iptables"  # None: CRIU's default


def apply_config_file(opts: "_criu.Opts", labels, work_path: str, lazy_pages: bool = False,
                      page_server=None) -> None:
    """runc's container-specific CRIU configuration file (org.criu.config, else /etc/criu/runc.conf);
    with LAZY_PAGES, one of fastckpt's own that adds `lazy-pages` to it (libcriu has no setter)."""
    path = migration.criu_config_file(labels) if labels is not None else None  # None: not a container
    if lazy_pages:
        path = migration.lazy_config_file(work_path, path, page_server)
    if path:
        opts.set_config_file(path)
