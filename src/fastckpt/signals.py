"""Keeping Ctrl-C and SIGTERM out of the middle of a checkpoint or restore.

While CRIU works, SIGINT, SIGTERM, SIGHUP and SIGQUIT are blocked in the
calling thread: the criu process that libcriu forks from it inherits the
mask, so a Ctrl-C sent to the whole process group does not kill CRIU half-way
(a dump killed half-way can leave a container frozen or half-dumped).  The
signals stay pending and are taken once the operation and its clean-up are
over; the caller then learns which of the two states it is in.
"""
from __future__ import annotations

import _signal

DEFERRED = {_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT}


def _let_handlers_run() -> None:
    """A Python-level call: pending signal handlers run at this point."""


class deferred:
    """``with deferred():`` the block runs with the signals above blocked."""

    __slots__ = ("old",)

    def __enter__(self) -> "deferred":
        self.old = _signal.pthread_sigmask(_signal.SIG_BLOCK, DEFERRED)
        return self

    def __exit__(self, et, ev, tb) -> bool:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, self.old)
        _let_handlers_run()
        return False


def raise_keyboard_interrupt(signum, frame):
    """A SIGTERM/SIGHUP handler for the CLI: stop the way Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


def _swallowed(unraisable) -> None:
    """sys.unraisablehook: a signal's KeyboardInterrupt that hit a destructor or a weakref callback (an
    import's module-lock callback, say) is swallowed by Python, with a traceback, and the command would go
    on as if nothing came: it is sent again instead (SIGINT; pending while signals are held back), to
    interrupt the command where it can."""
    import os
    import sys

    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        import _thread

        # by another thread, not waited for: sent from here, it would be taken (and swallowed) here again
        _thread.start_new_thread(os.kill, (os.getpid(), _signal.SIGINT))
        return

    sys.__unraisablehook__(unraisable)


def install_cli_handlers() -> None:
    import sys

    for sig in (_signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, raise_keyboard_interrupt)
    sys.unraisablehook = _swallowed


def release_held() -> None:
    """Unblock the signals above: the `fastckpt` launcher (ext/launch.c) blocks them before Python
    starts, so that one that comes meanwhile waits (pending) for the CLI to handle it; it is taken here."""
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, DEFERRED)
