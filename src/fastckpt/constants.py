"""CRIU's and the kernel's constants, as enums built from the C extension's ints."""
from __future__ import annotations

import enum

from . import _criu


class Namespace(enum.IntFlag):
    """CLONE_NEW* namespace flags (as used by empty_ns)."""

    NEWNS = _criu.CLONE_NEWNS
    NEWCGROUP = _criu.CLONE_NEWCGROUP
    NEWUTS = _criu.CLONE_NEWUTS
    NEWIPC = _criu.CLONE_NEWIPC
    NEWUSER = _criu.CLONE_NEWUSER
    NEWPID = _criu.CLONE_NEWPID
    NEWNET = _criu.CLONE_NEWNET
    NEWTIME = _criu.CLONE_NEWTIME


# Bare names, as in <sched.h>.
CLONE_NEWNS = Namespace.NEWNS
CLONE_NEWCGROUP = Namespace.NEWCGROUP
CLONE_NEWUTS = Namespace.NEWUTS
CLONE_NEWIPC = Namespace.NEWIPC
CLONE_NEWUSER = Namespace.NEWUSER
CLONE_NEWPID = Namespace.NEWPID
CLONE_NEWNET = Namespace.NEWNET
CLONE_NEWTIME = Namespace.NEWTIME


class CgroupMode(enum.IntEnum):
    """CRIU's cgroup management modes (--manage-cgroups-mode)."""

    IGNORE = _criu.CRIU_CG_MODE_IGNORE
    NONE = _criu.CRIU_CG_MODE_NONE
    PROPS = _criu.CRIU_CG_MODE_PROPS
    SOFT = _criu.CRIU_CG_MODE_SOFT
    FULL = _criu.CRIU_CG_MODE_FULL
    STRICT = _criu.CRIU_CG_MODE_STRICT
    DEFAULT = _criu.CRIU_CG_MODE_DEFAULT


class NetworkLock(enum.IntEnum):
    """How CRIU locks the network while dumping (--network-lock)."""

    IPTABLES = _criu.CRIU_NETWORK_LOCK_IPTABLES
    NFTABLES = _criu.CRIU_NETWORK_LOCK_NFTABLES
    SKIP = _criu.CRIU_NETWORK_LOCK_SKIP


class LogLevel(enum.IntEnum):
    ERROR = _criu.CRIU_LOG_ERROR
    WARN = _criu.CRIU_LOG_WARN
    INFO = _criu.CRIU_LOG_INFO
    DEBUG = _criu.CRIU_LOG_DEBUG


# The oldest CRIU that works on current kernels (split vvar area, 6.13+).
MIN_CRIU_VERSION = (4, 1, 0)
