"""fastckpt: checkpoint and restore of runc containers and process trees, through libcriu."""
from ._version import __version__
from . import _criu
from .constants import CgroupMode, LogLevel, Namespace, NetworkLock
from .engine import CheckpointResult, check, checkpoint, criu_version, features
from .errors import (ContainerNotFound, ContainerStateError, CriuError, CriuNotFound, CriuVersionError,
                     Error, FeatureUnavailable, ImageDirError, UsageError)
from .options import CheckpointOptions, PageServer, RestoreOptions
from .restorer import RestoreResult, restore

#: the binding in use (one for now: the Cython extension over libcriu)
backend = "cython"

__all__ = [
    "__version__", "backend",
    "checkpoint", "restore", "check", "criu_version", "features",
    "CheckpointOptions", "CheckpointResult", "RestoreOptions", "RestoreResult", "PageServer",
    "CgroupMode", "LogLevel", "Namespace", "NetworkLock",
    "Error", "UsageError", "ContainerNotFound", "ContainerStateError", "CriuError", "CriuNotFound",
    "CriuVersionError", "FeatureUnavailable", "ImageDirError",
]
