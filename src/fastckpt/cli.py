"""The `fastckpt` command: runc's checkpoint flags over fastckpt's API.

main(argv) -> exit code.  Every error is one line on stderr (CRIU's own
error lines follow it when CRIU failed) and a non-zero exit, never a
traceback.
"""
from __future__ import annotations

import os
import sys

from ._version import __version__

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser_class():
    """argparse's parser, as fastckpt wants it (argparse itself is imported here: a restore
    starts its cgroup warm-up before paying for argparse's ~5 ms of imports)."""
    global _PARSER
    if _PARSER is not None:
        return _PARSER
    import argparse

    class _Formatter(argparse.HelpFormatter):
        """argparse's help formatter, without its import of shutil (~1.7 ms) for the width."""

        def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
            if width is None:
                width = _columns() - 2
            super().__init__(prog, indent_increment, max_help_position, width)

    class _Parser(argparse.ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("allow_abbrev", False)  # as runc: --pid is not --pid-file
            kwargs.setdefault("formatter_class", _Formatter)
            super().__init__(*args, **kwargs)

        def error(self, message):  # one line, like every other error
            self.exit(EXIT_USAGE, f"fastckpt: {message} (see `{self.prog} --help`)\n")

    _PARSER = _Parser
    return _Parser


_PARSER = None


def _columns() -> int:
    """The terminal's width, as shutil.get_terminal_size() finds it ($COLUMNS, stdout, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _add_shared(p, image_help: str) -> None:
    """The flags checkpoint and restore share, with runc's names and meanings."""
    p.add_argument("--image-path", default="", help=f"{image_help} (default ./checkpoint)")
    p.add_argument("--work-path", default="", help="path for saving work files and logs (default: image path)")
    p.add_argument("--tcp-established", action="store_true", help="allow open tcp connections")
    p.add_argument("--ext-unix-sk", action="store_true", help="allow external unix sockets")
    p.add_argument("--shell-job", action="store_true", help="allow shell jobs")
    p.add_argument("--file-locks", action="store_true", help="handle file locks, for safety")
    p.add_argument("--manage-cgroups-mode", default="", metavar="MODE",
                   help="cgroups mode: 'soft' (default), 'full', 'strict' or 'ignore'")
    p.add_argument("--empty-ns", action="append", default=[], metavar="NS",
                   help="create a namespace, but don't restore its properties (network)")
    p.add_argument("--network-lock", default="", metavar="METHOD",
                   help="how CRIU locks the network while it works: auto (default: nftables for a "
                        "network namespace of the container's own, CRIU's iptables otherwise, skip with "
                        "--empty-ns network), nftables, iptables or skip")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--print-stats", action="store_true",
                   help="print CRIU's statistics (times in microseconds, pages) and fastckpt's wall time as JSON")


def _add_checkpoint(sub, full: bool = True) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint a running container (or a process tree with --pid)",
                       description="Save the state of a running container, like `runc checkpoint`.")
    p.set_defaults(func=_cmd_checkpoint)
    if not full:
        return
    p.add_argument("container_id", nargs="?", metavar="CONTAINER_ID")
    p.add_argument("--pid", type=int, help="checkpoint the process tree rooted at PID instead of a container")
    p.add_argument("--leave-running", action="store_true", help="leave the process running after checkpointing")
    p.add_argument("--page-server", default="", metavar="ADDRESS:PORT", help="ADDRESS:PORT of the page server")
    _add_shared(p, "path for saving criu image files")


def _add_restore(sub, full: bool = True) -> None:
    p = sub.add_parser("restore", help="restore a container (or a process tree) from a checkpoint",
                       description="Restore a container from a checkpoint, like `runc restore`; "
                                   "without CONTAINER_ID, restore a process tree checkpointed with --pid.")
    p.set_defaults(func=_cmd_restore)
    if not full:
        return
    p.add_argument("container_id", nargs="?", metavar="CONTAINER_ID")
    p.add_argument("-b", "--bundle", default="", help="path to the root of the bundle directory (default: current)")
    p.add_argument("-d", "--detach", action="store_true", help="detach from the container's process")
    p.add_argument("--pid-file", default="", help="file to write the process id to")
    p.add_argument("--no-subreaper", action="store_true", help="disable the use of the subreaper")
    p.add_argument("--no-pivot", action="store_true", help="do not use pivot root to jail the process")
    _add_shared(p, "path to criu image files for restoring")


def _options(cls, args):
    """The options record from the parsed flags: each flag is the field of the same name."""
    return cls(**{name: getattr(args, name) for name in cls.fields() if hasattr(args, name)})


def _add_check(sub, full: bool = True) -> None:
    p = sub.add_parser("check", help="show CRIU's version and the kernel features it found")
    p.set_defaults(func=_cmd_check)
    if full:
        p.add_argument("--json", action="store_true", help="print the result as JSON")


_COMMANDS = {"checkpoint": _add_checkpoint, "restore": _add_restore, "check": _add_check}


def _requested(argv: list[str]) -> str | None:
    """The command ARGV asks for (the first word after the global options), if any."""
    words = iter(argv)
    for w in words:
        if w == "--root":
            next(words, None)
        elif not w.startswith("-"):
            return w
    return None


def _runs_criu(argv: list[str]) -> bool:
    """A checkpoint or a restore (not its help)."""
    return "-h" not in argv and "--help" not in argv and _requested(argv) in ("checkpoint", "restore")


def _needs_fast_migrations(argv: list[str]) -> bool:
    """A restore (CRIU is moved into cgroups), or a container checkpoint (CRIU sets cgroups up)."""
    return _runs_criu(argv) and (_requested(argv) == "restore" or "--pid" not in argv)


def build_parser(argv: list[str] | None = None):
    """The parser; given ARGV, only the command asked for gets its arguments (argparse
    spends ~0.1 ms an argument, a fifth of the command's start-up for all of them)."""
    wanted = _requested(argv) if argv is not None else None
    parser_class = _parser_class()
    parser = parser_class(prog="fastckpt", description="Checkpoint/restore of runc containers and process trees.")
    parser.add_argument("--version", action="version", version=f"fastckpt {__version__}")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help="root directory of runc's container state (default /run/runc)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)
    for name, add in _COMMANDS.items():
        add(sub, full=argv is None or wanted == name or wanted not in _COMMANDS)
    return parser


def _report(res, args, op: str, state: str) -> None:
    """Print the result; an interruption now changes nothing done, and says so."""
    try:
        _print_result(res, args)
    except KeyboardInterrupt:
        from .errors import Interrupted

        raise Interrupted(f"interrupted after the {op} completed: {state}") from None


def _print_result(res, args) -> None:
    """--json: the result; --print-stats: its statistics ({"criu": ..., "wall_time_ms": ...}); both: one object."""
    import json

    stats = res.stats() if getattr(args, "print_stats", False) else None  # protobuf is imported only here
    if args.json:
        out = res.asdict()
        if stats is not None:
            out["stats"] = stats
        print(json.dumps(out, indent=2))
    elif stats is not None:
        print(json.dumps(stats))


def _cmd_checkpoint(args) -> int:
    from . import engine, runc
    from .options import CheckpointOptions
    from .errors import UsageError

    if args.container_id and args.pid is not None:
        raise UsageError("give a container id or --pid, not both")
    if not args.container_id and args.pid is None:
        raise UsageError('"checkpoint" requires a container id (or --pid PID)')
    options = _options(CheckpointOptions, args)
    res = engine.checkpoint(args.container_id, options, pid=args.pid, root=args.root or runc.DEFAULT_ROOT)
    what = f"container {res.container_id!r}" if res.container_id else f"process {res.pid}"
    _report(res, args, "checkpoint", f"images in {res.image_path}; {what} "
            + ("was left running" if res.leave_running else "was checkpointed and is gone"))
    return 0


def _cmd_restore(args) -> int:
    from . import restorer, runc
    from .options import RestoreOptions

    options = _options(RestoreOptions, args)
    res = restorer.restore(args.container_id or None, options, root=args.root or runc.DEFAULT_ROOT)
    what = f"container {res.container_id!r}" if res.container_id else "the process tree"
    _report(res, args, "restore", f"{what} runs (pid {res.pid})")
    return res.exit_status or 0


_MISSING = {
    "mem_track": " (no soft-dirty memory tracking in this kernel: pre-dumps and incremental checkpoints "
                 "are unavailable)",
    "lazy_pages": " (no userfaultfd: lazy restores are unavailable)",
}


def _cmd_check(args) -> int:
    from . import engine

    info = engine.check()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
    else:
        print(f"criu: {info['criu']}")
        print(f"version: {info['version']}" + ("" if info["version_ok"] else " (too old: need >= 4.1)"))
        print(f"criu check: {'ok' if info['check_ok'] else 'FAILED (run `criu check` for details)'}")
        print(f"libcriu (compiled against): {info['libcriu']}")
        for name, present in info["features"].items():
            note = "" if present else _MISSING.get(name, "")
            print(f"feature {name}: {'yes' if present else 'no'}{note}")
        cg = info["cgroups"]
        print(f"cgroup layout: {cg['layout']}" + (f" (controllers: {' '.join(cg['controllers']) or 'none'})"
                                                  if "controllers" in cg else ""))
        print("container checkpoint/restore: " + (f"yes ({cg['how']})" if cg["containers"] else
                                                   f"no ({cg['why_not']})"))
    return 0 if info["version_ok"] and info["check_ok"] else EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    from .signals import install_cli_handlers

    install_cli_handlers()  # SIGTERM and SIGHUP stop fastckpt the way Ctrl-C does
    spare = _runs_criu(argv)
    if spare:
        from . import criu_proc
    try:
        if _needs_fast_migrations(argv):
            from .cgroups import prime_fast_migrations

            prime_fast_migrations()  # warm while the parser is built and the command's modules load
        if spare:
            criu_proc.prespawn()  # CRIU's exec and start-up overlap ours; it goes if the command never uses it
        return _main(argv)
    except KeyboardInterrupt:  # before the command began (while its modules load and its line is parsed)
        print(f"fastckpt: interrupted before the {_requested(argv) or 'command'} began: nothing was done",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if spare:
            criu_proc.discard_spare()


def _main(argv: list[str]) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: an exit code, for callers of main()
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    from .errors import CriuError, Error, Interrupted, UsageError
    from . import criu_proc

    criu_proc.MUTE_LIBCRIU_STDERR = True  # errors are fastckpt's one line, not libcriu's perror()s
    try:
        return args.func(args)
    except Error as e:  # one line; CRIU's own error lines follow when CRIU failed
        print(f"fastckpt: {e.details if isinstance(e, CriuError) else e}", file=sys.stderr)
        if isinstance(e, UsageError):
            return EXIT_USAGE
        return EXIT_INTERRUPTED if isinstance(e, Interrupted) else EXIT_ERROR
    except KeyboardInterrupt:
        print("fastckpt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        print(f"fastckpt: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return EXIT_ERROR


def run() -> None:
    """The console script: main(), then exit at once (Python's own tear-down adds ~4 ms
    to every command and has nothing left to do: fastckpt flushes its output first)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
