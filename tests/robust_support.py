"""Helpers of the robustness ("nothing lost") tests, tests/test_robust_*.py.

The README's guarantee: whatever goes wrong, a container is either still
running (thawed, unharmed) or completely and restorably checkpointed.  These
helpers make containers big enough for a dump to take a while, run the CLI in
a session of its own (so that a test can Ctrl-C its process group), and check
the two allowed outcomes.

* ``mem MIB [TICK_MS]`` (tests/fastckpt_testing/mem.py) -- the test container whose memory a
  restore must bring back intact; the ``containers`` fixture (the plugin) runs it.
* Everything a test starts lives in a private runc root with uuid-based ids
  and is cleaned up by the fixtures; processes are only ever killed by the
  pids the tests hold, never by name.

No timing assertions, except generous upper bounds where a bound is the
point (a watchdog must stop CRIU).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import pytest

import restore_support as rs
from fastckpt_testing.cli import (  # noqa: F401
    Command, Result, assert_error, criu_left, proc_signals, start_fastckpt)
from fastckpt_testing.containers import FREEZER_ROOT, Container, cgroup_dirs  # noqa: F401
from fastckpt_testing.mem import MemContainers  # noqa: F401
# fixtures of the plugin, for test modules that import them by name
from fastckpt_testing.plugin import containers, mem_binary, slow_criu, small_tmpfs  # noqa: F401

WAIT = 20.0
CLI_TIMEOUT = 120.0


# --- the CLI in a session of its own ------------------------------------------------------------

def Cli(args: Sequence[str], workdir: str, env: Optional[Dict[str, str]] = None,
        slow: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> Command:
    """`fastckpt ARGS` started in a session of its own (a signal to its group is a Ctrl-C), in CWD
    (default: WORKDIR, so that a relative path it is given -- or wrongly takes -- lands there).  SLOW:
    functions to slow down, {"[module.]name": marker} (see fastckpt_testing.cli.start_fastckpt)."""
    return start_fastckpt(args, workdir, slow=slow, env=env, cwd=cwd or workdir, new_session=True)


def run_cli(args: Sequence[str], workdir: str, timeout: float = CLI_TIMEOUT, **kw) -> Result:
    return Cli(args, workdir, **kw).wait(timeout)


# --- what may be left -------------------------------------------------------------------------------

def checkpoint_files(path: str) -> List[str]:
    """Files of PATH that would make it look like a checkpoint (CRIU's images, fastckpt's and runc's files)."""
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path)
                  if n.endswith(".img") or n in ("fastckpt.json", "descriptors.json", "stats-dump",
                                                 "fastckpt-manifest.json", ".fastckpt-manifest.json.tmp"))


def restore_cgroups(pid: Optional[int] = None) -> List[str]:
    """fastckpt's CRIU containment cgroups (``fastckpt-restore-<pid>``) in the freezer hierarchy:
    of process PID when given, else all of them."""
    import glob

    name = f"fastckpt-restore-{pid}" if pid else "fastckpt-restore-*"
    return sorted(glob.glob(os.path.join(FREEZER_ROOT, "**", name), recursive=True))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def wait_for(pred, what: str, timeout: float = WAIT, interval: float = 0.002):
    return rs.wait_until(pred, what, timeout=timeout, interval=interval)


# --- fastckpt run by a user who is not root ------------------------------------------------------

NOBODY = 65534
SETPRIV = shutil.which("setpriv")


def setpriv(*caps: str):
    if not SETPRIV:
        pytest.skip("setpriv (util-linux) is not installed")
    cmd = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if caps:
        c = ",".join(f"+{x}" for x in caps)
        cmd += [f"--inh-caps={c}", f"--ambient-caps={c}"]
    return cmd


_NOBODY_CMD: list = []


def _nobody_can_run(python: str) -> bool:
    want = "%d.%d" % sys.version_info[:2]
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    try:
        r = subprocess.run(setpriv() + [python, "-I", "-c", code], capture_output=True, text=True, timeout=30,
                           cwd="/")
    except OSError:
        return False
    return r.returncode == 0 and r.stdout.strip() == want


def nobody_fastckpt() -> list:
    """The command that runs fastckpt as nobody, wherever the checkout is: the checkout (and its .venv) may
    be in a directory only root may enter (a clone under /root, 0700), so what the command needs -- the
    package as installed (with its compiled modules and libexec/tar) and cffi's backend -- is copied to a
    directory of its own under /tmp that anyone may read, and run by an interpreter of the same version
    that nobody may run."""
    if _NOBODY_CMD:
        return list(_NOBODY_CMD)
    import glob
    import tempfile

    import fastckpt
    import _cffi_backend

    candidates = [sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                  f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}", "/usr/bin/python3"]
    python = next((c for c in candidates if c and os.path.exists(c) and _nobody_can_run(c)), None)
    assert python, f"no Python {sys.version_info[0]}.{sys.version_info[1]} that uid {NOBODY} may run among {candidates}"
    lib = tempfile.mkdtemp(prefix="fastckpt-nobody-", dir="/tmp")
    os.chmod(lib, 0o755)
    pkg = os.path.dirname(fastckpt.__file__)
    shutil.copytree(pkg, os.path.join(lib, "fastckpt"), ignore=shutil.ignore_patterns("__pycache__"))
    for f in glob.glob(os.path.join(os.path.dirname(_cffi_backend.__file__), "_cffi_backend*.so")):
        shutil.copy2(f, lib)
    _copy_dependencies(lib)
    for dirpath, dirnames, filenames in os.walk(lib):
        for n in dirnames:
            os.chmod(os.path.join(dirpath, n), 0o755)
        for n in filenames:
            path = os.path.join(dirpath, n)
            os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
    import atexit

    atexit.register(shutil.rmtree, lib, True)
    # -I: neither the environment nor the working directory nor the user's site decide what is imported
    _NOBODY_CMD[:] = [python, "-I", "-c", "import sys; sys.path.insert(0, %r); from fastckpt.cli import run; run()"
                      % lib]
    return list(_NOBODY_CMD)


def _copy_dependencies(lib: str) -> None:
    """The top-level modules of fastckpt's declared dependencies (xxhash, zstandard, protobuf's google, ...)
    copied into LIB: the venv that has them may be where nobody can read."""
    import importlib.util
    import re
    from importlib import metadata

    wanted = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-")
              for r in metadata.requires("fastckpt") or [] if "extra ==" not in r}
    for top, dists in metadata.packages_distributions().items():
        if not any(d.lower().replace("_", "-") in wanted for d in dists) or os.path.exists(os.path.join(lib, top)):
            continue
        spec = importlib.util.find_spec(top)
        if spec is None:
            continue
        if spec.submodule_search_locations:  # a package (a namespace one too: google)
            for loc in spec.submodule_search_locations:
                shutil.copytree(loc, os.path.join(lib, top), dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
        elif spec.origin and os.path.isfile(spec.origin):
            shutil.copy2(spec.origin, lib)
