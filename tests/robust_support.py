"""Helpers of the robustness ("nothing lost") tests, tests/test_robust_*.py.

The README's guarantee: whatever goes wrong, a container is either still
running (thawed, unharmed) or completely and restorably checkpointed.  These
helpers make containers big enough for a dump to take a while, run the CLI in
a session of its own (so that a test can Ctrl-C its process group), and check
the two allowed outcomes.

* ``mem MIB [TICK_MS]`` -- a tiny static C program (built once per test
  session with ``gcc -O2 -static``) that fills MIB MiB with a non-zero
  pattern, writes /tmp/ready, then counts every TICK_MS (100) ms into /tmp/count and
  /tmp/count.log (as restore_support's counter does: a restored counter's
  log reads 1..n without a restart).  When /tmp/verify exists it re-checks
  all its memory and writes "ok 0" (or "bad <words>") to /tmp/verified, so a
  restored container's memory is checked exactly, not sampled.
* Everything a test starts lives in a private runc root with uuid-based ids
  and is cleaned up by the fixtures; processes are only ever killed by the
  pids the tests hold, never by name.

No timing assertions, except generous upper bounds where a bound is the
point (a watchdog must stop CRIU).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from typing import Dict, List, Optional, Sequence

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import ckpt_support as cs  # noqa: E402
import restore_support as rs  # noqa: E402

WAIT = 20.0
CLI_TIMEOUT = 120.0

MEM_C = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void put(const char *path, const char *s, int append)
{
	int fd = open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
	if (fd >= 0) {
		if (write(fd, s, strlen(s)) < 0)
			_exit(3);
		close(fd);
	}
}

static uint64_t pattern(size_t i) { return (i * 0x9E3779B97F4A7C15ull) | 1; } /* never zero */

int main(int argc, char **argv)
{
	if (argc != 2 && argc != 3)
		return 2;
	size_t size = (size_t)strtoull(argv[1], NULL, 10) << 20;
	long tick_ms = argc == 3 ? strtol(argv[2], NULL, 10) : 100;
	uint64_t *p = NULL;
	if (size) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return 1;
	}
	size_t n = size / sizeof(*p);
	for (size_t i = 0; i < n; i++)
		p[i] = pattern(i);
	put("/tmp/ready", "1\n", 0);
	char buf[64];
	struct timespec tick = {tick_ms / 1000, tick_ms % 1000 * 1000000};
	for (unsigned long c = 1;; c++) {
		snprintf(buf, sizeof buf, "%lu\n", c);
		put("/tmp/count", buf, 0);
		put("/tmp/count.log", buf, 1);
		if (access("/tmp/verify", F_OK) == 0) {
			size_t bad = 0;
			for (size_t i = 0; i < n; i++)
				bad += p[i] != pattern(i);
			snprintf(buf, sizeof buf, "%s %zu %zu\n", bad ? "bad" : "ok", bad, size >> 20);
			put("/tmp/verified.tmp", buf, 0);
			rename("/tmp/verified.tmp", "/tmp/verified");
			unlink("/tmp/verify");
		}
		nanosleep(&tick, NULL);
	}
}
"""


def build_mem(outdir: str) -> str:
    """Compile MEM_C statically into OUTDIR; returns the binary (skips the test when gcc cannot)."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed (the big test container is a static C program)")
    src = os.path.join(outdir, "mem.c")
    out = os.path.join(outdir, "mem")
    with open(src, "w") as f:
        f.write(MEM_C)
    r = subprocess.run(["gcc", "-O2", "-static", "-o", out, src], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"gcc -static failed (static libc missing?): {r.stderr.strip()[-300:]}")
    return out


@pytest.fixture(scope="session")
def mem_binary(tmp_path_factory):
    return build_mem(str(tmp_path_factory.mktemp("robust-mem")))


# --- containers ---------------------------------------------------------------------------

class MemContainer(cs.Container):
    """A test container running ``mem`` (or the busybox counter, MIB=0)."""

    def __init__(self, id: str, bundle: str, root: str, mib: int):
        super().__init__(id, bundle, root)
        self.mib = mib
        self.counter = rs.Counter(os.path.join(self.rootfs, "tmp"), f"the counter of {id}")

    def tmp(self, name: str) -> str:
        return os.path.join(self.rootfs, "tmp", name)

    def verify_memory(self) -> str:
        """Have the container re-check all of its memory; returns its answer ("ok 0 <MiB>")."""
        assert self.mib, "the busybox counter has no memory to verify"
        for n in ("verified", "verified.tmp"):
            if os.path.exists(self.tmp(n)):
                os.unlink(self.tmp(n))
        open(self.tmp("verify"), "w").close()
        rs.wait_until(lambda: os.path.exists(self.tmp("verified")), f"{self.id} to verify its memory")
        with open(self.tmp("verified")) as f:
            return f.read().strip()

    def assert_memory_intact(self) -> None:
        answer = self.verify_memory()
        assert answer == f"ok 0 {self.mib}", f"{self.id}'s memory after restore: {answer!r}"

    def assert_coherent_after_restore(self, stopped_at: int) -> None:
        """Restored: running for runc, thawed, counting on from STOPPED_AT without a restart, memory intact."""
        assert self.status() == "running", f"{self.id} is {self.status()!r} after its restore"
        assert not rs.frozen_cgroups(self.id), rs.frozen_cgroups(self.id)
        self.counter.assert_continued(stopped_at)
        if self.mib:
            self.assert_memory_intact()


class MemContainers(cs.ContainerFactory):
    """Factory: containers(mib, tick_ms=None) runs ``mem MIB [TICK_MS]`` (neither: the busybox counter,
    which writes a count.log too)."""

    def __init__(self, root: str, workdir: str, binary: Optional[str]):
        super().__init__(root, workdir)
        self.binary = binary

    def __call__(self, mib: int = 0, *, tick_ms: Optional[int] = None,  # type: ignore[override]
                 network_ns: Optional[str] = "") -> MemContainer:
        from fastckpt import bundle as fb

        cid = cs.new_id()
        path = os.path.join(self.workdir, f"bundle-{cid}")
        if mib or tick_ms:
            assert self.binary, "no mem binary"
            args = ["/mem", str(mib)] + ([str(tick_ms)] if tick_ms else [])
            fb.make_bundle(path, args=args, network_ns=network_ns)
            shutil.copy2(self.binary, os.path.join(path, "rootfs", "mem"))
        else:
            fb.make_bundle(path, args=["sh", "-c", rs.CONTAINER_COUNTER], network_ns=network_ns)
        ct = MemContainer(cid, path, self.root, mib)
        self.containers.append(ct)
        fb.run_detached(cid, path, root=self.root)
        ct.remember_cgroups()
        ct.counter.wait_reach(2)
        return ct


@pytest.fixture
def containers(runc_root, tmp_path, mem_binary):
    """Factory of MemContainers in the test's private runc root; all killed, deleted and checked at the end
    (and no criu may be left working in the test's directory)."""
    factory = MemContainers(runc_root, str(tmp_path), mem_binary)
    yield factory
    ids = [ct.id for ct in factory.containers]
    problems = factory.cleanup()
    criu = criu_left(str(tmp_path))
    for p in criu:
        rs.kill_tree(p, group=False)
    for cid in ids:
        rs.remove_lock_files(cid)
    if problems or criu:
        pytest.fail(f"cleanup: {problems}; criu processes left: {criu}")


# --- the CLI in a session of its own ------------------------------------------------------------

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


class Cli:
    """`fastckpt ARGS` started with Popen(start_new_session=True): its own process group, as a
    terminal's foreground job has, so that a signal to the group is a Ctrl-C (SIGINT is not
    ignored, as it would be for a job started with `&` by a non-interactive shell).

    stdout/stderr go to files (no pipe a straggling criu could keep open); it runs in CWD (default:
    WORKDIR, so that a relative path it is given -- or wrongly takes -- lands there).  SLOW: functions
    to slow down, {"[module.]name": marker} (module of fastckpt, default engine): each writes its marker
    file, then sleeps until a signal comes.
    """

    def __init__(self, args: Sequence[str], workdir: str, env: Optional[Dict[str, str]] = None,
                 slow: Optional[Dict[str, str]] = None, cwd: Optional[str] = None):
        self.args = list(args)
        self.workdir = workdir
        tag = uuid.uuid4().hex[:8]
        self.out_path = os.path.join(workdir, f".cli-out-{tag}")
        self.err_path = os.path.join(workdir, f".cli-err-{tag}")
        full_env = dict(os.environ, **(env or {}))
        if slow:
            full_env["ROBUST_SLOW"] = ",".join(f"{k}={v}" for k, v in slow.items())
            cmd = [sys.executable, "-c", HOOKED_MAIN, *self.args]
        else:
            cmd = [sys.executable, "-m", "fastckpt", *self.args]
        with open(os.devnull, "rb") as null, open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen(cmd, stdin=null, stdout=out, stderr=err, env=full_env,
                                          start_new_session=True, cwd=cwd or workdir)
        self.pid = self.popen.pid

    def signal_group(self, sig: int) -> None:
        """SIG to the CLI's whole process group (what a terminal's Ctrl-C does)."""
        os.killpg(self.pid, sig)

    def handlers_installed(self) -> bool:
        """The CLI's main() is running: its SIGTERM handler is in place."""
        return signal.SIGTERM in proc_signals(self.pid, "SigCgt")

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float = CLI_TIMEOUT) -> rs.Result:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            for c in rs.criu_pids_in(self.workdir):
                rs.kill_tree(c, group=False)
            raise AssertionError(f"fastckpt {' '.join(self.args)} did not finish in {timeout:.0f}s") from None
        with open(self.out_path) as o, open(self.err_path) as e:
            res = rs.Result(self.args, rc, o.read(), e.read())
        os.unlink(self.out_path)
        os.unlink(self.err_path)
        return res


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


def run_cli(args: Sequence[str], workdir: str, **kw) -> rs.Result:
    return Cli(args, workdir, **kw).wait()


def assert_failed(res: rs.Result, code: int, *needles: str) -> str:
    """Exit CODE, no traceback, nothing on stdout, a `fastckpt: ...` line (CRIU's indented lines may follow)
    that holds each of NEEDLES; returns that first line."""
    err = res.stderr
    assert res.returncode == code, f"expected exit {code}; {res}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("fastckpt: "), f"stderr is not `fastckpt: ...`: {err!r}"
    assert all(l.startswith("  ") for l in lines[1:]), f"more than one message: {err!r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    assert res.stdout == "", f"unexpected stdout {res.stdout!r}"
    return lines[0]


SLOW_CRIU = """#!{python}
import os, select, sys, time
if sys.argv[1:2] == ["swrk"]:  # fastckpt may start it ahead: the operation begins with its request
    select.select([int(sys.argv[2])], [], [])
open({mark!r}, "w").close()
time.sleep({delay})
os.execv({real!r}, [{real!r}] + sys.argv[1:])
"""


@pytest.fixture
def slow_criu(tmp_path):
    """Factory: slow_criu(mark, delay=1.0) -> environment variables that make fastckpt run a `criu` that,
    once its request has come, creates MARK, waits DELAY seconds, then execs the real criu (which reads
    that request).  It runs in CRIU's session: a signal to fastckpt's process group does not reach it.
    While it waits, fastckpt holds its lock and a container being checkpointed is frozen."""
    real = shutil.which("criu")
    assert real, "criu is not installed"
    made = []

    def make(mark: str, delay: float = 1.0) -> Dict[str, str]:
        wrapper = tmp_path / f"criu-wrapper-{len(made)}"
        wrapper.write_text(SLOW_CRIU.format(python=sys.executable, mark=mark, delay=delay, real=real))
        wrapper.chmod(0o755)
        made.append(wrapper)
        # no kernel-probe cache for this "criu": fastckpt would key /run/criu.kdat to it
        return {"FASTCKPT_CRIU": str(wrapper), "FASTCKPT_KDAT_CACHE": "0"}

    return make


# --- what may be left -------------------------------------------------------------------------------

def checkpoint_files(path: str) -> List[str]:
    """Files of PATH that would make it look like a checkpoint (CRIU's images, fastckpt's and runc's files)."""
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path)
                  if n.endswith(".img") or n in ("fastckpt.json", "descriptors.json", "stats-dump",
                                                 "fastckpt-manifest.json", ".fastckpt-manifest.json.tmp"))


def criu_left(workdir: str) -> List[int]:
    """criu processes working below WORKDIR (waited for briefly: a killed one may take a moment to go)."""
    try:
        rs.wait_until(lambda: not rs.criu_pids_in(workdir), "criu to go", timeout=10)
    except AssertionError:
        pass
    return rs.criu_pids_in(workdir)


def restore_cgroups(pid: Optional[int] = None) -> List[str]:
    """fastckpt's CRIU containment cgroups (``fastckpt-restore-<pid>``) in the freezer hierarchy:
    of process PID when given, else all of them."""
    import glob

    name = f"fastckpt-restore-{pid}" if pid else "fastckpt-restore-*"
    return sorted(glob.glob(os.path.join(cs.FREEZER_ROOT, "**", name), recursive=True))


cgroup_dirs = rs.cgroup_dirs  # cgroup directories named CID in the host's hierarchies


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# --- a small tmpfs ------------------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """Factory: small_tmpfs(size="64m") -> a directory with a tmpfs of that size mounted on it (unmounted
    at teardown, lazily if something still holds it)."""
    mounted: List[str] = []

    def make(size: str = "64m") -> str:
        d = str(tmp_path / f"tmpfs-{len(mounted)}")
        os.makedirs(d)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "fastckpt-test", d],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in reversed(mounted):
        for c in rs.criu_pids_in(d):
            rs.kill_tree(c, group=False)
        r = subprocess.run(["umount", d], stdin=subprocess.DEVNULL, capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", d], stdin=subprocess.DEVNULL, capture_output=True)


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
