"""runc's global --debug, --log FILE and --log-format text|json, for fastckpt's own messages.

The command's one error line always goes to stderr; with --log it is also
written to FILE, in runc's format (logrus: ``time="..." level=error msg="..."``,
or one JSON object a line). --debug adds debug messages, to FILE or to stderr.
"""
from __future__ import annotations

import json
import os
import sys
import time

from .errors import UsageError

FORMATS = ("text", "json")

_debug = False
_path: str | None = None
_format = "text"


def configure(debug: bool = False, path: str | None = None, fmt: str = "text") -> None:
    """Check and take the global flags; a log file that cannot be opened is refused here."""
    global _debug, _path, _format
    if fmt not in FORMATS:
        raise UsageError(f'unknown log-format "{fmt}" (use text or json)')
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UsageError(f"cannot open log file {path}: {e.strerror}") from None
        os.close(fd)
    _debug, _path, _format = debug, path or None, fmt


def debugging() -> bool:
    return _debug


def _line(level: str, msg: str) -> str:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
    if _format == "json":
        return json.dumps({"level": level, "msg": msg, "time": stamp})
    return f"time={json.dumps(stamp)} level={level} msg={json.dumps(msg)}"


def _write(level: str, msg: str) -> None:
    line = _line(level, msg) + "\n"
    if _path:
        try:
            with open(_path, "a") as f:
                f.write(line)
            return
        except OSError:
            pass
    sys.stderr.write(line)


def debug(msg: str) -> None:
    if _debug:
        _write("debug", msg)


def error(msg: str) -> None:
    """An error, to the log file (the command prints its stderr line itself)."""
    if _path:
        _write("error", msg)
