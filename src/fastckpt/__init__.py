"""fastckpt: checkpoint and restore of runc containers and process trees, through libcriu.

Names are loaded on first use, so that `fastckpt --version` and the CLI's
argument errors cost no more than Python's start.
"""
from importlib import import_module

from ._version import __version__

#: the binding in use (one for now: the Cython extension over libcriu)
backend = "cython"

_EXPORTS = {
    "checkpoint": "engine", "check": "criu", "criu_version": "criu", "features": "criu",
    "CheckpointResult": "engine",
    "restore": "restorer", "RestoreResult": "restorer", "Session": "session",
    "CheckpointOptions": "options", "RestoreOptions": "options", "PageServer": "options",
    "CgroupMode": "constants", "LogLevel": "constants", "Namespace": "constants", "NetworkLock": "constants",
    "Error": "errors", "UsageError": "errors", "ContainerNotFound": "errors", "ProcessNotFound": "errors",
    "ContainerStateError": "errors",
    "CriuError": "errors", "CriuNotFound": "errors", "CriuVersionError": "errors",
    "FeatureUnavailable": "errors", "ImageDirError": "errors", "DiskFull": "errors", "Interrupted": "errors",
    "PermissionDenied": "errors", "ImageError": "errors", "DamagedImage": "errors",
    "read_stats": "images", "inspect": "inspection", "inspect_path": "inspection",
}

__all__ = ["__version__", "backend", *_EXPORTS]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastckpt' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~8 ms at start-up)
if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .constants import CgroupMode, LogLevel, Namespace, NetworkLock
    from .criu import check, criu_version, features
    from .engine import CheckpointResult, checkpoint
    from .errors import (ContainerNotFound, ContainerStateError, CriuError, CriuNotFound, CriuVersionError,
                         DamagedImage, Error, FeatureUnavailable, ImageDirError, ImageError, ProcessNotFound,
                         UsageError)
    from .images import read_stats
    from .inspection import inspect, inspect_path
    from .options import CheckpointOptions, PageServer, RestoreOptions
    from .restorer import RestoreResult, restore
    from .session import Session
