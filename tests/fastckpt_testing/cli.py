"""The one command runner and the one error asserter of the tests.

A command runs with stdin on /dev/null and stdout/stderr in unnamed files, never pipes: a container or
a straggling criu that inherits them could keep a pipe open for ever.  ``fastckpt ...`` runs as a user
runs it, ``python -m fastckpt`` (or, with SLOW, through a main() whose chosen functions wait for a
signal first).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

CLI_TIMEOUT = 120.0


@dataclass
class Result:
    """What a command did: exit code, stdout, stderr (text)."""

    args: List[str]
    returncode: int
    stdout: str
    stderr: str
    pid: int = 0  # of the command's process

    def __str__(self) -> str:
        return f"{' '.join(self.args)}: exit {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


# fastckpt's main(), with functions of fastckpt ("[module.]name", module default engine) slowed down:
# each writes its marker file, then sleeps until a signal comes (KeyboardInterrupt, as slow real work)
HOOKED_MAIN = """
import importlib, os, sys, time
from fastckpt.cli import main

def slow(target, marker):
    module, _, name = target.rpartition(".")
    mod = importlib.import_module("fastckpt." + (module or "engine"))
    fn = getattr(mod, name)
    def wrapper(*a, **kw):
        open(marker, "w").close()
        time.sleep(30)  # a signal ends this (KeyboardInterrupt), as it would end slow real work
        return fn(*a, **kw)
    setattr(mod, name, wrapper)

for spec in filter(None, os.environ.get("ROBUST_SLOW", "").split(",")):
    target, marker = spec.split("=", 1)
    slow(target, marker)
sys.exit(main(sys.argv[1:]))
"""


def fastckpt_cmd(*args: str) -> List[str]:
    """The command line of `fastckpt ARGS`, as this interpreter runs it."""
    return [sys.executable, "-m", "fastckpt", *args]


class Command:
    """CMD started now (stdin /dev/null or INPUT, stdout/stderr in unnamed files), in CWD.

    NEW_SESSION: a process group of its own, as a terminal's foreground job has, so that a signal to the
    group is a Ctrl-C (SIGINT is not ignored, as it would be for a job started with `&` by a
    non-interactive shell).  WORKDIR: a directory of the test; criu processes working below it are
    killed when the command does not finish in time.
    """

    def __init__(self, cmd: Sequence[str], *, workdir: Optional[str] = None, cwd: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, new_session: bool = False, input: Optional[str] = None):
        self.args = list(cmd)
        self.workdir = workdir
        self._out = tempfile.TemporaryFile("w+")
        self._err = tempfile.TemporaryFile("w+")
        full_env = dict(os.environ, **env) if env else None
        with (open(os.devnull, "rb") if input is None else tempfile.TemporaryFile("w+")) as stdin:
            if input is not None:  # INPUT: what the command reads on stdin
                stdin.write(input)
                stdin.seek(0)
            self.popen = subprocess.Popen(self.args, stdin=stdin, stdout=self._out, stderr=self._err, env=full_env,
                                          start_new_session=new_session, cwd=cwd)
        self.pid = self.popen.pid

    def signal_group(self, sig: int) -> None:
        """SIG to the command's whole process group (what a terminal's Ctrl-C does)."""
        os.killpg(self.pid, sig)

    def handlers_installed(self) -> bool:
        """fastckpt's main() is running: its SIGTERM handler is in place."""
        return signal.SIGTERM in proc_signals(self.pid, "SigCgt")

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """Kill it if it still runs (a test's `finally`)."""
        if self.running():
            self.popen.kill()
            self.popen.wait()

    def wait(self, timeout: float = CLI_TIMEOUT) -> Result:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            for c in criu_pids_in(self.workdir) if self.workdir else []:
                kill_pid(c)
            raise AssertionError(f"{' '.join(self.args)} did not finish in {timeout:.0f}s") from None
        return Result(self.args, rc, _read_and_close(self._out), _read_and_close(self._err), self.pid)


def _read_and_close(f) -> str:
    f.seek(0)
    try:
        return f.read()
    finally:
        f.close()


def run(cmd: Sequence[str], workdir: Optional[str] = None, timeout: float = CLI_TIMEOUT, **kw) -> Result:
    """Run CMD to its end (see Command); on a timeout it is killed, and criu processes below WORKDIR too."""
    return Command(cmd, workdir=workdir, **kw).wait(timeout)


def start_fastckpt(args: Sequence[str], workdir: Optional[str] = None, *, slow: Optional[Dict[str, str]] = None,
                   env: Optional[Dict[str, str]] = None, **kw) -> Command:
    """`fastckpt ARGS` started (see Command); SLOW: {"[module.]name": marker} of functions to slow down."""
    if slow:
        env = dict(env or {}, ROBUST_SLOW=",".join(f"{k}={v}" for k, v in slow.items()))
        return Command([sys.executable, "-c", HOOKED_MAIN, *args], workdir=workdir, env=env, **kw)
    return Command(fastckpt_cmd(*args), workdir=workdir, env=env, **kw)


def fastckpt(*args: str, workdir: Optional[str] = None, timeout: float = CLI_TIMEOUT, **kw) -> Result:
    """`fastckpt ARGS` as a user runs it, to its end: exit code, stdout and stderr."""
    return start_fastckpt(args, workdir, **kw).wait(timeout)


def run_quiet(cmd: Sequence[str], timeout: float = 60) -> int:
    """Run CMD with all stdio on /dev/null (what `runc run/restore/checkpoint` need: no pipe into a container)."""
    with open(os.devnull, "r+b") as null:
        return subprocess.run(list(cmd), stdin=null, stdout=null, stderr=null, timeout=timeout).returncode


def assert_error(res, code: int, *needles: str, criu_lines: Optional[bool] = False,
                 stdout: Optional[str] = "") -> List[str]:
    """fastckpt failed with exit CODE and said why in one line: `fastckpt: ...` holding each of NEEDLES,
    no traceback; returns the lines of stderr.

    CRIU_LINES: False, that line alone; True, CRIU's error lines follow it (indented); None, they may.
    STDOUT: what stdout must be (None: anything).  RES: a Result or a subprocess.CompletedProcess.
    """
    err = res.stderr
    assert res.returncode == code, f"expected exit {code}, got {res.returncode}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("fastckpt: "), f"stderr is not `fastckpt: ...`: {err!r}"
    if criu_lines is False:
        assert len(lines) == 1, f"expected one line on stderr: {err!r}"
    else:
        assert all(l.startswith("  ") for l in lines[1:]), f"more than one message: {err!r}"
        assert criu_lines is None or len(lines) > 1, f"expected CRIU's error lines after the first: {err!r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    if stdout is not None:
        assert res.stdout == stdout, f"unexpected stdout {res.stdout!r}"
    return lines


def assert_ok(res) -> None:
    """The command succeeded, without a traceback."""
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr}"
    assert "Traceback" not in res.stderr


# --- processes ----------------------------------------------------------------------

def all_pids() -> List[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def criu_pids_in(path: str) -> List[int]:
    """criu processes whose working directory or an open file is below PATH (ours: an image/work dir)."""
    path = os.path.realpath(path)
    prefix = path.rstrip("/") + "/"
    out = []
    for p in all_pids():
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() != "criu":
                    continue
            targets = [os.readlink(f"/proc/{p}/cwd")]
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    targets.append(os.readlink(f"/proc/{p}/fd/{fd}"))
                except OSError:
                    pass
        except OSError:
            continue
        if any(t == path or t.startswith(prefix) for t in targets):
            out.append(p)
    return out


def proc_signals(pid: int, field: str) -> set:
    """The signals of one of /proc/PID/status's sets (FIELD: SigBlk blocked, SigCgt caught, SigPnd...);
    empty when PID is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    bits = int(line.split()[1], 16)
                    return {n for n in range(1, 65) if bits & (1 << (n - 1))}
    except OSError:
        pass
    return set()


def criu_left(workdir: str) -> List[int]:
    """criu processes working below WORKDIR (waited for briefly: a killed one may take a moment to go)."""
    from .waiting import wait_until

    try:
        wait_until(lambda: not criu_pids_in(workdir), "criu to go", timeout=10)
    except AssertionError:
        pass
    return criu_pids_in(workdir)
