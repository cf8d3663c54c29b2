"""Unit tests of the `fastckpt` command's argument handling (no root: nothing reaches CRIU)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import ckpt_support as cs
from fastckpt import cli


def call_main(argv):
    """cli.main(ARGV) -> exit code; argparse's own errors exit through SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("fastckpt: "), err
    return lines[0]


@pytest.mark.parametrize("argv, needle", [
    (["checkpoint", "--page-server", "foo", "ct"], "Use --page-server ADDRESS:PORT to specify page server"),
    (["checkpoint", "--page-server", "a:b:c", "ct"], "Use --page-server ADDRESS:PORT to specify page server"),
    (["checkpoint", "--page-server", "host:abc", "ct"], "Invalid port number"),
    (["checkpoint", "--page-server", "host:0", "ct"], "Invalid port number"),
    (["checkpoint", "--page-server", "host:65536", "ct"], "Invalid port number"),
    (["checkpoint", "--manage-cgroups-mode", "bogus", "ct"], "Invalid manage cgroups mode 'bogus'"),
    (["checkpoint", "--empty-ns", "pid", "ct"], "namespace 'pid' is not supported by --empty-ns"),
    (["checkpoint", "--empty-ns", "network", "--empty-ns", "ipc", "ct"], "'ipc' is not supported"),
    (["checkpoint", "--network-lock", "x", "ct"], "Invalid network lock method 'x'"),
    (["checkpoint"], '"checkpoint" requires a container id (or --pid PID)'),
    (["checkpoint", "--pid", "123", "ct"], "not both"),
    (["checkpoint", "--pid", "1"], "cannot checkpoint pid 1"),
    (["checkpoint", "bad/id"], "invalid container id 'bad/id'"),
    (["checkpoint", "--image-path", "/tmp/x\0y", "ct"], "NUL"),
])
def test_usage_errors_exit_2_with_one_line(capsys, tmp_path, argv, needle):
    code = call_main(["--root", str(tmp_path)] + argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert needle in one_line(err)
    assert out == ""


@pytest.mark.parametrize("argv, needle", [
    (["checkpoint", "--pid", "abc"], "argument --pid: invalid int value: 'abc'"),
    (["checkpoint", "--bogus", "ct"], "unrecognized arguments: --bogus"),
    (["checkpoint", "a", "b"], "unrecognized arguments: b"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["checkpoint", "--page-server"], "expected one argument"),
])
def test_argparse_errors_exit_2_with_one_line(capsys, argv, needle):
    code = call_main(argv)
    _, err = capsys.readouterr()
    assert code == 2
    assert needle in one_line(err)


def test_no_command_prints_usage(capsys):
    assert call_main([]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("usage: fastckpt")


def test_version(capsys):
    from fastckpt import __version__
    assert call_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastckpt {__version__}"


def test_unknown_container_exits_1(capsys, tmp_path):
    code = call_main(["--root", str(tmp_path), "checkpoint", "--image-path", str(tmp_path / "img"), "nope"])
    _, err = capsys.readouterr()
    assert code == 1
    line = one_line(err)
    assert "'nope'" in line and "does not exist" in line
    assert not (tmp_path / "img").exists()


def test_dead_pid_exits_1(capsys, tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    code = call_main(["checkpoint", "--pid", str(p.pid), "--image-path", str(tmp_path / "img")])
    _, err = capsys.readouterr()
    assert code == 1
    assert f"no running process with pid {p.pid}" in one_line(err)


def test_created_state_exits_1(capsys, tmp_path):
    cs.write_fake_state(tmp_path, "ct", fifo=True)
    code = call_main(["--root", str(tmp_path), "checkpoint", "--image-path", str(tmp_path / "img"), "ct"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "created state" in one_line(err)


def test_help_lists_runc_flags(capsys):
    assert call_main(["checkpoint", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--image-path", "--work-path", "--leave-running", "--tcp-established", "--ext-unix-sk",
                 "--shell-job", "--page-server", "--file-locks", "--manage-cgroups-mode", "--empty-ns",
                 "--network-lock", "--json", "--pid"):
        assert flag in out


# --- the real command, as a subprocess --------------------------------------------------

@pytest.mark.parametrize("args, code, needle", [
    (["checkpoint", "--page-server", "foo", "ct"], 2, "Use --page-server ADDRESS:PORT"),
    (["checkpoint", "--pid", "abc"], 2, "invalid int value"),
    (["checkpoint", "--manage-cgroups-mode", "bogus", "ct"], 2, "Invalid manage cgroups mode"),
    (["checkpoint", "nope"], 1, "'nope' does not exist"),
])
def test_command_line(tmp_path, args, code, needle):
    proc = cs.fastckpt("--root", str(tmp_path), *args, cwd=str(tmp_path))
    cs.assert_error(proc, code, needle)
    assert proc.stdout == ""
    assert not (tmp_path / "checkpoint").exists()


def test_console_script_matches_module(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "fastckpt")
    if not os.path.exists(exe):
        pytest.skip("the fastckpt console script is not installed next to this python")
    proc = subprocess.run([exe, "--root", str(tmp_path), "checkpoint", "--empty-ns", "pid", "x"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    cs.assert_error(proc, 2, "'pid' is not supported by --empty-ns")


# command lines the quick parser takes (build_parser(argv) parses them without argparse)...
QUICK = [
    ["checkpoint", "ct"],
    ["--root", "/r", "checkpoint", "--leave-running", "--image-path", "/i", "ct"],
    ["--root=/r", "--debug", "--log", "/l", "--log-format", "json", "--criu", "/c", "--rootless", "true",
     "checkpoint", "--image-path=/i", "--work-path", "/w", "--tcp-established", "--ext-unix-sk", "--shell-job",
     "--file-locks", "--manage-cgroups-mode", "full", "--empty-ns", "network", "--empty-ns=ipc",
     "--network-lock", "skip", "--fast-migrations", "--json", "--print-stats", "ct"],
    ["checkpoint", "--pid", "123", "--image-path", "", "--page-server", "10.0.0.1:27", "--parent-path", "p",
     "--pre-dump", "--lazy-pages", "--status-fd", "3", "--auto-dedup"],
    ["checkpoint", "--pid= 42 "],
    ["checkpoint", "--export", "/x.tar", "--compress", "gzip", "--ignore-rootfs", "--podman-image", "img",
     "--podman-image-id", "id", "ct", "--leave-running"],
    ["checkpoint", "--image-path", "a b", "--image-path", "last", "restore"],
    ["restore", "-d", "-b", "/b", "--image-path", "/i", "ct"],
    ["--root", "/r", "restore", "--detach", "--bundle=/b", "--pid-file", "/p", "--no-subreaper", "--no-pivot",
     "--import", "/a.tar", "--console-socket", "/s", "--lazy-pages", "--auto-dedup", "--lsm-profile", "a:b",
     "--lsm-mount-context", "c", "--empty-ns", "network", "ct"],
    ["restore", "--image-path", "/i"],
    ["restore"],
]
# ...and lines it leaves to argparse (help, usage errors, forms it does not take)
NOT_QUICK = [
    ["--version"], ["check"], ["inspect", "x"], ["checkpoint", "-h"], ["checkpoint", "--help"], ["-h", "checkpoint"],
    ["checkpoint", "--bogus", "ct"], ["checkpoint", "a", "b"], ["checkpoint", "--page-server"],
    ["checkpoint", "--pid", "abc"], ["checkpoint", "--pid", "-5"], ["checkpoint", "--image-path", "-x", "ct"],
    ["checkpoint", "--leave-running=1", "ct"], ["checkpoint", "--", "ct"], ["checkpoint", "-", "ct"],
    ["checkpoint", ""], ["restore", "-db", "/b", "ct"], ["restore", "-b=/b", "ct"], ["checkpoint", "--root", "/r", "ct"],
    ["--image-path", "/i", "checkpoint", "ct"], ["--root", "/r"], ["checkpoint", "--image", "/i", "ct"],
    ["--version", "checkpoint", "ct"],
    # argparse drops a value "--" given as `--name=--` (the value is []): argparse's
    ["--root=--", "restore"], ["checkpoint", "--image-path=--", "ct"], ["restore", "--bundle=--", "ct"],
    ["checkpoint", "--empty-ns=--", "ct"], ["checkpoint", "--image-path=-x", "ct"],
]


def _argparse_namespace(argv, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(cli._Quick, "parse", classmethod(lambda cls, argv: None))
        return cli.build_parser(argv).parse_args(argv)


@pytest.mark.parametrize("argv", QUICK)
def test_quick_parse_gives_what_argparse_gives(argv, monkeypatch):
    quick = cli._Quick.parse(argv)
    assert quick is not None, f"{argv} is left to argparse"
    assert vars(cli.build_parser(argv).parse_args(argv)) == vars(quick.namespace)
    assert vars(quick.namespace) == vars(_argparse_namespace(argv, monkeypatch))


@pytest.mark.parametrize("argv", NOT_QUICK)
def test_quick_parse_leaves_the_rest_to_argparse(argv):
    assert cli._Quick.parse(argv) is None


def test_quick_parse_agrees_with_argparse_on_random_lines(monkeypatch):
    """Seeded random checkpoint and restore lines of known, abbreviated, `=`-joined and unknown options,
    odd values ("", "--", "-1", " 7 ", unicode...) in every position: whenever the quick parser takes one,
    argparse gives the same namespace."""
    import random

    rnd = random.Random(13)
    globals_ = ["--root", "--debug", "--log", "--log-format", "--criu", "--rootless", "--systemd-cgroup", "--version",
                "-h"]
    shared = ["--image-path", "--work-path", "--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks",
              "--manage-cgroups-mode", "--empty-ns", "--network-lock", "--fast-migrations", "--json", "--print-stats"]
    options = {"checkpoint": ["--pid", "--leave-running", "--page-server", "--export", "--compress", "--ignore-rootfs",
                              "--podman-image", "--podman-image-id", "--parent-path", "--pre-dump", "--lazy-pages",
                              "--status-fd", "--auto-dedup"] + shared,
               "restore": ["-b", "--bundle", "-d", "--detach", "--pid-file", "--no-subreaper", "--no-pivot", "--import",
                           "--console-socket", "--lazy-pages", "--auto-dedup", "--lsm-profile", "--lsm-mount-context"]
               + shared}
    values = ["ct", "", "1", "-1", " 7 ", "a=b", "--", "-", "--x", "x y", "-x y", "\u00fc", "\u0663", "1_0", "0x1",
              "restore", "checkpoint", "-d", "-db", "=", "\u2014x", "--pid=1"]

    def word(names):
        r = rnd.random()
        if r < 0.45:
            return rnd.choice(names)
        name = rnd.choice(names)
        if r < 0.6:
            return f"{name}={rnd.choice(values)}"
        if r < 0.7:
            return name[:rnd.randint(1, len(name))]  # abbreviated (argparse: allow_abbrev=False)
        return rnd.choice(values)

    taken = 0
    for _ in range(4000):
        command = rnd.choice(["checkpoint", "restore"])
        argv = ([word(globals_) for _ in range(rnd.randint(0, 3))] + [command]
                + [word(options[command]) for _ in range(rnd.randint(0, 6))])
        quick = cli._Quick.parse(argv)
        if quick is None:
            continue
        taken += 1
        assert vars(quick.namespace) == vars(_argparse_namespace(argv, monkeypatch)), argv
    assert taken > 150  # the sample reaches the quick parser


@pytest.mark.parametrize("argv, gc_on", [
    (["--version"], True), (["checkpoint", "--help"], True), (["inspect", "/nonexistent"], True),
    (["checkpoint", "ct"], False), (["restore", "-d", "ct"], False),
])
def test_run_keeps_the_gc_off_only_for_a_checkpoint_or_restore(argv, gc_on, monkeypatch, tmp_path, capsys):
    """The launcher starts Python with its cyclic GC off; cli.run() turns it on again but for a checkpoint
    or a restore (here: of a container that does not exist, in an empty runc root)."""
    import gc

    exits = []
    monkeypatch.setattr(sys, "argv", ["fastckpt", "--root", str(tmp_path)] + argv)
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    was = gc.isenabled()
    gc.disable()
    try:
        cli.run()
        assert gc.isenabled() is gc_on
    finally:
        if was:
            gc.enable()
    assert len(exits) == 1 and (exits[0] == 0) is (argv[0] == "--version" or "--help" in argv), \
        (exits, capsys.readouterr())


@pytest.mark.parametrize("argv, needs", [
    (["restore", "c1"], True),
    (["checkpoint", "c1"], True),
    (["checkpoint", "--pid", "7"], False),
    (["checkpoint", "--pid=7"], False),
    (["--root", "/r", "checkpoint", "--pid=7", "--leave-running"], False),
    (["--version"], False),
])
def test_fast_migrations_are_primed_only_for_a_container_or_a_restore(argv, needs):
    """The opt-in warm-up starts before argparse for what moves tasks between cgroups: a restore, or a
    checkpoint of a container (CRIU sets its cgroups up); a process tree's checkpoint (--pid N or --pid=N)
    needs none."""
    assert cli._needs_fast_migrations(argv) is needs
