"""Waiting without timing assertions: every wait has a generous deadline and fails only when the thing
waited for never happens (a noisy, shared 2-core machine)."""
from __future__ import annotations

import time
from typing import Callable, Optional

WAIT = 20.0  # seconds: the deadline of every wait


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT, interval: float = 0.02):
    """Poll PREDICATE until it returns something truthy (returned); fail after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def read_int(path: str) -> Optional[int]:
    """The integer in PATH, or None while it is missing or being rewritten."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def wait_advancing(read: Callable[[], Optional[int]], what: str, timeout: float = WAIT) -> int:
    """Wait until the counter READ advances past its current value; returns the new value."""
    first = wait_until(lambda: read(), f"{what} to exist", timeout)
    return wait_until(lambda: (v := read()) is not None and v > first and v, f"{what} to advance past {first}",
                      timeout)


def proc_alive(pid: int) -> bool:
    """True if PID is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")
