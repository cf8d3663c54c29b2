"""The privileges CRIU needs, refused early and clearly when fastckpt lacks them."""
from __future__ import annotations

import os

from .errors import PermissionDenied


CAP_SYS_ADMIN = 21
CAP_CHECKPOINT_RESTORE = 40


def require_privileges(op: str) -> None:
    """CRIU needs root, or CAP_CHECKPOINT_RESTORE with CAP_SYS_ADMIN: refuse early and clearly."""
    if os.geteuid() == 0:
        return
    eff = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    eff = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    need = (1 << CAP_SYS_ADMIN) | (1 << CAP_CHECKPOINT_RESTORE)
    if eff & need != need:
        raise PermissionDenied(f"{op} needs root (or the capabilities CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN); "
                               f"fastckpt runs as uid {os.geteuid()} without them")
