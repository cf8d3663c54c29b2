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
    # argparse passes each of its strings through gettext's default domain, which looks for a catalogue
    # on disk for every one (~100 stats and locale's import: 1.5-3 ms of a command's start); Python
    # installs none, and fastckpt's own messages are English: argparse's stay as argparse wrote them.
    # Nor is gettext imported for it (~0.6 ms): argparse's `from gettext import gettext as _, ngettext`
    # takes these two from a stand-in, there only while argparse loads, in a process of one thread
    stand_in = None
    if "argparse" not in sys.modules and "gettext" not in sys.modules and _one_thread():
        stand_in = sys.modules["gettext"] = type(sys)("gettext")
        stand_in.gettext, stand_in.ngettext = _untranslated, _untranslated_n
    try:
        import argparse
    finally:
        if stand_in is not None and sys.modules.get("gettext") is stand_in:
            del sys.modules["gettext"]

    argparse._ = _untranslated
    argparse.ngettext = _untranslated_n

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


def _one_thread() -> bool:
    threading = sys.modules.get("threading")
    return threading is None or threading.active_count() == 1


def _untranslated(message: str) -> str:
    return message


def _untranslated_n(singular: str, plural: str, n: int) -> str:
    return singular if n == 1 else plural


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
    p.add_argument("--fast-migrations", action="store_true",
                   help="keep the kernel's cgroup migration lock warm while CRIU works (saves ~10 ms; every "
                        "fork and exit on the host waits behind it meanwhile; also FASTCKPT_WARM=1)")
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
    _add_export(p)
    p.add_argument("--parent-path", default="", help="path for previous criu image files in pre-dump "
                                                      "(relative to the image path)")
    p.add_argument("--pre-dump", action="store_true",
                   help="dump container's memory information only, leave the container running after this")
    p.add_argument("--lazy-pages", action="store_true", help="use userfaultfd to lazily restore memory pages")
    p.add_argument("--status-fd", default=None, metavar="FD",
                   help="criu writes \\0 to this FD once lazy-pages is ready")
    p.add_argument("--auto-dedup", action="store_true", help="enable auto deduplication of memory images")
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
    p.add_argument("--import", dest="import_archive", default=None, metavar="FILE",
                   help="restore from a checkpoint archive (podman's layout: podman's or fastckpt's --export); "
                        "the bundle is built in --bundle DIR (DIR/rootfs holds the image's files when the "
                        "archive carries none)")
    p.add_argument("--console-socket", default="", metavar="PATH",
                   help="path to an AF_UNIX socket which will receive a file descriptor referencing the "
                        "master end of the console's pseudoterminal")
    p.add_argument("--lazy-pages", action="store_true", help="use userfaultfd to lazily restore memory pages")
    p.add_argument("--auto-dedup", action="store_true", help="enable auto deduplication of memory images")
    p.add_argument("--lsm-profile", default="", metavar="TYPE:NAME",
                   help="Specify an LSM profile to be used during restore in the form of TYPE:NAME.")
    p.add_argument("--lsm-mount-context", default="", metavar="CONTEXT",
                   help="Specify an LSM mount context to be used during restore.")
    _add_shared(p, "path to criu image files for restoring")


def _add_export(p) -> None:
    p.add_argument("--export", default=None, metavar="FILE",
                   help="write the checkpoint as one archive FILE in podman's layout (with the whole rootfs)")
    p.add_argument("--compress", default=None, metavar="ALGO", help="archive compression: zstd (default), gzip, none")
    p.add_argument("--ignore-rootfs", action="store_true", help="leave the rootfs out of the archive")
    p.add_argument("--podman-image", default=None, metavar="NAME",
                   help="the image (podman has it) that `podman container restore --import` restores on")
    p.add_argument("--podman-image-id", default=None, metavar="ID", help="that image's id")


def _options(cls, args):
    """The options record from the parsed flags: each flag is the field of the same name."""
    return cls(**{name: getattr(args, name) for name in cls.fields() if hasattr(args, name)})


def _add_check(sub, full: bool = True) -> None:
    p = sub.add_parser("check", help="show CRIU's version and the kernel features it found")
    p.set_defaults(func=_cmd_check)
    if full:
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_inspect(sub, full: bool = True) -> None:
    p = sub.add_parser("inspect", help="show what a checkpoint holds (an image directory of fastckpt, runc or podman)",
                       description="Show a checkpoint's container, process tree, memory, files, sockets, mounts, "
                                   "network and CRIU's statistics, read from its images.")
    p.set_defaults(func=_cmd_inspect)
    if full:
        p.add_argument("path", metavar="PATH", help="the checkpoint's image directory")
        p.add_argument("--json", action="store_true", help="print it as JSON")


def _cmd_inspect(args) -> int:
    from . import inspection

    info = inspection.inspect_path(args.path)
    if args.json:
        import json

        text = json.dumps(info, indent=2)
    else:
        text = inspection.render(info)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `fastckpt inspect ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _add_page_server(sub, full: bool = True) -> None:
    from .migrate_cli import add_page_server

    add_page_server(sub, full)


def _add_migrate(sub, full: bool = True) -> None:
    from .migrate_cli import add_migrate

    add_migrate(sub, full)


_COMMANDS = {"checkpoint": _add_checkpoint, "restore": _add_restore, "check": _add_check, "inspect": _add_inspect,
             "page-server": _add_page_server, "migrate": _add_migrate}


# runc's global options that take a value (as separate words or --name=value)
_GLOBAL_VALUES = ("--root", "--log", "--log-format", "--criu", "--rootless")


def _requested(argv: list[str]) -> str | None:
    """The command ARGV asks for (the first word after the global options), if any."""
    words = iter(argv)
    for w in words:
        if w in _GLOBAL_VALUES:
            next(words, None)
        elif not w.startswith("-"):
            return w
    return None


def _global(argv: list[str], name: str) -> str | None:
    """The value of global option NAME (before the command word) in ARGV, if given."""
    words = iter(argv)
    for w in words:
        if w == name:
            return next(words, "")
        if w.startswith(name + "="):
            return w[len(name) + 1:]
        if w in _GLOBAL_VALUES:
            next(words, None)
        elif not w.startswith("-"):
            return None
    return None


def _runs_criu(argv: list[str]) -> bool:
    """A checkpoint or a restore (not its help)."""
    return "-h" not in argv and "--help" not in argv and _requested(argv) in ("checkpoint", "restore")


def _needs_fast_migrations(argv: list[str]) -> bool:
    """A restore (CRIU is moved into cgroups), or a container checkpoint (CRIU sets cgroups up)."""
    return _runs_criu(argv) and (_requested(argv) == "restore"
                                 or not any(a == "--pid" or a.startswith("--pid=") for a in argv))


def build_parser(argv: list[str] | None = None):
    """The parser; given ARGV, only the command asked for gets its arguments (argparse
    spends ~0.1 ms an argument, a fifth of the command's start-up for all of them), and a
    checkpoint's or a restore's plain line is parsed without argparse (_Quick)."""
    if argv is not None:
        quick = _Quick.parse(argv)
        if quick is not None:
            return quick
    wanted = _requested(argv) if argv is not None else None
    parser_class = _parser_class()
    parser = parser_class(prog="fastckpt", description="Checkpoint/restore of runc containers and process trees.")
    _add_globals(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)
    for name, add in _COMMANDS.items():
        add(sub, full=argv is None or wanted == name or wanted not in _COMMANDS)
    return parser


def _add_globals(parser) -> None:
    """runc's global options (before the command word)."""
    parser.add_argument("--version", action="version", version=f"fastckpt {__version__}")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help="root directory of runc's container state (default /run/runc)")
    parser.add_argument("--debug", action="store_true", help="enable debug logging")
    parser.add_argument("--log", default="", metavar="FILE",
                        help="set the log file to write fastckpt's messages to (default is stderr)")
    parser.add_argument("--log-format", default="text", metavar="FORMAT",
                        help="set the log format ('text' (default), or 'json')")
    parser.add_argument("--criu", default=None, metavar="PATH",
                        help="path to the criu binary used for checkpoint and restore (default: criu from PATH)")
    parser.add_argument("--systemd-cgroup", action="store_true",
                        help="runc's systemd cgroup driver: not supported (fastckpt manages cgroupfs cgroups)")
    parser.add_argument("--rootless", default="auto", metavar="VALUE",
                        help="runc's 'true', 'false' or 'auto' (accepted; fastckpt runs CRIU unprivileged "
                             "whenever it is not root)")


class _Quick:
    """A checkpoint's or a restore's command line parsed without argparse (whose import, parser and
    parse cost ~2 ms of the command's start), into what argparse would give for it, from the same
    add_argument() calls (recorded here). Only a plain line: options given whole (`--name VALUE`,
    `--name=VALUE`), each known where it stands, no value starting with "-" (`--name=--` is argparse's []),
    at most one container id, values of the right type; anything else (help, a usage error, `--`, short
    options run together...) is argparse's to parse and to answer."""

    def __init__(self):
        self.options: dict[str, tuple[str, str, object]] = {}  # option string -> (dest, kind, type)
        self.defaults: dict[str, object] = {}
        self.positionals: list[str] = []
        self.plain = True  # every argument is of a kind parsed here
        self.commands: dict[str, _Quick] = {}
        self.namespace = None

    # what _add_globals() and the _add_* functions call (argparse's names)
    def add_argument(self, *names, action=None, default=None, type=None, nargs=None, dest=None,
                     required=False, choices=None, **_):
        if action == "version":  # argparse's to print (its dest is in no namespace): unknown here
            return
        if required or choices is not None or action not in (None, "store", "store_true", "append"):
            self.plain = False
            return
        if not names[0].startswith("-"):
            self.plain = self.plain and nargs == "?" and type is None and not self.positionals
            self.positionals.append(names[0])
            self.defaults[names[0]] = default
            return
        if nargs is not None or (type is not None and isinstance(default, str)):
            self.plain = False
            return
        dest = dest or next((n for n in names if n.startswith("--")), names[0]).lstrip("-").replace("-", "_")
        kind = "flag" if action == "store_true" else action or "store"
        self.defaults[dest] = False if kind == "flag" and default is None else default
        for name in names:
            self.options[name] = (dest, kind, type)

    def set_defaults(self, **kwargs) -> None:
        self.defaults.update(kwargs)

    def add_parser(self, name: str, **_) -> "_Quick":
        self.commands[name] = _Quick()
        return self.commands[name]

    def parse_args(self, argv=None):
        return self.namespace

    @classmethod
    def parse(cls, argv: list[str]) -> "_Quick | None":
        command = _requested(argv)
        if command not in ("checkpoint", "restore"):
            return None
        top = cls()
        _add_globals(top)
        _COMMANDS[command](top, full=True)
        sub = top.commands[command]
        if not (top.plain and sub.plain):
            return None
        values = dict(top.defaults, command=None)
        spec, positionals = top, []
        words = iter(argv)
        for w in words:
            if not w or w == "-" or w == "--":
                return None
            if not w.startswith("-"):
                if spec is top:  # the command word (_requested's): the command's own arguments follow
                    if w != command:
                        return None
                    values["command"] = w
                    values.update(sub.defaults)
                    spec, positionals = sub, list(sub.positionals)
                elif positionals:
                    values[positionals.pop(0)] = w
                else:
                    return None  # an argument too many
                continue
            name, eq, value = w.partition("=") if w.startswith("--") else (w, "", "")
            dest, kind, convert = spec.options.get(name, (None, None, None))
            if dest is None or (kind == "flag" and eq):
                return None
            if kind == "flag":
                values[dest] = True
                continue
            if not eq:
                value = next(words, None)
            if value is None or value.startswith("-"):  # `--name=--`: argparse drops the "--" (value [])
                return None
            if convert is not None:
                try:
                    value = convert(value)
                except (TypeError, ValueError):
                    return None
            values[dest] = [*(values[dest] or []), value] if kind == "append" else value
        if spec is top:
            return None
        import types

        top.namespace = types.SimpleNamespace(**values)
        return top


def _print_result(res, args) -> None:
    """--json: the result; --print-stats: its statistics ({"criu": ..., "wall_time_ms": ...}); both: one object."""
    import json

    stats = res.stats() if getattr(args, "print_stats", False) else None  # protobuf is imported only here
    if args.json:
        out = res.asdict()
        if stats is not None:
            out["stats"] = stats
        print(json.dumps(out, indent=2, default=lambda o: o.asdict()))  # records inside (the archive)
    elif stats is not None:
        print(json.dumps(stats))


_BOOLS = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}  # Go's ParseBool


def _check_runc_globals(args) -> None:
    from .errors import UsageError

    if args.rootless != "auto" and args.rootless not in _BOOLS:
        raise UsageError(f"invalid --rootless value {args.rootless!r}: use true, false or auto")
    if args.systemd_cgroup:
        raise UsageError("--systemd-cgroup is not supported: fastckpt manages the container's cgroups itself "
                         "(cgroupfs), as runc does without it")


def _debug_options(options) -> None:
    from . import runlog

    if runlog.debugging():
        from . import criu_proc

        runlog.debug(f"criu: {criu_proc.which(criu_proc.criu_name()) or criu_proc.criu_name()}")
        runlog.debug(f"options: {options!r}")


def _debug_result(res, op: str) -> None:
    from . import runlog

    runlog.debug(f"{op} done in {res.wall_time * 1000:.1f} ms (pid {res.pid}); images {res.image_path}, "
                 f"CRIU's log {res.log_path}")


def _cmd_checkpoint(args) -> int:
    from . import engine, runc
    from .options import CheckpointOptions
    from .errors import Interrupted, UsageError

    if args.container_id and args.pid is not None:
        raise UsageError("give a container id or --pid, not both")
    if not args.container_id and args.pid is None:
        raise UsageError('"checkpoint" requires a container id (or --pid PID)')
    options = _options(CheckpointOptions, args)
    _debug_options(options)
    # an interruption inside engine.checkpoint() is its to describe; once it has returned, the checkpoint
    # is complete, whatever comes
    res = engine.checkpoint(args.container_id, options, pid=args.pid, root=args.root or runc.DEFAULT_ROOT)
    state = f"images in {res.image_path}"
    try:
        _debug_result(res, "checkpoint")
        what = f"container {res.container_id!r}" if res.container_id else f"process {res.pid}"
        state += f"; {what} " + ("was left running" if res.leave_running else "was checkpointed and is gone")
        _print_result(res, args)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after the checkpoint completed: {state}") from None
    return 0


def _cmd_restore(args) -> int:
    from . import restorer, runc
    from .errors import Interrupted
    from .options import RestoreOptions

    options = _options(RestoreOptions, args)
    _debug_options(options)
    # an interruption inside restorer.restore() is its to describe; once it has returned, the restore
    # is complete, whatever comes
    res = restorer.restore(args.container_id or None, options, root=args.root or runc.DEFAULT_ROOT)
    what = f"container {res.container_id!r}" if res.container_id else "the process tree"
    try:
        _debug_result(res, "restore")
        _print_result(res, args)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after the restore completed: {what} runs (pid {res.pid})") from None
    return res.exit_status or 0


_MISSING = {
    "mem_track": " (no soft-dirty memory tracking in this kernel: pre-dumps and incremental checkpoints "
                 "are unavailable)",
    "lazy_pages": " (no userfaultfd: lazy restores are unavailable)",
}


def _cmd_check(args) -> int:
    from . import criu

    info = criu.check()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
    else:
        print(f"criu: {info['criu']}")
        print(f"version: {info['version']}" + ("" if info["version_ok"] else " (too old: need >= 4.1)"))
        print(f"criu check: {'ok' if info['check_ok'] else 'FAILED (run `criu check` for details)'}")
        print(f"libcriu (compiled against): {info['libcriu']}")
        for name, present in info["features"].items():
            note = "" if present else (f" (unavailable: {info['feature_notes'][name]})"
                                       if name in info.get("feature_notes", {})
                                       else _MISSING.get(name, ""))
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
    try:  # paths are printed as they are, bytes that are not UTF-8 included (as os.fsdecode gave them)
        sys.stdout.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError):
        pass
    from .signals import install_cli_handlers, release_held

    install_cli_handlers()  # SIGTERM and SIGHUP stop fastckpt the way Ctrl-C does
    criu = _global(argv, "--criu")
    if criu is not None:  # runc's --criu: which criu runs (before the spare one is started)
        from . import criu_proc

        if not criu or not criu_proc.which(criu):
            print(f"fastckpt: --criu {criu!r}: no such executable", file=sys.stderr)
            return EXIT_USAGE
        os.environ[criu_proc.CRIU_ENV] = criu
    spare = _runs_criu(argv)
    criu_proc = None
    try:
        # the launcher held signals back since before Python started: one that came meanwhile is taken
        # here, where it gets its one line (`python -m fastckpt` has them unblocked already)
        release_held()
        if spare:
            from . import criu_proc
        if _needs_fast_migrations(argv):
            from .cgroups import prime_fast_migrations

            # opted in (--fast-migrations, FASTCKPT_WARM=1): warm while the parser is built and the modules load
            prime_fast_migrations("--fast-migrations" in argv)
        if spare:
            criu_proc.prespawn()  # CRIU's exec and start-up overlap ours; it goes if the command never uses it
        return _main(argv)
    except KeyboardInterrupt:  # before the command began (while its modules load and its line is parsed)
        print(f"fastckpt: interrupted before the {_requested(argv) or 'command'} began: nothing was done",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if criu_proc is not None:
            criu_proc.discard_spare()


def _main(argv: list[str]) -> int:
    if argv == ["--version"]:  # what argparse's version action prints, without argparse (~5 ms of ~15)
        print(f"fastckpt {__version__}")
        return 0
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: an exit code, for callers of main()
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    from .errors import CriuError, Error, Interrupted, UsageError
    from . import runlog

    try:
        runlog.configure(args.debug, args.log, args.log_format)
        _check_runc_globals(args)
        runlog.debug(f"fastckpt {__version__}: {' '.join(argv)}")
        return args.func(args)
    except Error as e:  # one line; CRIU's own error lines follow when CRIU failed
        print(f"fastckpt: {e.details if isinstance(e, CriuError) else e}", file=sys.stderr)
        runlog.error(str(e))
        if isinstance(e, UsageError):
            return EXIT_USAGE
        return EXIT_INTERRUPTED if isinstance(e, Interrupted) else EXIT_ERROR
    except KeyboardInterrupt:
        # checkpoint and restore say themselves what an interruption once they began left: this one
        # came before (while their modules loaded, their options were checked)
        command = _requested(argv)
        if command in ("checkpoint", "restore"):
            print(f"fastckpt: interrupted before the {command} began: nothing was done", file=sys.stderr)
        else:
            print("fastckpt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        print(f"fastckpt: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return EXIT_ERROR


def run() -> None:
    """The console script: main(), then exit at once (Python's own tear-down adds ~4 ms
    to every command and has nothing left to do: fastckpt flushes its output first).

    The launcher (ext/launch.c) starts Python with its cyclic garbage collector off (its passes over
    the objects of the modules being loaded: ~2 ms of a command's start); a checkpoint or a restore
    keeps it off (what they make is freed as it goes, or at their os._exit()), any other command
    runs with it on."""
    if not _runs_criu(sys.argv[1:]):
        import gc

        gc.enable()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
