#!/usr/bin/env python3
"""fastckpt side by side with runc, pycriu and the criu CLI (`make bench`).

One process, N interleaved rounds (BENCH_ROUNDS, default 15, at least 10):
in every round each tool is measured once and the tool that goes first
rotates from round to round, so that the noise of this 2-core machine
falls on all of them alike.  Each section starts with one warm-up round that
is not counted.  Reported: median, min and max of the wall time, and the
ratio fastckpt/other of the medians.

The other tools are measured twice, as two tools of their own:

  as shipped (`*-shipped`)  CRIU's kernel-probe cache /run/criu.kdat is renamed
      away (to /run/criu.kdat.bench-hidden) for just that one command and renamed
      back right after: the tool runs as it does on this host without fastckpt
      (/run is not a tmpfs here, so CRIU keeps no cache and re-probes the kernel
      at every start).  Nothing wraps the command.
  with the cache (`*-cache`)  the cache fastckpt wrote is left in place: the
      conservative comparison (once fastckpt has run, runc and pycriu read it too).

fastckpt always runs with its cache (one of its levers).  Per round, CRIU's log
(dump.log / restore.log: "Loaded kdat cache" or "criu.kdat does not exist")
must say the cache was used as the row says; a round where it was not (another
fastckpt remade the cache meanwhile, say) is dropped and counted, and too many
of them fail the run.  The cache is put back on any exit: finally, atexit,
SIGTERM/SIGHUP/SIGQUIT/SIGINT, and at the next start should a run have been
killed while it was hidden.

  1  checkpoint of a tiny runc container (a fresh one per tool and round):
     `fastckpt checkpoint` vs `runc checkpoint` as shipped and with the cache
  2  the same with --leave-running (one container per tool, checkpointed
     again and again into fresh image directories)
  3  restore -d of a fresh checkpoint (made untimed, with the cache, by
     fastckpt for fastckpt's row and by runc for runc's)
  4  from Python: fastckpt.checkpoint(pid=..., leave_running=True) and the same
     through fastckpt.Session (a warm `criu service`, started once, untimed)
     vs pycriu and vs the `criu dump` CLI, as shipped and with the cache, of
     one running process; 3N rounds, like row 6, as each takes milliseconds
  5  a container holding 1 GiB of non-zero memory, images on a fresh tmpfs:
     wall time, throughput (bytes of pages-*.img / wall time), CRIU's frozen
     time and fastckpt's own (`--print-stats` frozen_time_ms, from a separate
     `fastckpt checkpoint --print-stats` in each round: decoding the statistics
     costs wall time); runc as shipped and with the cache; beside
     `dd if=/dev/zero` into a fresh tmpfs (BENCH_BIG_ROUNDS, default 5)
  6  `fastckpt --version` vs `python -c pass` (3N rounds)
  7  a container of 200 processes: checkpoint, then restore -d of those images,
     fastckpt vs runc with the cache (BENCH_BIG_ROUNDS)
  8  a container holding 2 GiB, images on a fresh tmpfs: checkpoint and restore -d
     wall, fastckpt vs runc with the cache; 9: what verifying the manifest costs
     a restore there, seconds per GiB of images: the wall of a restore -d of
     fastckpt's images with their manifest minus that of one without it (moved
     aside: only the structure is checked), both per round, alternating order;
     and manifest.verify() alone (information)
  10 a bystander's fork+exit latency (warm_bystander.py's probe) while a tiny
     container is checkpointed by fastckpt, fastckpt --fast-migrations, runc

fastckpt runs without the cgroup warm-up (the default); `fastckpt-warm` rows
(--fast-migrations) are information.  The headline ratio is the one to the
other tool WITH the cache; "met" judges it against issue 13's targets (on the
unified layout, /sys/fs/cgroup a cgroup2 mount as in scripts/cgroup2-ns.sh,
every ratio to runc must be <= 0.80).  BENCH_QUICK=1: few rounds, a smoke run.

Results: a markdown table on stdout and benchmarks/results/latest.{md,json}
(latest-unified.* on the unified layout) plus a timestamped copy.
BENCH_ONLY=tiny,leave,restore,api,big,many,big2g,bystander,version runs
a subset (for development: printed, and saved only in /tmp).  BENCH_WAIT_QUIET=S
first waits up to S seconds for the machine to be quiet (CPUs < 15% busy), and
then, before each round, while other work keeps it busy (S seconds in all).

Everything it starts is taken down again (containers in a private runc root,
processes by pid, tmpfs mounts, temporary directories), also on failure,
Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import benchlib as bl

RESULTS = os.path.join(bl.HERE, "results")
SECTIONS = ("tiny", "leave", "restore", "api", "big", "many", "big2g", "bystander", "version")
GB = 1e9  # throughput unit: 10^9 bytes per second
BIG_MIB = 1024
BIG2G_MIB = 2048  # the 2 GiB container: checkpoint and restore wall vs runc's, the manifest's cost per GiB
MANY = 200  # processes in the many-process container

# the project's targets (issue 13: fastckpt/other of the medians, the other WITH the kernel-probe cache;
# the 1 GiB rows compare throughputs).  On a unified (cgroup v2) host runc's freeze does not poll and
# every ratio to runc must be <= 0.80 (UNIFIED_RUNC).
TARGETS = {
    "tiny": ("<=", 0.40),
    "leave": ("<=", 0.30),
    "restore": ("<=", 0.40),
    "api-pycriu": ("<=", 0.60),
    "session-pycriu": ("<=", 0.40),
    "many": ("<=", 0.70),
    "big2g": ("<=", 0.85),
    "big-runc": (">=", 0.90),
    "big-dd": (">=", 0.70),
    "manifest-s-per-gib": ("<=", 0.03),
    "version-ms": ("<=", 20.0),
}
RUNC_KEYS = ("tiny", "leave", "restore", "many", "big2g")
UNIFIED_RUNC = ("<=", 0.80)


def cgroup_layout() -> str:
    """"unified" where /sys/fs/cgroup is a cgroup2 mount (as in scripts/cgroup2-ns.sh), else "hybrid"."""
    return "unified" if os.statvfs("/sys/fs/cgroup") and _fstype("/sys/fs/cgroup") == "cgroup2fs" else "hybrid"


def _fstype(path: str) -> str:
    r = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return r.stdout.strip()


def target(key: Optional[str]):
    if key is None:
        return None
    if key in RUNC_KEYS and cgroup_layout() == "unified":
        return UNIFIED_RUNC
    return TARGETS.get(key)

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rotate(tools: Sequence[str], r: int) -> List[str]:
    k = r % len(tools)
    return list(tools[k:]) + list(tools[:k])


def env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "")
    try:
        v = int(raw) if raw else default
    except ValueError:
        sys.exit(f"side_by_side: {name}={raw!r} is not a number")
    if v < minimum:
        sys.exit(f"side_by_side: {name} must be >= {minimum} (got {v})")
    return v


def _cpu_snapshot():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait


def _own_cpu() -> float:
    """CPU seconds used by this process and its reaped children (the tools it ran, CRIU under them)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


class LoadMeter:
    """How busy the machine was over a stretch of time, and how much of that was not us.

    ``other``: CPU time of everything else (the machine's busy time minus what this process and
    the children it reaped used) as a fraction of all CPUs; containers' own processes, which are
    not our children, count as "other" but only run a counter."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0  # accumulated over the measured stretches
        self.resume()

    def _now(self):
        s = _cpu_snapshot()
        return time.monotonic(), (s[0] - s[1]) / os.sysconf("SC_CLK_TCK"), _own_cpu()

    def resume(self) -> None:
        self._start = self._now()

    def pause(self) -> None:
        """Stop counting (while the run waits for quiet: that time is not measured)."""
        if self._start is None:
            return
        end = self._now()
        self.t += end[0] - self._start[0]
        self.busy += end[1] - self._start[1]
        self.own += end[2] - self._start[2]
        self._start = None

    def result(self) -> dict:
        self.pause()
        cap = max(1e-9, self.t * (os.cpu_count() or 1))
        return {"cpu_busy": round(self.busy / cap, 3), "other": round(max(0.0, self.busy - self.own) / cap, 3),
                "seconds": round(self.t, 1), "loadavg": " ".join(open("/proc/loadavg").read().split()[:3])}


def _cpu_fraction(a, b) -> float:
    return 1.0 - (b[1] - a[1]) / max(1, b[0] - a[0])


def cpu_busy(interval: float = 1.0) -> float:
    """The fraction of all CPUs' time spent busy over INTERVAL seconds (/proc/stat)."""
    a = _cpu_snapshot()
    time.sleep(interval)
    return _cpu_fraction(a, _cpu_snapshot())


def wait_quiet(limit: float, threshold: float = 0.15) -> Optional[float]:
    """Wait up to LIMIT seconds until the machine is quiet (CPUs < THRESHOLD busy over 2 s): BENCH_WAIT_QUIET."""
    deadline = time.monotonic() + limit
    busy = cpu_busy(2.0)
    while busy >= threshold and time.monotonic() < deadline:
        log(f"side_by_side: machine busy ({busy:.0%} of its CPUs): waiting for quiet")
        time.sleep(3)
        busy = cpu_busy(2.0)
    return busy


def dump_log_seconds(path: str) -> Optional[float]:
    """CRIU's own time for an operation: the last timestamp of its log."""
    last = None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("(") and ")" in line[:16]:
                    try:
                        last = float(line[1:line.index(")")])
                    except ValueError:
                        pass
    except OSError:
        return None
    return last


class Bench:
    def __init__(self, rounds: int, big_rounds: int):
        self.rounds = rounds
        self.big_rounds = big_rounds
        # the rows that take milliseconds get 3x the rounds: a burst of load elsewhere on the
        # machine lasting a second would otherwise cover most of them
        self.fast_rounds = 3 * rounds
        self.jan = bl.Janitor()
        self.hider: Optional[bl.KdatHider] = None  # set by main() before anything runs
        self.samples: Dict[str, Dict[str, List[float]]] = {}  # section -> tool -> values
        self.kdat: Dict[str, Dict[str, Dict[str, int]]] = {}  # section -> tool -> CRIU log's cache state -> rounds
        self.dropped: Dict[str, Dict[str, int]] = {}  # section -> tool -> rounds dropped (cache not as meant)
        self.notes: List[str] = []
        self.base = ""
        self.root = ""
        self.bundle = ""
        self.errdir = ""
        self.pycriu_ok = False
        self.session_start: Optional[float] = None
        self.quiet_budget = 0.0  # BENCH_WAIT_QUIET: seconds we may wait for quiet between rounds
        self.quiet_waited = 0.0
        self.busy_rounds = 0  # rounds that started on a busy machine all the same
        self.meter: Optional["LoadMeter"] = None  # the current section's

    # --- quiet
    def gate(self) -> None:
        """With BENCH_WAIT_QUIET=S: before a round, wait while other work keeps the machine busy
        (CPUs >= 25% busy over 0.25 s, when nothing of ours but idle containers runs), up to
        20 s per round and S seconds in all; then go on regardless (counted in the report)."""
        if self.quiet_budget <= 0:
            return
        if self.meter is not None:
            self.meter.pause()
        try:
            self._wait_quiet_round()
        finally:
            if self.meter is not None:
                self.meter.resume()

    def _wait_quiet_round(self) -> None:
        waited_here = 0.0
        while True:
            busy = cpu_busy(0.25)
            if busy < 0.25:
                return
            if waited_here >= 20 or self.quiet_waited >= self.quiet_budget:
                self.busy_rounds += 1
                return
            time.sleep(0.75)
            waited_here += 1.0
            self.quiet_waited += 1.0

    # --- bookkeeping
    def record(self, section: str, tool: str, value: float, counted: bool = True) -> None:
        if counted:
            self.samples.setdefault(section, {}).setdefault(tool, []).append(value)

    def errfile(self, name: str) -> str:
        return os.path.join(self.errdir, f"{name}.stderr")

    def setup(self) -> None:
        from fastckpt import criu, kdat

        self.base = self.jan.mkdtemp("fastckpt-bench-")
        self.root = os.path.join(self.base, "runc-root")  # private runc root
        os.makedirs(self.root, mode=0o700)
        self.errdir = os.path.join(self.base, "stderr")
        os.makedirs(self.errdir)
        self.bundle = bl.make_bundle(os.path.join(self.base, "bundle-tiny"))
        # fastckpt's cache, made now if need be (as fastckpt's first command would), and this process's
        # once-per-process check of it done now, while it is in place: the API rows never re-check it
        kdat.ensure(criu.criu_binary())
        if not os.path.exists(bl.KDAT):
            raise RuntimeError(f"fastckpt made no kernel-probe cache ({bl.KDAT}): the with-cache rows would "
                               "not have one (FASTCKPT_KDAT_CACHE=0?)")
        try:
            import pycriu  # noqa: F401
            self.pycriu_ok = True
        except ImportError:
            self.notes.append("pycriu is not installed: its rows are missing")

    def image_dir(self) -> str:
        return self.jan.mkdtemp("img-", self.base)

    # --- the kernel-probe cache
    def as_tool(self, tool: str, fn: Callable[[], float]) -> float:
        """Run FN (it times itself): a tool "as shipped" (`*-shipped`) with /run/criu.kdat renamed
        away for just that call; every other tool with the cache in place."""
        if not shipped(tool):
            return fn()
        with self.hider.hidden():
            return fn()

    def kdat_ok(self, section: str, tool: str, log_path: str, counted: bool) -> bool:
        """Did CRIU (per its log) use the cache as this tool's row says (shipped: it probed the
        kernel; any other: it loaded /run/criu.kdat)?  A round where it did not (another fastckpt
        on the machine may remake the cache while it is hidden, or remove it) is dropped."""
        st = bl.kdat_state(log_path) or "no log"
        want = "absent" if shipped(tool) else "loaded"
        if counted:
            d = self.kdat.setdefault(section, {}).setdefault(tool, {})
            d[st] = d.get(st, 0) + 1
        if st == want:
            return True
        if counted:
            self.dropped.setdefault(section, {})[tool] = self.dropped.get(section, {}).get(tool, 0) + 1
            log(f"  [{section}] {tool}: CRIU's log says the cache was {st!r}, meant {want!r}: round dropped")
        return False

    def check_dropped(self, section: str, rounds: int) -> None:
        for tool, n in self.dropped.get(section, {}).items():
            if n > max(2, rounds // 5):
                raise RuntimeError(f"{section}: {tool}: in {n} of {rounds} rounds CRIU did not use the kernel-probe "
                                   "cache as meant (see the log above): something else keeps changing "
                                   f"{bl.KDAT}")

    # --- commands
    def ckpt_cmd(self, tool: str, cid: str, img: str, leave_running: bool = False) -> List[str]:
        lr = ["--leave-running"] if leave_running else []
        if tool in ("fastckpt", "fastckpt-stats", "fastckpt-warm"):
            st = ["--print-stats"] if tool == "fastckpt-stats" else []
            warm = ["--fast-migrations"] if tool == "fastckpt-warm" else []
            return [bl.FASTCKPT, "--root", self.root, "checkpoint", *warm, "--image-path", img, *lr, *st, cid]
        if tool in ("runc-shipped", "runc-cache", "runc"):
            return ["runc", "--root", self.root, "checkpoint", "--image-path", img, *lr, cid]
        raise ValueError(tool)

    def restore_cmd(self, tool: str, cid: str, img: str, bundle: Optional[str] = None) -> List[str]:
        exe = [bl.FASTCKPT] if tool.startswith("fastckpt") else ["runc"]
        warm = ["--fast-migrations"] if tool == "fastckpt-warm" else []
        return exe + ["--root", self.root, "restore", *warm, "-d", "--image-path", img, "-b", bundle or self.bundle,
                      cid]

    def timed_ckpt(self, section: str, tool: str, cid: str, r: int, leave_running: bool = False) -> None:
        """One timed checkpoint of CID by TOOL into a fresh image directory, recorded if round R counts."""
        img = self.image_dir()
        log_path = os.path.join(img, bl.DUMP_LOG)
        cmd = self.ckpt_cmd(tool, cid, img, leave_running)
        dt = self.as_tool(tool, lambda: bl.run_timed(cmd, errfile=self.errfile(tool), logs=[log_path]))
        if self.kdat_ok(section, tool, log_path, r >= 0):
            self.record(section, tool, dt, r >= 0)
            self.record(f"{section}-criu", tool, dump_log_seconds(log_path) or 0.0, r >= 0)
        self.jan.release_dir(img)

    # --- 1: checkpoint of a tiny container (a fresh one per tool and round)
    def sec_tiny(self) -> None:
        tools = list(CLI_TOOLS)
        for r in range(-1, self.rounds):
            self.gate()
            ids = {t: bl.start_container(self.jan, self.root, self.bundle) for t in tools}
            time.sleep(0.05)
            for t in rotate(tools, r):
                self.timed_ckpt("tiny", t, ids[t], r)
            for cid in ids.values():
                self.jan.release_container(self.root, cid)
            self.progress("tiny", r)
        self.check_dropped("tiny", self.rounds)

    # --- 2: --leave-running, one container per tool
    def sec_leave(self) -> None:
        tools = list(CLI_TOOLS)
        ids = {t: bl.start_container(self.jan, self.root, self.bundle) for t in tools}
        time.sleep(0.05)
        for r in range(-1, self.rounds):
            self.gate()
            for t in rotate(tools, r):
                self.timed_ckpt("leave", t, ids[t], r, leave_running=True)
            self.progress("leave", r)
        for t in tools:
            if not os.path.exists(f"/proc/{bl.container_pid(self.root, ids[t])}"):
                raise RuntimeError(f"the {t} container died during the --leave-running checkpoints")
            self.jan.release_container(self.root, ids[t])
        self.check_dropped("leave", self.rounds)

    # --- 3: restore -d
    def sec_restore(self) -> None:
        tools = list(CLI_TOOLS)
        # a bundle (its own rootfs) per tool: the containers of one round live at the same time, and a
        # counter writing a shared rootfs's /tmp/count would change a file another's images recorded
        # (CRIU refuses it: "File tmp/count has bad size")
        bundles = {t: bl.make_bundle(os.path.join(self.base, f"bundle-restore-{t}")) for t in tools}
        for r in range(-1, self.rounds):
            self.gate()
            imgs, restored = {}, {}
            for t in tools:  # untimed, with the cache: each checkpoints a fresh container (runc's rows: runc)
                cid = bl.start_container(self.jan, self.root, bundles[t])
                time.sleep(0.05)
                img = imgs[t] = self.image_dir()
                maker = "fastckpt" if t.startswith("fastckpt") else "runc"
                bl.run_timed(self.ckpt_cmd(maker, cid, img), errfile=self.errfile(t + "-prep"),
                             logs=[os.path.join(img, bl.DUMP_LOG)])
                self.jan.release_container(self.root, cid)
            for t in rotate(tools, r):
                rid = restored[t] = bl.new_id("fcbench-r")
                self.jan.add_container(self.root, rid)
                log_path = os.path.join(imgs[t], "restore.log")
                cmd = self.restore_cmd(t, rid, imgs[t], bundles[t])
                dt = self.as_tool(t, lambda: bl.run_timed(cmd, errfile=self.errfile(t + "-restore"), logs=[log_path]))
                self.jan.remember_cgroups(self.root, rid)
                if self.kdat_ok("restore", t, log_path, r >= 0):
                    self.record("restore", t, dt, r >= 0)
                    self.record("restore-criu", t, dump_log_seconds(log_path) or 0.0, r >= 0)
            for t in tools:
                pid = bl.container_pid(self.root, restored[t])
                if not os.path.exists(f"/proc/{pid}"):
                    raise RuntimeError(f"the container restored by {t} is not running")
                self.jan.release_container(self.root, restored[t])
                self.jan.release_dir(imgs[t])
            self.progress("restore", r)
        self.check_dropped("restore", self.rounds)

    # --- 4: from Python, one process, --leave-running
    def sec_api(self) -> None:
        import fastckpt

        proc = self.jan.spawn([shutil.which("sleep") or "sleep", "infinity"])
        exe = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
        bl.wait_until(lambda: os.path.realpath(f"/proc/{proc.pid}/exe") == exe, "the sleep process to exec")
        pid = proc.pid

        def api(img: str) -> float:
            t0 = time.perf_counter()
            fastckpt.checkpoint(pid=pid, leave_running=True, image_path=img)
            return time.perf_counter() - t0

        def pyc(img: str) -> float:
            import pycriu  # noqa: F401 -- imported before the clock starts

            t0 = time.perf_counter()
            bl.pycriu_dump(pid, img)
            return time.perf_counter() - t0

        def cli(img: str) -> float:
            return bl.run_timed(["criu", "dump", "-t", str(pid), "-D", img, "--leave-running", "-o", bl.DUMP_LOG,
                                 "-v4"], errfile=self.errfile("criu-cli"), logs=[os.path.join(img, bl.DUMP_LOG)])

        fns: Dict[str, Callable[[str], float]] = {"fastckpt-api": api}
        session = None
        if getattr(fastckpt, "Session", None) is not None:
            # fastckpt's warm CRIU service for repeated API calls: started once, untimed (its start is
            # reported apart); each call is served by a fork of it
            session, self.session_start, failed = bl.start_session()
            close_session = self.jan.on_close(session.close)
            if failed:
                self.notes.append(f"fastckpt.Session() failed to start {len(failed)} time(s) before it did (a race "
                                  "in fastckpt's Session: it reads criu's pidfile before the daemon has written it; "
                                  f"the daemons left behind were killed): {failed[0]}")

            def ses(img: str) -> float:
                t0 = time.perf_counter()
                session.checkpoint(pid=pid, leave_running=True, image_path=img)
                return time.perf_counter() - t0

            fns["fastckpt-session"] = ses
        else:
            self.notes.append("fastckpt.Session is missing: its rows are missing")
        if self.pycriu_ok:
            fns["pycriu-shipped"] = fns["pycriu-cache"] = pyc
        fns["criu-cli-shipped"] = fns["criu-cli-cache"] = cli
        tools = list(fns)
        for r in range(-1, self.fast_rounds):
            if r % 5 == 0:
                self.gate()
            for t in rotate(tools, r):
                img = self.image_dir()
                dt = self.as_tool(t, lambda: fns[t](img))
                if not any(n.startswith("pages-") for n in os.listdir(img)):
                    raise RuntimeError(f"{t} wrote no pages image in {img}")
                log_path = os.path.join(img, bl.DUMP_LOG)
                if self.kdat_ok("api", t, log_path, r >= 0):
                    self.record("api", t, dt, r >= 0)
                    self.record("api-criu", t, dump_log_seconds(log_path) or 0.0, r >= 0)
                self.jan.release_dir(img)
            self.progress("api", r, self.fast_rounds)
        if proc.poll() is not None:
            raise RuntimeError("the process died during the --leave-running checkpoints")
        if session is not None:
            self.jan.release_callback(close_session)
        self.jan.release_proc(proc)
        self.check_dropped("api", self.fast_rounds)

    # --- 5: 1 GiB of memory, images on tmpfs, beside dd
    def sec_big(self) -> None:
        bindir = self.jan.mkdtemp("bigmem-", self.base)
        binary = bl.build_bigmem(bindir)
        bundle = bl.make_bundle(os.path.join(self.base, "bundle-big"), args=["/bigmem", str(BIG_MIB), "/tmp/ready"])
        shutil.copy2(binary, os.path.join(bundle, "rootfs", "bigmem"))
        ready = os.path.join(bundle, "rootfs", "tmp", "ready")
        tools = ["fastckpt", "fastckpt-stats", "runc-shipped", "runc-cache", "dd"]
        self.samples["big-meta"] = {"pages_bytes": {}, "stats_source": {}}
        for r in range(self.big_rounds):
            self.gate()
            for t in rotate(tools, r):
                if t == "dd":
                    tm = self.jan.mount_tmpfs("2g", self.base)
                    dt = bl.run_timed(["dd", "if=/dev/zero", f"of={tm}/x", "bs=1M", f"count={BIG_MIB}"],
                                      errfile=self.errfile("dd"))
                    self.jan.release_mount(tm)
                    self.record("big", t, dt)
                    self.record("big-gbps", t, BIG_MIB * 2**20 / dt / GB)
                    continue
                cid, tm, img = self._filled_container(bundle, ready, "1 GiB", "2g", timeout=120)
                log_path = os.path.join(img, bl.DUMP_LOG)
                out = os.path.join(self.errdir, "print-stats.json") if t == "fastckpt-stats" else None
                cmd = self.ckpt_cmd(t, cid, img)
                dt = self.as_tool(t, lambda: bl.run_timed(cmd, errfile=self.errfile(t + "-big"), logs=[log_path],
                                                          outfile=out))
                nbytes = bl.pages_bytes(img)
                if nbytes < BIG_MIB * 2**20:
                    raise RuntimeError(f"{t} wrote only {nbytes} bytes of pages for a 1 GiB process")
                if self.kdat_ok("big", t, log_path, True):
                    stats, source = bl.dump_stats(img, log_path)
                    self.record("big", t, dt)
                    self.record("big-gbps", t, nbytes / dt / GB)
                    self.record("big-criu", t, dump_log_seconds(log_path) or 0.0)
                    if stats and "frozen_time" in stats:
                        self.record("big-frozen", t, stats["frozen_time"] / 1e6)
                    for k in ("freezing_time", "memdump_time", "memwrite_time"):
                        if stats and k in stats:
                            self.record(f"big-{k}", t, stats[k] / 1e6)
                    if out:  # fastckpt's own: CheckpointResult.frozen_time, from its freeze to the dump's end
                        with open(out) as f:
                            ps = json.load(f)
                        if ps.get("frozen_time_ms") is None:
                            raise RuntimeError(f"`fastckpt checkpoint --print-stats` printed no frozen_time_ms: {ps}")
                        self.record("big-ownfrozen", t, ps["frozen_time_ms"] / 1000)
                    self.samples["big-meta"]["pages_bytes"].setdefault(t, []).append(nbytes)
                    self.samples["big-meta"]["stats_source"][t] = source
                self.jan.release_mount(tm)
                self.jan.release_container(self.root, cid)
            self.progress("big", r, self.big_rounds)
        self.check_dropped("big", self.big_rounds)

    # --- 7: a container of MANY processes: checkpoint, then restore -d of those images
    def _descendants(self, pid: int) -> int:
        n, todo = 0, [pid]
        while todo:
            p = todo.pop()
            n += 1
            try:
                with open(f"/proc/{p}/task/{p}/children") as f:
                    todo += [int(x) for x in f.read().split()]
            except OSError:
                pass
        return n

    def _filled_container(self, bundle: str, ready: str, size: str, tmpfs_size: str,
                          timeout: float) -> Tuple[str, str, str]:
        """A container of BUNDLE whose process has filled its memory (it writes READY, in its rootfs), and an
        empty image directory on a fresh tmpfs of TMPFS_SIZE: (id, tmpfs, image directory)."""
        if os.path.exists(ready):
            os.unlink(ready)
        cid = bl.start_container(self.jan, self.root, bundle)
        pid = bl.container_pid(self.root, cid)
        bl.wait_until(lambda: os.path.exists(ready) or not os.path.exists(f"/proc/{pid}"),
                      f"the {size} process to fill its memory", timeout=timeout, interval=0.02)
        if not os.path.exists(ready):
            raise RuntimeError(f"the {size} process died before it was ready")
        tm = self.jan.mount_tmpfs(tmpfs_size, self.base)
        img = os.path.join(tm, "img")
        os.mkdir(img, 0o700)
        time.sleep(0.2)
        return cid, tm, img

    def _ckpt_restore(self, section: str, t: str, cid: str, img: str, bundle: str, r: int) -> str:
        """Timed checkpoint of CID by T into IMG, then timed restore -d of it; returns the restored id."""
        counted = r >= 0
        log_path = os.path.join(img, bl.DUMP_LOG)
        cmd = self.ckpt_cmd(t, cid, img)
        dt = self.as_tool(t, lambda: bl.run_timed(cmd, errfile=self.errfile(f"{t}-{section}"), logs=[log_path]))
        if self.kdat_ok(section, t, log_path, counted):
            self.record(f"{section}-ckpt", t, dt, counted)
            self.record(f"{section}-ckpt-criu", t, dump_log_seconds(log_path) or 0.0, counted)
        self.jan.release_container(self.root, cid)
        rid = bl.new_id("fcbench-r")
        self.jan.add_container(self.root, rid)
        rlog = os.path.join(img, "restore.log")
        cmd = self.restore_cmd(t, rid, img, bundle)
        dt = self.as_tool(t, lambda: bl.run_timed(cmd, errfile=self.errfile(f"{t}-{section}-restore"), logs=[rlog]))
        self.jan.remember_cgroups(self.root, rid)
        if self.kdat_ok(section, t, rlog, counted):
            self.record(f"{section}-restore", t, dt, counted)
            self.record(f"{section}-restore-criu", t, dump_log_seconds(rlog) or 0.0, counted)
        return rid

    def sec_many(self) -> None:
        script = (f"i=1; while [ $i -lt {MANY} ]; do sleep 1000000 & i=$((i+1)); done; wait")
        bundle = bl.make_bundle(os.path.join(self.base, "bundle-many"), args=["sh", "-c", script])
        tools = ["fastckpt", "runc-cache"]
        for r in range(-1, self.big_rounds):
            self.gate()
            for t in rotate(tools, r):
                cid = bl.start_container(self.jan, self.root, bundle)
                pid = bl.container_pid(self.root, cid)
                bl.wait_until(lambda: self._descendants(pid) >= MANY, f"the container's {MANY} processes",
                              timeout=60, interval=0.02)
                time.sleep(0.1)
                img = self.image_dir()
                rid = self._ckpt_restore("many", t, cid, img, bundle, r)
                n = self._descendants(bl.container_pid(self.root, rid))
                if n < MANY:
                    raise RuntimeError(f"the container restored by {t} runs {n} processes, not {MANY}")
                self.jan.release_container(self.root, rid)
                self.jan.release_dir(img)
            self.progress("many", r, self.big_rounds)
        self.check_dropped("many", self.big_rounds)

    # --- 8: a 2 GiB container, images on a tmpfs: checkpoint and restore wall; the manifest's cost per GiB
    def sec_big2g(self) -> None:
        from fastckpt import manifest

        bindir = self.jan.mkdtemp("bigmem2g-", self.base)
        binary = bl.build_bigmem(bindir)
        bundle = bl.make_bundle(os.path.join(self.base, "bundle-big2g"),
                                args=["/bigmem", str(BIG2G_MIB), "/tmp/ready"])
        shutil.copy2(binary, os.path.join(bundle, "rootfs", "bigmem"))
        ready = os.path.join(bundle, "rootfs", "tmp", "ready")
        tools = ["fastckpt", "runc-cache"]
        for r in range(self.big_rounds):
            self.gate()
            for t in rotate(tools, r):
                cid, tm, img = self._filled_container(bundle, ready, "2 GiB", "3g", timeout=180)
                rid = self._ckpt_restore("big2g", t, cid, img, bundle, 0)
                nbytes = bl.pages_bytes(img)
                if nbytes < BIG2G_MIB * 2**20:
                    raise RuntimeError(f"{t} wrote only {nbytes} bytes of pages for a 2 GiB process")
                self.jan.release_container(self.root, rid)
                if t == "fastckpt":
                    self._manifest_cost(img, bundle, r, manifest)
                self.jan.release_mount(tm)
            self.progress("big2g", r, self.big_rounds)
        self.check_dropped("big2g", self.big_rounds)

    def _manifest_cost(self, img: str, bundle: str, r: int, manifest) -> None:
        """Row 9: what verifying the manifest costs a restore, per GiB of images: the same 2 GiB images
        restored (-d, timed, each restored container taken down untimed) with their manifest and without it
        (moved aside: fastckpt then checks only their structure, pagemaps against pages sizes, ~ms), in
        alternating order; their wall's difference. And, as information, manifest.verify() alone."""
        total = sum(e.stat().st_size for e in os.scandir(img) if e.is_file())
        gib = total / 2**30
        t0 = time.perf_counter()
        manifest.verify(img)
        self.record("manifest-verify", "fastckpt", (time.perf_counter() - t0) / gib)
        path = os.path.join(img, manifest.MANIFEST_FILE)
        aside = os.path.join(os.path.dirname(img), manifest.MANIFEST_FILE)
        walls = {}
        for with_manifest in ([True, False] if r % 2 == 0 else [False, True]):
            if not with_manifest:
                os.rename(path, aside)
            try:
                rid = bl.new_id("fcbench-m")
                self.jan.add_container(self.root, rid)
                rlog = os.path.join(img, "restore.log")
                cmd = self.restore_cmd("fastckpt", rid, img, bundle)
                walls[with_manifest] = bl.run_timed(cmd, errfile=self.errfile("fastckpt-manifest-restore"),
                                                    logs=[rlog])
                self.jan.remember_cgroups(self.root, rid)
                self.jan.release_container(self.root, rid)
            finally:
                if not with_manifest:
                    os.rename(aside, path)
        self.record("manifest-with", "fastckpt", walls[True])
        self.record("manifest-without", "fastckpt", walls[False])
        self.record("manifest", "fastckpt", (walls[True] - walls[False]) / gib)

    # --- 9: a bystander's fork+exit latency while a tiny container is checkpointed (warm_bystander.py's probe)
    def sec_bystander(self) -> None:
        import warm_bystander as wb

        tmp = self.jan.mkdtemp("bystander-", self.base)
        binary = wb.build_bystander(tmp)
        samples_file = os.path.join(tmp, "samples")
        tools = ["fastckpt", "fastckpt-warm", "runc-cache", "idle"]
        windows: Dict[str, list] = {}
        by = self.jan.spawn([binary, samples_file])
        time.sleep(0.3)
        for r in range(-1, self.rounds):
            self.gate()
            for t in rotate(tools, r):
                cid = None if t == "idle" else bl.start_container(self.jan, self.root, self.bundle)
                time.sleep(0.1)  # the lock falls idle between checkpoints, as between commands
                img = self.image_dir()
                t0 = time.monotonic()
                if t == "idle":
                    time.sleep(0.1)
                else:
                    bl.run_timed(self.ckpt_cmd(t, cid, img), errfile=self.errfile(f"{t}-bystander"))
                if r >= 0:
                    windows.setdefault(t, []).append((t0, time.monotonic()))
                if cid:
                    self.jan.release_container(self.root, cid)
                self.jan.release_dir(img)
            self.progress("bystander", r)
        by.send_signal(signal.SIGTERM)
        by.wait(10)
        self.jan.release_proc(by)
        samples = wb.read_samples(samples_file)
        self.samples["bystander"] = {t: wb.window_latencies(samples, w) for t, w in windows.items()}

    # --- 6: the CLI's start
    def sec_version(self) -> None:
        tools = ["fastckpt --version", "python -c pass"]
        cmds = {"fastckpt --version": [bl.FASTCKPT, "--version"], "python -c pass": [bl.PYTHON, "-c", "pass"]}
        for r in range(-1, self.fast_rounds):
            if r % 5 == 0:
                self.gate()
            for t in rotate(tools, r):
                self.record("version", t, bl.run_timed(cmds[t], errfile=self.errfile("version")), r >= 0)
            self.progress("version", r, self.fast_rounds)

    def progress(self, section: str, r: int, total: Optional[int] = None) -> None:
        total = total or self.rounds
        if r < 0:
            log(f"  [{section}] warm-up round done")
        elif r + 1 == total or (r + 1) % (5 if total < 30 else 15) == 0:
            log(f"  [{section}] {r + 1}/{total} rounds")


def shipped(tool: str) -> bool:
    """A tool measured as it runs on this host without fastckpt: CRIU's kernel-probe cache hidden."""
    return tool.endswith("-shipped")


CLI_TOOLS = ("fastckpt", "fastckpt-warm", "runc-shipped", "runc-cache")


# --- the report ------------------------------------------------------------------------

def _ms(x: Optional[float]) -> str:
    return "—" if x is None else f"{x * 1000:.1f}"


def _met(value: Optional[float], target) -> str:
    if value is None or target is None:
        return ""
    op, lim = target
    ok = value <= lim if op == "<=" else value >= lim
    return "yes" if ok else "**no**"


def _target(target) -> str:
    if target is None:
        return ""
    op, lim = target
    return f"{'≤' if op == '<=' else '≥'} {lim:g}"


def _r(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}"


CACHE_LABEL = {
    "fastckpt": "fastckpt's (its own lever)",
    "fastckpt-warm": "fastckpt's (its own lever)",
    "shipped": "hidden: as shipped on this host",
    "cache": "fastckpt's, left in place",
}


def cache_of(tool: str) -> str:
    if tool.startswith("fastckpt"):
        return "fastckpt"
    return "shipped" if shipped(tool) else "cache"


# The detail table: (section, tool, group, label)
ROWS = [
    ("tiny", "fastckpt", "1. checkpoint, tiny container", "`fastckpt checkpoint`"),
    ("tiny", "fastckpt-warm", "", "`fastckpt checkpoint --fast-migrations` (the warm-up, opt-in)"),
    ("tiny", "runc-shipped", "", "`runc checkpoint`"),
    ("tiny", "runc-cache", "", "`runc checkpoint`"),
    ("leave", "fastckpt", "2. checkpoint --leave-running, tiny container", "`fastckpt checkpoint --leave-running`"),
    ("leave", "fastckpt-warm", "", "`fastckpt checkpoint --fast-migrations --leave-running`"),
    ("leave", "runc-shipped", "", "`runc checkpoint --leave-running`"),
    ("leave", "runc-cache", "", "`runc checkpoint --leave-running`"),
    ("restore", "fastckpt", "3. restore -d, tiny container", "`fastckpt restore -d`"),
    ("restore", "fastckpt-warm", "", "`fastckpt restore --fast-migrations -d`"),
    ("restore", "runc-shipped", "", "`runc restore -d`"),
    ("restore", "runc-cache", "", "`runc restore -d`"),
    ("api", "fastckpt-api", "4. Python, checkpoint --leave-running of a process",
     "`fastckpt.checkpoint(pid=…, leave_running=True)`"),
    ("api", "fastckpt-session", "", "`Session().checkpoint(pid=…, leave_running=True)` (warm `criu service`)"),
    ("api", "pycriu-shipped", "", "pycriu `criu().dump()`"),
    ("api", "pycriu-cache", "", "pycriu `criu().dump()`"),
    ("api", "criu-cli-shipped", "", "`criu dump -t PID --leave-running -v4` (CLI)"),
    ("api", "criu-cli-cache", "", "`criu dump -t PID --leave-running -v4` (CLI)"),
    ("many-ckpt", "fastckpt", f"7. checkpoint, {MANY}-process container", "`fastckpt checkpoint`"),
    ("many-ckpt", "runc-cache", "", "`runc checkpoint`"),
    ("many-restore", "fastckpt", f"7. restore -d, {MANY}-process container", "`fastckpt restore -d`"),
    ("many-restore", "runc-cache", "", "`runc restore -d`"),
    ("big2g-ckpt", "fastckpt", "8. checkpoint, 2 GiB container (images on tmpfs)", "`fastckpt checkpoint`"),
    ("big2g-ckpt", "runc-cache", "", "`runc checkpoint`"),
    ("big2g-restore", "fastckpt", "8. restore -d, 2 GiB container", "`fastckpt restore -d`"),
    ("big2g-restore", "runc-cache", "", "`runc restore -d`"),
    ("version", "fastckpt --version", "6. CLI start", "`fastckpt --version`"),
    ("version", "python -c pass", "", "`python -c pass` (the floor)"),
]

# The summary: (name, section, fastckpt's tool, the other as shipped, the other with the cache, target key)
COMPARISONS = [
    ("1. checkpoint, tiny container: fastckpt / runc", "tiny", "fastckpt", "runc-shipped", "runc-cache", "tiny"),
    ("2. checkpoint --leave-running: fastckpt / runc", "leave", "fastckpt", "runc-shipped", "runc-cache", "leave"),
    ("3. restore -d: fastckpt / runc", "restore", "fastckpt", "runc-shipped", "runc-cache", "restore"),
    ("4. Python: `fastckpt.checkpoint()` / pycriu", "api", "fastckpt-api", "pycriu-shipped", "pycriu-cache",
     "api-pycriu"),
    ("4. Python: `fastckpt.Session` / pycriu", "api", "fastckpt-session", "pycriu-shipped", "pycriu-cache",
     "session-pycriu"),
    ("4. Python: `fastckpt.checkpoint()` / criu CLI", "api", "fastckpt-api", "criu-cli-shipped", "criu-cli-cache",
     None),
    ("4. Python: `fastckpt.Session` / criu CLI", "api", "fastckpt-session", "criu-cli-shipped", "criu-cli-cache",
     None),
    ("1w. checkpoint with the warm-up (--fast-migrations) / runc", "tiny", "fastckpt-warm", "runc-shipped",
     "runc-cache", None),
    ("2w. --leave-running with the warm-up / runc", "leave", "fastckpt-warm", "runc-shipped", "runc-cache", None),
    ("3w. restore -d with the warm-up / runc", "restore", "fastckpt-warm", "runc-shipped", "runc-cache", None),
    (f"7. checkpoint, {MANY}-process container: fastckpt / runc", "many-ckpt", "fastckpt", None, "runc-cache",
     "many"),
    (f"7. restore -d, {MANY}-process container: fastckpt / runc", "many-restore", "fastckpt", None, "runc-cache",
     "many"),
    ("8. checkpoint, 2 GiB container, wall: fastckpt / runc", "big2g-ckpt", "fastckpt", None, "runc-cache", "big2g"),
    ("8. restore -d, 2 GiB container, wall: fastckpt / runc", "big2g-restore", "fastckpt", None, "runc-cache",
     "big2g"),
]


def build_report(b: Bench, meta: dict) -> dict:
    s = b.samples
    rows, ratios = [], []

    def med(section, tool):
        xs = s.get(section, {}).get(tool)
        return bl.summarize(xs)["median"] if xs else None

    def ratio(num, den):
        return num / den if num and den else None

    fast = {"tiny": "fastckpt", "leave": "fastckpt", "restore": "fastckpt", "api": "fastckpt-api",
            "many-ckpt": "fastckpt", "many-restore": "fastckpt", "big2g-ckpt": "fastckpt", "big2g-restore": "fastckpt"}
    for section, tool, group, label in ROWS:
        xs = s.get(section, {}).get(tool)
        if not xs:
            continue
        summ = bl.summarize(xs)
        row = {"section": section, "tool": tool, "group": group, "label": label, "unit": "s", "samples": xs, **summ,
               "cache": cache_of(tool) if section != "version" else None,
               "criu_median": med(f"{section}-criu", tool), "kdat_log": b.kdat.get(section, {}).get(tool),
               "dropped": b.dropped.get(section, {}).get(tool, 0)}
        cr = s.get(f"{section}-criu", {}).get(tool)
        if cr and len(cr) == len(xs) and all(cr):
            # the tool's own time: wall time minus CRIU's, round by round
            row["outside_criu_median"] = bl.summarize([w - c for w, c in zip(xs, cr)])["median"]
        if section in fast and not tool.startswith("fastckpt"):
            row["ratio"] = ratio(med(section, fast[section]), summ["median"])
            row["ratio_of"] = [fast[section], tool]
        elif tool == "python -c pass":
            row["ratio"] = ratio(med(section, "fastckpt --version"), summ["median"])
            row["ratio_of"] = ["fastckpt --version", tool]
        rows.append(row)

    summary = []
    for name, section, num, shp, cch, tkey in COMPARISONS:
        n = med(section, num)
        if n is None:
            continue
        tg = target(tkey)
        c = {"name": name, "unit": "s", "fastckpt": n, "fastckpt_tool": num,
             "shipped": med(section, shp) if shp else None, "shipped_tool": shp, "cache": med(section, cch),
             "cache_tool": cch, "target": tg}
        c["ratio_shipped"] = ratio(n, c["shipped"])
        c["ratio_cache"] = ratio(n, c["cache"])
        c["met_shipped"] = _met(c["ratio_shipped"], tg)
        c["met_cache"] = _met(c["ratio_cache"], tg)
        summary.append(c)

    big = {}
    if s.get("big"):
        for tool in ("fastckpt", "fastckpt-stats", "runc-shipped", "runc-cache", "dd"):
            if tool not in s["big"]:
                continue
            big[tool] = {
                "wall": bl.summarize(s["big"][tool]), "wall_samples": s["big"][tool],
                "gbps": bl.summarize(s["big-gbps"][tool]), "gbps_samples": s["big-gbps"][tool],
                "cache": cache_of(tool) if tool != "dd" else None,
                "kdat_log": b.kdat.get("big", {}).get(tool), "dropped": b.dropped.get("big", {}).get(tool, 0),
            }
            for k in ("criu", "frozen", "ownfrozen", "freezing_time", "memdump_time", "memwrite_time"):
                xs = s.get(f"big-{k}", {}).get(tool)
                if xs:
                    big[tool][k] = bl.summarize(xs)
                    big[tool][f"{k}_samples"] = xs
            pb = s.get("big-meta", {}).get("pages_bytes", {}).get(tool)
            if pb:
                big[tool]["pages_bytes"] = pb
            src = s.get("big-meta", {}).get("stats_source", {}).get(tool)
            if src:
                big[tool]["stats_source"] = src
        fc = big.get("fastckpt", {}).get("gbps", {}).get("median")
        for other in ("runc-shipped", "runc-cache", "dd"):
            o = big.get(other, {}).get("gbps", {}).get("median")
            if fc and o:
                big[other]["ratio"] = fc / o
        t_runc, t_dd = TARGETS["big-runc"], TARGETS["big-dd"]
        if fc and ("runc-shipped" in big or "runc-cache" in big):
            rs, rc = big.get("runc-shipped", {}).get("ratio"), big.get("runc-cache", {}).get("ratio")
            summary.append({"name": "5. 1 GiB checkpoint, throughput (GB/s): fastckpt / runc", "unit": "GB/s",
                            "fastckpt": fc, "fastckpt_tool": "fastckpt",
                            "shipped": big.get("runc-shipped", {}).get("gbps", {}).get("median"),
                            "shipped_tool": "runc-shipped",
                            "cache": big.get("runc-cache", {}).get("gbps", {}).get("median"), "cache_tool": "runc-cache",
                            "target": t_runc, "ratio_shipped": rs, "ratio_cache": rc,
                            "met_shipped": _met(rs, t_runc), "met_cache": _met(rc, t_runc)})
        if fc and "dd" in big:
            rd = big["dd"]["ratio"]
            summary.append({"name": "5. 1 GiB: fastckpt's throughput / dd's into a tmpfs (the ceiling)", "unit": "GB/s",
                            "fastckpt": fc, "fastckpt_tool": "fastckpt", "shipped": big["dd"]["gbps"]["median"],
                            "shipped_tool": "dd", "cache": None, "cache_tool": None, "target": t_dd,
                            "ratio_shipped": rd, "ratio_cache": None, "met_shipped": _met(rd, t_dd), "met_cache": ""})
        # what CRIU's page pipeline alone achieves (no target: the strict ratio is the row above)
        md = big.get("fastckpt", {}).get("memdump_time", {}).get("median")
        pages = big.get("fastckpt", {}).get("pages_bytes")
        if md and pages and "dd" in big:
            pg = statistics.median(pages) / md / GB
            rp = pg / big["dd"]["gbps"]["median"]
            big["fastckpt"]["memdump_gbps"] = pg
            summary.append({"name": "5. 1 GiB: CRIU's page dump alone (pages / CRIU's memdump time) / dd's "
                                    "(for reference)", "unit": "GB/s", "fastckpt": pg, "fastckpt_tool": "fastckpt",
                            "shipped": big["dd"]["gbps"]["median"], "shipped_tool": "dd", "cache": None,
                            "cache_tool": None, "target": None, "ratio_shipped": rp, "ratio_cache": None,
                            "met_shipped": "", "met_cache": ""})
    mf = med("manifest", "fastckpt")
    if mf is not None:
        t = TARGETS["manifest-s-per-gib"]
        summary.append({"name": "9. manifest verification's cost to a 2 GiB restore -d, s per GiB of images "
                                "(wall with the manifest - wall without it, per round; absolute)", "unit": "s/GiB",
                        "fastckpt": mf, "fastckpt_tool": "fastckpt", "shipped": None, "shipped_tool": None,
                        "cache": None, "cache_tool": None, "target": t, "ratio_shipped": None, "ratio_cache": None,
                        "met_shipped": "", "met_cache": _met(mf, t), "samples": s["manifest"]["fastckpt"]})
    mw, mo = med("manifest-with", "fastckpt"), med("manifest-without", "fastckpt")
    if mw is not None and mo is not None:
        b.notes.append(f"row 9: restore -d of the same 2 GiB images, medians: {mw * 1000:.0f} ms with the manifest, "
                       f"{mo * 1000:.0f} ms without it (structure check only)")
    mv = med("manifest-verify", "fastckpt")
    if mv is not None:
        summary.append({"name": "9i. manifest.verify() alone, s per GiB of images (information)", "unit": "s/GiB",
                        "fastckpt": mv, "fastckpt_tool": "fastckpt", "shipped": None, "shipped_tool": None,
                        "cache": None, "cache_tool": None, "target": None, "ratio_shipped": None,
                        "ratio_cache": None, "met_shipped": "", "met_cache": ""})
    by = s.get("bystander") or {}
    if by.get("fastckpt") and by.get("runc-cache"):
        for tool, name in (("fastckpt", "fastckpt"), ("fastckpt-warm", "fastckpt --fast-migrations")):
            if not by.get(tool):
                continue
            f_, o_ = by[tool]["median"], by["runc-cache"]["median"]
            summary.append({"name": f"10. bystander's fork+exit during a checkpoint, median µs: {name} / runc",
                            "unit": "us", "fastckpt": f_, "fastckpt_tool": tool, "shipped": None,
                            "shipped_tool": None, "cache": o_, "cache_tool": "runc-cache", "target": None,
                            "ratio_shipped": None, "ratio_cache": ratio(f_, o_), "met_shipped": "",
                            "met_cache": ""})
    v = med("version", "fastckpt --version")
    if v is not None:
        t = TARGETS["version-ms"]
        summary.append({"name": "6. `fastckpt --version`, median ms (absolute)", "unit": "s", "fastckpt": v,
                        "fastckpt_tool": "fastckpt --version", "shipped": None, "shipped_tool": None, "cache": None,
                        "cache_tool": None, "target": t, "ratio_shipped": None, "ratio_cache": None,
                        "met_shipped": "", "met_cache": _met(v * 1000, t)})
    for c in summary:  # the headline: with the cache for every tool
        ratios.append({"name": c["name"], "ratio_with_cache": c["ratio_cache"], "ratio_as_shipped": c["ratio_shipped"],
                       "absolute": c["fastckpt"] if c["ratio_cache"] is None and c["ratio_shipped"] is None else None,
                       "target": c["target"], "met": (c["met_cache"] == "yes") if c["met_cache"] else None})

    # what the cache is worth on this host: CRIU's own time as shipped minus with the cache
    meta["kernel_probe_s"] = {}
    for name, section, tool in (("the criu CLI, row 4", "api", "criu-cli"), ("runc checkpoint, row 1", "tiny", "runc")):
        a, c = med(f"{section}-criu", f"{tool}-shipped"), med(f"{section}-criu", f"{tool}-cache")
        if a and c:
            meta["kernel_probe_s"][name] = a - c
    meta["kdat_log"] = {sec: d for sec, d in b.kdat.items()}
    meta["dropped_rounds"] = b.dropped
    meta["session_start_s"] = b.session_start
    meta["kdat_hides"] = b.hider.hides if b.hider else 0
    meta["kdat_remade_while_hidden"] = b.hider.remade if b.hider else 0
    return {"meta": meta, "summary": summary, "rows": rows, "big": big, "ratios": ratios, "notes": b.notes,
            "bystander": s.get("bystander")}


NOISY_OTHER, NOISY_OTHER_BIG = 0.25, 0.40  # CPU used by other work above which a section is flagged


def noisy_sections(meta: dict) -> Dict[str, float]:
    out = {}
    for k, v in (meta.get("sections_load") or {}).items():
        if v.get("other", 0) > (NOISY_OTHER_BIG if k == "big" else NOISY_OTHER):
            out[k] = v["other"]
    return out


def _val(x: Optional[float], unit: str) -> str:
    if x is None:
        return "—"
    if unit == "s/GiB":
        return f"{x:.3f} s"
    if unit == "us":
        return f"{x:.0f}"
    return f"{x:.2f}" if unit == "GB/s" else _ms(x)


def _kdat_cell(d: Optional[dict], dropped: int) -> str:
    if not d:
        return ""
    names = {"loaded": "loaded", "absent": "probed"}
    cell = ", ".join(f"{names.get(k, k)} {v}" for k, v in sorted(d.items()))
    return cell + (f" ({dropped} dropped)" if dropped else "")


def render_markdown(rep: dict) -> str:
    m = rep["meta"]
    out = [f"# fastckpt side by side — {m['date']} — cgroup layout: {m.get('layout', '?')}", ""]
    out.append(f"Machine: {m['cpus']} CPUs, kernel {m['kernel']}; CRIU {m['criu']}; {m['runc']}; "
               f"fastckpt {m['fastckpt']} (commit {m.get('git_commit', '?')}"
               f"{', src/ with uncommitted changes' if m.get('src_modified') else ''}); Python {m['python']}. "
               f"/run is {m['run_fstype']}; load average {m['loadavg_start']} at start, {m['loadavg_end']} at end; "
               f"run took {m['duration_s']:.0f} s.")
    out.append("")
    noisy = noisy_sections(m)
    if noisy:
        out.append("**Noisy run**: other work on the machine used " +
                   ", ".join(f"{v:.0%} of the CPUs during {k}" for k, v in noisy.items()) +
                   f" (more than {NOISY_OTHER:.0%}; {NOISY_OTHER_BIG:.0%} for big, whose own containers fill 1 GiB "
                   "each): those rows' times are unreliable. See \"Conditions\" at the end.")
        out.append("")
    probes = m.get("kernel_probe_s") or {}
    probe = ""
    if probes:
        probe = ("; what that costs here, CRIU's own time as shipped minus with the cache (medians): " +
                 ", ".join(f"{v * 1000:.0f} ms ({k})" for k, v in probes.items()) +
                 " (row 4's, with 3x the rounds of milliseconds each, is the less noisy)")
    tmpfs = m.get("run_fstype") == "tmpfs"
    out.append(
        "**Two comparisons.** *As shipped*: runc, pycriu and the criu CLI as they run on this host without "
        "fastckpt — CRIU's kernel-probe cache /run/criu.kdat is renamed away for just that one command and back "
        "right after, so " + ("CRIU re-probes the kernel at its start, as it does on this host whose /run is "
                              f"not a tmpfs (CRIU only writes its cache on a tmpfs)" if not tmpfs else
                              "CRIU probes the kernel at its start (on this host /run is a tmpfs, where CRIU keeps "
                              "its own cache: as shipped, the tools would normally have it)") +
        probe + ". *With the cache*: the same tools with the cache fastckpt wrote "
        "left in place (once fastckpt has run on a host, runc, pycriu and criu read it too): the conservative "
        "comparison, and **the headline**: the \"met\" column judges the with-cache ratio (issue 13's targets; on "
        "the unified layout every ratio to runc must be <= 0.80). The as-shipped columns are information. "
        "fastckpt's own rows always run with its cache and without the cgroup warm-up (off by default); the "
        "rows marked \"w\" are the warm-up (--fast-migrations), as information. Which comparison a reader's "
        "host gets is in benchmarks/README.md (\"which gains depend on the host\").")
    out.append("")
    if rep.get("summary"):
        out.append("| comparison | fastckpt | other, with fastckpt's cache | ratio (headline) | target | met | "
                   "other, as shipped | ratio |")
        out.append("|---|---:|---:|---:|---|---|---:|---:|")
        for c in rep["summary"]:
            u = c["unit"]
            unit = " ms" if "`fastckpt --version`" in c["name"] else (" s" if u == "s/GiB" else "")
            out.append(f"| {c['name']} | {_val(c['fastckpt'], u)} | {_val(c['cache'], u)} | {_r(c['ratio_cache'])} | "
                       f"{_target(c['target'])}{unit} | {c['met_cache'] or c['met_shipped']} | "
                       f"{_val(c['shipped'], u)} | {_r(c['ratio_shipped'])} |")
        out.append("")
        out.append("Times are medians in ms (row 10: µs of the bystander's fork+exit+waitpid); ratio = fastckpt's median / the other's (for the 1 GiB rows: "
                   "fastckpt's throughput / the other's, higher is better). `fastckpt.Session` is a warm "
                   "`criu service` started once per session" +
                   (f" (its start, {_ms(m['session_start_s'])} ms, is not in the times)" if m.get("session_start_s")
                    else "") + "; `fastckpt.checkpoint()` starts a CRIU per call, like pycriu.")
        out.append("")
    out.append("## All rows")
    out.append("")
    out.append(f"{m['rounds']} interleaved rounds per row (each tool measured once per round, the first tool rotated "
               f"each round, one warm-up round discarded); row 4 and 6 (milliseconds each): {3 * m['rounds']} rounds; "
               f"1 GiB rows: {m['big_rounds']} rounds (no warm-up). Wall time of the whole command (or API call), "
               "ms. Cache = whether CRIU had /run/criu.kdat; kdat per CRIU's log = in how many counted rounds CRIU's "
               "log says it loaded the cache or found none and probed the kernel (a round where that was not as the "
               "row says is dropped). CRIU's own = the last timestamp of CRIU's log (median): CRIU's time from its "
               "start to its end; outside CRIU = the median of wall time minus that, round by round (interpreter "
               "start, imports, the tool's own work, process spawn and exit). fastckpt/this = fastckpt's median / "
               "this row's.")
    out.append("")
    if rep["rows"]:
        out.append("| benchmark | tool | CRIU's kernel-probe cache | median | min | max | CRIU's own (log) | "
                   "outside CRIU | fastckpt/this | kdat per CRIU's log |")
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rep["rows"]:
        out.append(f"| {row['group']} | {row['label']} | {CACHE_LABEL.get(row['cache'], '')} | {_ms(row['median'])} | "
                   f"{_ms(row['min'])} | {_ms(row['max'])} | {_ms(row.get('criu_median'))} | "
                   f"{_ms(row.get('outside_criu_median'))} | {'' if row.get('ratio') is None else _r(row['ratio'])} | "
                   f"{_kdat_cell(row.get('kdat_log'), row.get('dropped', 0))} |")
    big = rep["big"]
    if big:
        out.append("")
        out.append("## 5. 1 GiB of non-zero memory in a container, images on a fresh tmpfs")
        out.append("")
        out.append("Throughput = bytes of pages-*.img / wall time of the command (GB = 10⁹ bytes); dd: "
                   f"`dd if=/dev/zero of=<fresh tmpfs>/x bs=1M count={BIG_MIB}`, its wall time. "
                   "CRIU frozen = CRIU's frozen_time (stats-dump): from CRIU's freeze to the end of the dump. "
                   "fastckpt frozen = fastckpt's own `CheckpointResult.frozen_time` (`--print-stats` → "
                   "frozen_time_ms): fastckpt freezes the container's cgroup itself once CRIU is up, just before "
                   "CRIU gets its request, until the dump's end — the time the container really stood still. "
                   "runc leaves the freeze to CRIU, so for runc the container's frozen time is CRIU's. "
                   "`--print-stats` imports protobuf to decode CRIU's statistics, which costs its own wall time: "
                   "so fastckpt's frozen time comes from a `fastckpt checkpoint --print-stats` of its own in each "
                   "round, and the throughput ratios use the plain `fastckpt checkpoint`.")
        out.append("")
        out.append("| tool | CRIU's kernel-probe cache | wall median (min–max) ms | GB/s median (min–max) | "
                   "CRIU's own (log) ms | CRIU frozen ms | fastckpt frozen ms | memdump / memwrite ms | "
                   "fastckpt/this GB/s | target | met |")
        out.append("|---|---|---|---|---:|---:|---:|---|---:|---|---|")
        names = {"fastckpt": "`fastckpt checkpoint`", "fastckpt-stats": "`fastckpt checkpoint --print-stats`",
                 "runc-shipped": "`runc checkpoint`", "runc-cache": "`runc checkpoint`", "dd": "dd (the ceiling)"}
        tgt = {"runc-shipped": TARGETS["big-runc"], "runc-cache": TARGETS["big-runc"], "dd": TARGETS["big-dd"]}
        for tool, d in big.items():
            w, g = d["wall"], d["gbps"]
            med_of = lambda k: _ms(d[k]["median"]) if k in d else "—"  # noqa: E731
            mm = (f"{_ms(d['memdump_time']['median'])} / {_ms(d['memwrite_time']['median'])}"
                  if "memdump_time" in d and "memwrite_time" in d else "—")
            ratio = d.get("ratio")
            t = tgt.get(tool)
            met = _met(ratio, t)
            if tool == "runc-cache" and met:
                met = f"(with cache: {met})"
            out.append(f"| {names[tool]} | {CACHE_LABEL.get(d.get('cache'), '—')} | {_ms(w['median'])} "
                       f"({_ms(w['min'])}–{_ms(w['max'])}) | {g['median']:.2f} ({g['min']:.2f}–{g['max']:.2f}) | "
                       f"{med_of('criu')} | {med_of('frozen')} | {med_of('ownfrozen')} | {mm} | "
                       f"{'' if ratio is None else _r(ratio)} | {_target(t)} | {met} |")
        srcs = sorted({d["stats_source"] for d in big.values() if d.get("stats_source")})
        if srcs:
            out.append("")
            out.append(f"CRIU's statistics read through: {', '.join(srcs)}. kdat per CRIU's log: " +
                       ", ".join(f"{names[t]}{' as shipped' if shipped(t) else ''} "
                                 f"{_kdat_cell(d.get('kdat_log'), d.get('dropped', 0))}"
                                 for t, d in big.items() if d.get("kdat_log")) + ".")
    by = rep.get("bystander")
    if by:
        out.append("")
        out.append("## 10. A bystander's fork+exit latency during a checkpoint")
        out.append("")
        out.append("A small C program (benchmarks/warm_bystander.py's) does fork()+_exit()+waitpid() back to back "
                   "(200 µs apart) all through the section; its samples that start while a tiny container is "
                   "checkpointed by each tool (or, for idle, in a 100 ms window with nothing running) are counted. µs.")
        out.append("")
        out.append("| while | samples | median | p90 | p99 | max |")
        out.append("|---|---:|---:|---:|---:|---:|")
        names = {"fastckpt": "`fastckpt checkpoint`", "fastckpt-warm": "`fastckpt checkpoint --fast-migrations`",
                 "runc-cache": "`runc checkpoint` (with the cache)", "idle": "idle (no checkpoint)"}
        for t, d in by.items():
            f = lambda k: "—" if d.get(k) is None else f"{d[k]:.0f}"  # noqa: E731
            out.append(f"| {names.get(t, t)} | {d['n']} | {f('median')} | {f('p90')} | {f('p99')} | {f('max')} |")
    out.append("")
    out.append("## Conditions")
    out.append("")
    out.append(f"The cache was hidden {m.get('kdat_hides', 0)} times (renamed to /run/criu.kdat.bench-hidden for "
               "one command, renamed back right after)" +
               (f"; {m['kdat_remade_while_hidden']} time(s) another process made a new one meanwhile (kept; "
                "the round, if CRIU loaded it, dropped)" if m.get("kdat_remade_while_hidden") else "") +
               (f". At the start a cache left hidden by an earlier run was put back: {m['kdat_recovered']}"
                if m.get("kdat_recovered") else "") + ".")
    out.append("")
    sl = m.get("sections_load") or {}
    if sl:
        if m.get("quiet_wait_s") is not None and os.environ.get("BENCH_WAIT_QUIET"):
            out.append(f"Between rounds the run waited {m['quiet_wait_s']:.0f} s in all for other work on the machine "
                       f"to calm down (BENCH_WAIT_QUIET); {m.get('rounds_started_busy', 0)} round(s) started on a busy "
                       "machine all the same.")
            out.append("")
        out.append(f"CPU busy (all CPUs, whole machine) before the run: {m.get('cpu_busy_before', 0):.0%}. During each "
                   "section (its rounds, not the waits for quiet), busy in all / used by processes other than the "
                   "benchmark and the tools it ran "
                   "(other work on the machine: noise): " +
                   ", ".join(f"{k} {v['cpu_busy']:.0%} / {v['other']:.0%}" for k, v in sl.items()) +
                   ". \"Other\" also counts what runs outside our process tree on our behalf: the containers' "
                   "processes (in big: the 1 GiB processes filling their memory, and the kernel freeing it), "
                   "and fastckpt.Session's `criu service` (in api).")
        out.append("")
    for n in rep["notes"]:
        out.append(f"- {n}")
    return "\n".join(out) + "\n"


def _version_line(cmd: Sequence[str], prefix: str = "") -> str:
    try:
        r = bl.run_quiet(cmd, timeout=30)
        for line in r.stdout.splitlines():
            if line.strip() and (not prefix or line.startswith(prefix)):
                return line.strip()[len(prefix):].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "?"


def collect_meta(rounds: int, big_rounds: int) -> dict:
    import fastckpt

    run_fs = _version_line(["stat", "-f", "-c", "%T", "/run"])
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "rounds": rounds, "big_rounds": big_rounds, "cpus": os.cpu_count(),
        "kernel": platform.release(), "python": platform.python_version(),
        "criu": _version_line(["criu", "--version"], "Version:"), "runc": _version_line(["runc", "--version"]),
        "fastckpt": fastckpt.__version__, "fastckpt_bin": bl.FASTCKPT, "run_fstype": run_fs,
        "layout": cgroup_layout(),
        "kdat_cache_present": os.path.exists(bl.KDAT),
        "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3]),
        "git_commit": _version_line(["git", "-C", bl.REPO, "rev-parse", "--short", "HEAD"]),
        "src_modified": bool(bl.run_quiet(["git", "-C", bl.REPO, "status", "--porcelain", "--", "src", "ext"]).stdout
                             .strip()),
    }


def save(rep: dict, md: str, partial: bool) -> List[str]:
    """latest.* and a timestamped copy in benchmarks/results (latest-unified.* on the unified layout);
    a partial run (BENCH_ONLY) only in /tmp."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    sfx = "-unified" if rep["meta"].get("layout") == "unified" else ""
    where = "/tmp" if partial else RESULTS
    names = [f"fastckpt-bench-partial{sfx}-{stamp}"] if partial else [f"latest{sfx}", f"{stamp}{sfx}"]
    os.makedirs(where, exist_ok=True)
    paths = []
    for n in names:
        for ext, data in (("md", md), ("json", json.dumps(rep, indent=1) + "\n")):
            p = os.path.join(where, f"{n}.{ext}")
            with open(p, "w") as f:
                f.write(data)
            paths.append(p)
    return paths


def main() -> int:
    why = bl.why_not_runnable()
    if why:
        log(f"side_by_side: cannot run: {why}")
        return 1
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    rounds = env_int("BENCH_ROUNDS", 5 if quick else 15, 3 if quick else 10)
    big_rounds = env_int("BENCH_BIG_ROUNDS", 2 if quick else 5, 1 if quick else 3)
    only = [x.strip() for x in os.environ.get("BENCH_ONLY", "").split(",") if x.strip()]
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        log(f"side_by_side: unknown BENCH_ONLY section(s) {bad}: choose from {', '.join(SECTIONS)}")
        return 2
    sections = only or list(SECTIONS)

    # the kernel-probe cache is hidden for a few ms at a time: whatever ends this run, it is put back
    hider = bl.KdatHider()  # puts back a cache an earlier run left hidden (killed with SIGKILL)

    def on_signal(signum, frame):
        hider.restore()
        raise KeyboardInterrupt

    stops = [sig for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)]
    old_handlers = {sig: signal.signal(sig, on_signal) for sig in stops}
    b = Bench(rounds, big_rounds)
    b.hider = hider
    b.jan.on_close(hider.restore)
    t0 = time.monotonic()
    failed = None
    try:
        quiet = env_int("BENCH_WAIT_QUIET", 0, 0)
        meta = collect_meta(rounds, big_rounds)
        meta["kdat_recovered"] = hider.recovered
        meta["cpu_busy_before"] = round(wait_quiet(quiet) if quiet else cpu_busy(1.0), 3)
        b.quiet_budget = float(quiet)
        meta["sections_load"] = {}
        b.setup()
        for sec in sections:
            log(f"side_by_side: {sec} ({time.monotonic() - t0:.0f} s)")
            b.meter = LoadMeter()
            getattr(b, f"sec_{sec}")()
            meta["sections_load"][sec] = b.meter.result()
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as e:
        failed = f"{type(e).__name__}: {e}"
    finally:
        hider.restore()
        for sig in stops:  # a second Ctrl-C must not stop the cleanup
            signal.signal(sig, signal.SIG_IGN)
        try:
            problems = b.jan.close()
        finally:
            hider.restore()
            for sig, old in old_handlers.items():
                signal.signal(sig, old)
    if problems:
        log("side_by_side: cleanup problems: " + "; ".join(problems))
    if failed:
        log(f"side_by_side: FAILED: {failed}")
        return 130 if failed == "interrupted" else 1
    meta["duration_s"] = time.monotonic() - t0
    meta["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    meta["sections"] = sections
    meta["quiet_wait_s"] = b.quiet_waited
    meta["rounds_started_busy"] = b.busy_rounds
    rep = build_report(b, meta)
    meta["noisy_sections"] = noisy_sections(meta)
    md = render_markdown(rep)
    print(md)
    for p in save(rep, md, partial=bool(only)):
        log(f"side_by_side: wrote {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
