"""Helpers shared by fastckpt's benchmarks (side_by_side.py and the pytest-benchmark suites).

Everything started here is registered with a :class:`Janitor` and taken down
by it, also on failure or Ctrl-C: containers live in a private runc root and
are killed and deleted by id, processes are killed by the pid we hold (never
by name), tmpfs mounts are unmounted and temporary directories removed.

Containers get /dev/null as stdio (``fastckpt.bundle.run_detached``): a pipe
or a host file as a container's stdio would be a file CRIU cannot dump.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# The fixture layer the tests share (tests/fastckpt_testing): under pytest, pyproject.toml's
# `pythonpath` puts tests/ on sys.path; a benchmark run as a script (`python benchmarks/x.py`, as
# `make bench` does) finds it through this module, which every benchmark imports first.
if os.path.join(REPO, "tests") not in sys.path:
    sys.path.append(os.path.join(REPO, "tests"))

from fastckpt_testing import waiting  # noqa: E402
from fastckpt_testing.containers import drop_runc_v2_stale_cgroup, state_cgroups, teardown  # noqa: E402
BIN = os.path.dirname(sys.executable)  # the venv's bin (sys.executable is the venv's python)
PYTHON = sys.executable
FASTCKPT = os.path.join(BIN, "fastckpt") if os.path.exists(os.path.join(BIN, "fastckpt")) \
    else (shutil.which("fastckpt") or os.path.join(BIN, "fastckpt"))
KDAT = "/run/criu.kdat"
KDAT_HIDDEN = KDAT + ".bench-hidden"  # where side_by_side.py keeps the cache while a tool runs "as shipped"
DUMP_LOG = "dump.log"

BIGMEM_C = os.path.join(HERE, "bigmem.c")


def why_not_runnable() -> Optional[str]:
    """Why the benchmarks cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "the benchmarks need root (CRIU dumps and runc containers)"
    for tool in ("criu", "runc", "mount", "umount"):
        if not shutil.which(tool):
            return f"{tool} is not installed (not on PATH={os.environ.get('PATH', '')})"
    if not os.path.exists(FASTCKPT):
        return f"the fastckpt command is not installed at {FASTCKPT} (run `make deps`)"
    try:
        from fastckpt import bundle
        bundle.busybox()
    except (ImportError, FileNotFoundError) as e:
        return f"cannot build bundles: {e}"
    return None


# --- running commands --------------------------------------------------------

class CommandFailed(RuntimeError):
    pass


def _tail(path: Optional[str], n: int = 6) -> str:
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            lines = [l.rstrip() for l in f if l.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def criu_log_errors(path: str, n: int = 5) -> str:
    """CRIU's error lines in a dump/restore log (`Error (...)`), the last N."""
    try:
        with open(path, errors="replace") as f:
            lines = [l.strip() for l in f if "Error" in l or "error" in l]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def run_timed(cmd: Sequence[str], *, errfile: Optional[str] = None, logs: Sequence[str] = (),
              timeout: float = 300, outfile: Optional[str] = None) -> float:
    """Run CMD with stdin on /dev/null; returns its wall time in seconds.

    Its stdout goes to OUTFILE (or /dev/null), its stderr to ERRFILE (or /dev/null); a non-zero
    exit raises CommandFailed with the end of ERRFILE and the errors of the CRIU LOGS.
    """
    import threading

    with open(os.devnull, "r+b") as null:
        err = open(errfile, "wb") if errfile else null
        out = open(outfile, "wb") if outfile else null
        try:
            t0 = time.perf_counter()
            p = subprocess.Popen(list(cmd), stdin=null, stdout=out, stderr=err)
            # Not p.wait(timeout): with a timeout, Python polls waitpid with sleeps of up to
            # 50 ms, which would round every measurement up to the next poll.  A blocking
            # wait, and a timer that kills a command that hangs.
            timer = threading.Timer(timeout, p.kill)
            timer.daemon = True
            timer.start()
            try:
                rc = p.wait()
                dt = time.perf_counter() - t0
            finally:
                timer.cancel()
        finally:
            if errfile:
                err.close()
            if outfile:
                out.close()
    if rc != 0:
        why = [x for x in [_tail(errfile)] + [criu_log_errors(l) for l in logs] if x]
        raise CommandFailed(f"{' '.join(cmd)}: exit {rc}" + (f": {' || '.join(why)}" if why else ""))
    return dt


def run_quiet(cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """A command that starts no container process: stdin /dev/null, output captured."""
    return subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def wait_until(pred: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.005):
    """The tests' wait (fastckpt_testing.waiting), polled finely."""
    return waiting.wait_until(pred, what, timeout, interval)


def new_id(prefix: str = "fcbench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- the janitor ------------------------------------------------------------------

class Janitor:
    """Remembers what the benchmarks started and takes it all down (LIFO per kind).

    ``close()`` removes containers, then processes, then mounts, then
    directories; each ``release_*`` does one of them at once (between rounds).
    """

    def __init__(self):
        self.containers: List[Tuple[str, str]] = []  # (runc root, id)
        self.cgroups: Dict[Tuple[str, str], Dict[str, str]] = {}
        self.released: List[str] = []  # ids of containers taken down (for runc's stale v2 cgroups at close)
        self.procs: List[subprocess.Popen] = []
        self.mounts: List[str] = []
        self.dirs: List[str] = []
        self.callbacks: List[Callable[[], None]] = []  # run first, last registered first
        self.problems: List[str] = []

    def on_close(self, fn: Callable[[], None]) -> Callable[[], None]:
        self.callbacks.append(fn)
        return fn

    def release_callback(self, fn: Callable[[], None]) -> None:
        if fn in self.callbacks:
            self.callbacks.remove(fn)
        fn()

    # --- directories
    def mkdtemp(self, prefix: str, dir: Optional[str] = None) -> str:
        d = tempfile.mkdtemp(prefix=prefix, dir=dir)
        self.dirs.append(d)
        return d

    def release_dir(self, d: str) -> None:
        shutil.rmtree(d, ignore_errors=True)
        if d in self.dirs:
            self.dirs.remove(d)

    # --- tmpfs
    def mount_tmpfs(self, size: str = "2g", dir: Optional[str] = None) -> str:
        d = self.mkdtemp("fcb-tmpfs-", dir)
        r = run_quiet(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "fastckpt-bench", d])
        if r.returncode != 0:
            raise CommandFailed(f"mount -t tmpfs on {d}: {r.stderr.strip()}")
        self.mounts.append(d)
        return d

    def release_mount(self, d: str) -> None:
        r = run_quiet(["umount", d])
        if r.returncode != 0:
            r = run_quiet(["umount", "-l", d])
            if r.returncode != 0:
                self.problems.append(f"umount {d}: {r.stderr.strip()}")
        if d in self.mounts:
            self.mounts.remove(d)
        if r.returncode == 0:
            self.release_dir(d)

    # --- processes
    def spawn(self, args: Sequence[str], **kw) -> subprocess.Popen:
        """Start ARGS with stdio on /dev/null in a new session."""
        with open(os.devnull, "r+b") as null:
            p = subprocess.Popen(list(args), stdin=null, stdout=null, stderr=null, start_new_session=True,
                                 close_fds=True, **kw)
        self.procs.append(p)
        return p

    def release_proc(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # its own session and group: ours to kill
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                self.problems.append(f"pid {p.pid} did not die")
        if p in self.procs:
            self.procs.remove(p)

    # --- containers
    def add_container(self, root: str, cid: str) -> None:
        self.containers.append((root, cid))

    def remember_cgroups(self, root: str, cid: str) -> None:
        paths = state_cgroups(root, cid)
        if paths:
            self.cgroups[(root, cid)] = paths

    def release_container(self, root: str, cid: str) -> None:
        """Kill and delete a container of our private root, thaw and remove its cgroups: the tests' tear-down."""
        self.problems += teardown(root, cid, self.cgroups.pop((root, cid), {}).values())
        if (root, cid) in self.containers:
            self.containers.remove((root, cid))
        self.released.append(cid)

    def close(self) -> List[str]:
        for fn in reversed(list(self.callbacks)):
            try:
                self.release_callback(fn)
            except Exception as e:
                self.problems.append(f"{fn!r}: {e!r}")
        for root, cid in reversed(list(self.containers)):
            try:
                self.release_container(root, cid)
            except Exception as e:  # keep cleaning the rest
                self.problems.append(f"container {cid}: {e!r}")
        for p in reversed(list(self.procs)):
            try:
                self.release_proc(p)
            except Exception as e:
                self.problems.append(f"pid {p.pid}: {e!r}")
        # runc 1.1 restoring an id's images under another id on cgroup v2 recreates the old id's cgroup,
        # empty: those of the ids released here go too
        for cid in self.released:
            drop_runc_v2_stale_cgroup(cid)
        for m in reversed(list(self.mounts)):
            self.release_mount(m)
        for d in reversed(list(self.dirs)):
            self.release_dir(d)
        return self.problems


# --- containers -------------------------------------------------------------------

def make_bundle(path: str, args: Optional[Sequence[str]] = None) -> str:
    """A busybox bundle (default process: fastckpt's counter) with its own network namespace."""
    from fastckpt import bundle as fb

    kw = {} if args is None else {"args": list(args)}
    return fb.make_bundle(path, **kw)


def start_container(jan: Janitor, root: str, bundle: str, cid: Optional[str] = None) -> str:
    """`runc run -d` a container of BUNDLE in ROOT (stdio /dev/null); returns its id once it runs."""
    from fastckpt import bundle as fb

    cid = cid or new_id()
    jan.add_container(root, cid)
    fb.run_detached(cid, bundle, root=root)
    jan.remember_cgroups(root, cid)
    return cid


def container_pid(root: str, cid: str) -> int:
    with open(os.path.join(root, cid, "state.json")) as f:
        return int(json.load(f)["init_process_pid"])


# --- images -------------------------------------------------------------------------

def pages_bytes(image_dir: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(image_dir) if e.name.startswith("pages-")
               and e.name.endswith(".img"))


def kdat_state(log_path: str) -> Optional[str]:
    """What CRIU's log (dump.log, restore.log) says of its kernel-probe cache, /run/criu.kdat:
    "loaded" (``Loaded kdat cache``), "absent" (``File /run/criu.kdat does not exist``: it probed the
    kernel), "unknown" (neither line: another log level, or the cache was there and rejected);
    None without a log.  CRIU says it among its first lines."""
    try:
        with open(log_path, errors="replace") as f:
            for i, line in enumerate(f):
                if "Loaded kdat cache" in line:
                    return "loaded"
                if "criu.kdat does not exist" in line:
                    return "absent"
                if i > 200 or "Dumping finished" in line:
                    break
    except OSError:
        return None
    return "unknown"


def kdat_loaded(log_path: str) -> Optional[bool]:
    """Did CRIU load its kernel-probe cache (per its dump.log)?  None without a log."""
    st = kdat_state(log_path)
    return None if st is None else st == "loaded"


# --- hiding CRIU's kernel-probe cache (a tool "as shipped" on this host) ----------------------------

class KdatHider:
    """Hides /run/criu.kdat for the length of one command by renaming it, and puts it back.

    On a host whose /run is not a tmpfs, CRIU finds no cache of its own and probes the kernel at
    every start; fastckpt writes /run/criu.kdat, which runc's and pycriu's CRIU then read as well.
    ``with hider.hidden(): <tool as shipped>`` renames the cache to KDAT_HIDDEN (no wrapper around
    the tool: it runs exactly as it would) and renames it back right after.  ``restore()`` is
    idempotent and also runs at exit (atexit), from the caller's signal handlers and at the start of
    the next run, should a run ever be killed (SIGKILL) while the cache is hidden.  Should someone
    have made a new /run/criu.kdat meanwhile (another fastckpt), that one is kept and ours dropped.
    """

    def __init__(self):
        import atexit

        self.hides = 0
        self.remade = 0  # times another process made a new /run/criu.kdat while ours was hidden
        self.recovered = self.restore()  # a previous run killed while it held the cache hidden
        atexit.register(self.restore)

    def restore(self) -> Optional[str]:
        """Put the cache back if we hid it; what was done (None: nothing was hidden)."""
        if not os.path.exists(KDAT_HIDDEN):
            return None
        try:
            if os.path.exists(KDAT):  # made anew meanwhile (fastckpt elsewhere): keep that one
                os.unlink(KDAT_HIDDEN)
                self.remade += 1
                return "a new cache had been made meanwhile: the hidden copy was dropped"
            os.rename(KDAT_HIDDEN, KDAT)
        except FileNotFoundError:
            return None
        return "renamed back"

    def hidden(self):
        import contextlib

        @contextlib.contextmanager
        def cm():
            try:
                os.rename(KDAT, KDAT_HIDDEN)
                self.hides += 1
            except FileNotFoundError:
                pass  # no cache to hide: CRIU probes anyway
            try:
                yield
            finally:
                self.restore()

        return cm()


def _stats_from_fastckpt_images(image_dir: str) -> Optional[dict]:
    """The dump statistics through fastckpt's own decoder (fastckpt.images.read_stats), when present."""
    try:
        from fastckpt.images import read_stats
    except ImportError:
        return None
    try:
        return dict(read_stats(image_dir, "dump"))
    except Exception:
        return None


def _stats_from_pycriu(image_dir: str) -> Optional[dict]:
    try:
        from pycriu import images
    except ImportError:
        return None
    try:
        with open(os.path.join(image_dir, "stats-dump"), "rb") as f:
            entry = images.load(f)["entries"][0]["dump"]
    except Exception:
        return None
    return dict(entry)


def _stats_from_log(log_path: str) -> Optional[dict]:
    """frozen_time (us) from dump.log: from `freezer.state=FROZEN` (or the first seize) to the unfreeze."""
    start = end = None
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if not line.startswith("("):
                    continue
                try:
                    t = float(line[1:line.index(")")])
                except ValueError:
                    continue
                if start is None and ("freezer.state=FROZEN" in line or "freezing processes:" in line
                                      or "Seized task" in line):
                    start = t
                if "Unfreezing tasks into" in line or (end is None and "Writing stats" in line):
                    end = t
    except OSError:
        return None
    if start is None or end is None:
        return None
    return {"frozen_time": int((end - start) * 1e6)}


def pycriu_dump(pid: int, image_dir: str) -> None:
    """pycriu's `criu().dump()` of PID into IMAGE_DIR, leave_running, log level 4 (as fastckpt's)."""
    import pycriu

    fd = os.open(image_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        c = pycriu.criu()
        c.use_binary("criu")
        c.opts.images_dir_fd = fd
        c.opts.pid = pid
        c.opts.leave_running = True
        c.opts.log_file = DUMP_LOG
        c.opts.log_level = 4
        c.dump()
    finally:
        os.close(fd)


def dump_stats(image_dir: str, log_path: Optional[str] = None) -> Tuple[Optional[dict], str]:
    """CRIU's dump statistics (times in microseconds) and where they came from."""
    for source, fn in (("fastckpt.images", _stats_from_fastckpt_images), ("stats-dump (pycriu)", _stats_from_pycriu)):
        s = fn(image_dir)
        if s:
            return s, source
    s = _stats_from_log(log_path or os.path.join(image_dir, DUMP_LOG))
    return s, ("dump.log" if s else "none")


# --- fastckpt.Session ----------------------------------------------------------------------

def _pids_with_arg(arg: str) -> List[int]:
    """Pids of processes one of whose arguments is exactly ARG (a path unique to what we started)."""
    pids = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        try:
            with open(os.path.join(e.path, "cmdline"), "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if arg.encode() in args:
            pids.append(int(e.name))
    return pids


def start_session(attempts: int = 5):
    """fastckpt.Session(), tried up to ATTEMPTS times; returns (session, seconds its start took, failures).

    A safety net (fastckpt before c423db7 read `criu service --daemon`'s pidfile too early on a loaded
    machine): a start that fails may leave its daemon running; such a daemon, ours, is found by its
    unique socket path and killed by pid; then we try again.
    """
    import fastckpt
    from fastckpt.errors import CriuError

    failures: List[str] = []
    while True:
        t0 = time.perf_counter()
        try:
            return fastckpt.Session(), time.perf_counter() - t0, failures
        except CriuError as e:
            failures.append(str(e))
            if e.log_path:
                sock = os.path.join(os.path.dirname(e.log_path), "criu.sock")
                time.sleep(0.2)  # let a daemon caught mid-start finish it
                for pid in _pids_with_arg(sock):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            if len(failures) >= attempts:
                raise


# --- the 1 GiB process ------------------------------------------------------------------

def build_bigmem(outdir: str) -> str:
    """Compile benchmarks/bigmem.c statically into OUTDIR; returns the binary's path."""
    if not shutil.which("gcc"):
        raise CommandFailed("gcc is not installed (apt-get install build-essential; `make deps` does)")
    out = os.path.join(outdir, "bigmem")
    r = run_quiet(["gcc", "-static", "-O2", "-o", out, BIGMEM_C], timeout=120)
    if r.returncode != 0:
        raise CommandFailed(f"gcc -static bigmem.c: {r.stderr.strip()[-500:]}")
    return out


# --- statistics ---------------------------------------------------------------------------

def summarize(samples: Sequence[float]) -> dict:
    import statistics

    xs = sorted(samples)
    if not xs:
        return {"n": 0}
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1], "p25": q[0], "p75": q[2]}


# --- pytest-benchmark ------------------------------------------------------------------------

def bench_rounds(benchmark, fn, fresh_dir, rounds: Optional[int] = None):
    """ROUNDS (BENCH_ROUNDS, 15) timed calls of FN(fresh image dir) after one warm-up call; the
    fresh directory is made untimed.  Returns what FN last returned."""
    rounds = rounds or int(os.environ.get("BENCH_ROUNDS") or 15)
    return benchmark.pedantic(fn, setup=lambda: ((fresh_dir(),), {}), rounds=rounds, warmup_rounds=1,
                              iterations=1)
