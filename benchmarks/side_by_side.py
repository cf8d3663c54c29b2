#!/usr/bin/env python3
"""fastckpt side by side with runc, pycriu and the criu CLI (`make bench`).

One process, N interleaved rounds (BENCH_ROUNDS, default 15, at least 10):
in every round each tool is measured once and the tool that goes first
rotates from round to round, so that the noise of this 2-core machine
falls on all of them alike.  Each section starts with one warm-up round that
is not counted.  Reported: median, min and max of the wall time, and the
ratio fastckpt/other of the medians.

  1  checkpoint of a tiny runc container (a fresh one per tool and round):
     `fastckpt checkpoint` vs `runc checkpoint`; informational: runc without
     CRIU's kernel-probe cache (/run/criu.kdat hidden in a private mount
     namespace) and the cost of that unshare+sh+mount wrapper alone
  2  the same with --leave-running (one container per tool, checkpointed
     again and again into fresh image directories)
  3  restore -d of a fresh checkpoint (made untimed by the same tool)
  4  from Python: fastckpt.checkpoint(pid=..., leave_running=True) vs pycriu
     vs the `criu dump` CLI, of one running process (informational: through
     fastckpt.Session); 3N rounds, like row 6, as each takes milliseconds
  5  a container holding 1 GiB of non-zero memory, images on a fresh tmpfs:
     wall time, throughput (bytes of pages-*.img / wall time), CRIU's frozen
     time; beside `dd if=/dev/zero` into a fresh tmpfs (BENCH_BIG_ROUNDS,
     default 5)
  6  `fastckpt --version` vs `python -c pass` (3N rounds)

Results: a markdown table on stdout and benchmarks/results/latest.{md,json}
plus a timestamped copy.  BENCH_ONLY=tiny,leave,restore,api,big,version runs
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
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402

RESULTS = os.path.join(bl.HERE, "results")
SECTIONS = ("tiny", "leave", "restore", "api", "big", "version")
GB = 1e9  # throughput unit: 10^9 bytes per second
BIG_MIB = 1024

# the project's targets (fastckpt/other of the medians; the 1 GiB rows compare throughputs)
TARGETS = {
    "tiny": ("<=", 0.50),
    "leave": ("<=", 0.45),
    "restore": ("<=", 0.50),
    "api-pycriu": ("<=", 0.35),
    "big-runc": (">=", 0.90),
    "big-dd": (">=", 0.70),
    "version-ms": ("<=", 40.0),
}

NOKDAT_SH = 'mount --bind /dev/null /run/criu.kdat && exec "$@"'


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
        self.samples: Dict[str, Dict[str, List[float]]] = {}  # section -> tool -> values
        self.notes: List[str] = []
        self.base = ""
        self.root = ""
        self.bundle = ""
        self.errdir = ""
        self.pycriu_ok = False
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
        self.base = self.jan.mkdtemp("fastckpt-bench-")
        self.root = os.path.join(self.base, "runc-root")  # private runc root
        os.makedirs(self.root, mode=0o700)
        self.errdir = os.path.join(self.base, "stderr")
        os.makedirs(self.errdir)
        self.bundle = bl.make_bundle(os.path.join(self.base, "bundle-tiny"))
        try:
            import pycriu  # noqa: F401
            self.pycriu_ok = True
        except ImportError:
            self.notes.append("pycriu is not installed: its row is missing")

    def image_dir(self) -> str:
        return self.jan.mkdtemp("img-", self.base)

    # --- commands
    def ckpt_cmd(self, tool: str, cid: str, img: str, leave_running: bool = False) -> List[str]:
        lr = ["--leave-running"] if leave_running else []
        if tool == "fastckpt":
            return [bl.FASTCKPT, "--root", self.root, "checkpoint", "--image-path", img, *lr, cid]
        runc = ["runc", "--root", self.root, "checkpoint", "--image-path", img, *lr, cid]
        if tool == "runc":
            return runc
        if tool == "runc-nokdat":
            return ["unshare", "-m", "sh", "-c", NOKDAT_SH, "sh", *runc]
        raise ValueError(tool)

    def restore_cmd(self, tool: str, cid: str, img: str) -> List[str]:
        exe = [bl.FASTCKPT] if tool == "fastckpt" else ["runc"]
        return exe + ["--root", self.root, "restore", "-d", "--image-path", img, "-b", self.bundle, cid]

    def check_kdat(self, tool: str, log_path: str) -> None:
        loaded = bl.kdat_loaded(log_path)
        if tool == "runc-nokdat" and loaded:
            raise RuntimeError(f"CRIU loaded the kdat cache although it was hidden ({log_path})")
        self.samples.setdefault("kdat-loaded", {}).setdefault(tool, []).append(bool(loaded))

    # --- 1: checkpoint of a tiny container (+ runc without the kdat cache)
    def sec_tiny(self) -> None:
        tools = ["fastckpt", "runc", "runc-nokdat", "unshare-overhead"]
        for r in range(-1, self.rounds):
            self.gate()
            ids = {t: bl.start_container(self.jan, self.root, self.bundle) for t in tools if t != "unshare-overhead"}
            time.sleep(0.05)
            for t in rotate(tools, r):
                if t == "unshare-overhead":
                    dt = bl.run_timed(["unshare", "-m", "sh", "-c", NOKDAT_SH, "sh", "true"], errfile=self.errfile(t))
                    self.record("tiny", t, dt, r >= 0)
                    continue
                img = self.image_dir()
                log_path = os.path.join(img, bl.DUMP_LOG)
                dt = bl.run_timed(self.ckpt_cmd(t, ids[t], img), errfile=self.errfile(t), logs=[log_path])
                self.record("tiny", t, dt, r >= 0)
                self.record("tiny-criu", t, dump_log_seconds(log_path) or 0.0, r >= 0)
                if r >= 0:
                    self.check_kdat(t, log_path)
                self.jan.release_dir(img)
            for cid in ids.values():
                self.jan.release_container(self.root, cid)
            self.progress("tiny", r)

    # --- 2: --leave-running, one container per tool
    def sec_leave(self) -> None:
        tools = ["fastckpt", "runc"]
        ids = {t: bl.start_container(self.jan, self.root, self.bundle) for t in tools}
        time.sleep(0.05)
        for r in range(-1, self.rounds):
            self.gate()
            for t in rotate(tools, r):
                img = self.image_dir()
                log_path = os.path.join(img, bl.DUMP_LOG)
                dt = bl.run_timed(self.ckpt_cmd(t, ids[t], img, leave_running=True), errfile=self.errfile(t),
                                  logs=[log_path])
                self.record("leave", t, dt, r >= 0)
                self.record("leave-criu", t, dump_log_seconds(log_path) or 0.0, r >= 0)
                self.jan.release_dir(img)
            self.progress("leave", r)
        for t in tools:
            if not os.path.exists(f"/proc/{bl.container_pid(self.root, ids[t])}"):
                raise RuntimeError(f"the {t} container died during the --leave-running checkpoints")
            self.jan.release_container(self.root, ids[t])

    # --- 3: restore -d
    def sec_restore(self) -> None:
        tools = ["fastckpt", "runc"]
        for r in range(-1, self.rounds):
            self.gate()
            imgs, restored = {}, {}
            for t in tools:  # untimed: each tool checkpoints a fresh container of its own
                cid = bl.start_container(self.jan, self.root, self.bundle)
                time.sleep(0.05)
                img = imgs[t] = self.image_dir()
                bl.run_timed(self.ckpt_cmd(t, cid, img), errfile=self.errfile(t + "-prep"),
                             logs=[os.path.join(img, bl.DUMP_LOG)])
                self.jan.release_container(self.root, cid)
            for t in rotate(tools, r):
                rid = restored[t] = bl.new_id("fcbench-r")
                self.jan.add_container(self.root, rid)
                log_path = os.path.join(imgs[t], "restore.log")
                dt = bl.run_timed(self.restore_cmd(t, rid, imgs[t]), errfile=self.errfile(t + "-restore"),
                                  logs=[log_path])
                self.jan.remember_cgroups(self.root, rid)
                self.record("restore", t, dt, r >= 0)
                self.record("restore-criu", t, dump_log_seconds(log_path) or 0.0, r >= 0)
            for t in tools:
                pid = bl.container_pid(self.root, restored[t])
                if not os.path.exists(f"/proc/{pid}"):
                    raise RuntimeError(f"the container restored by {t} is not running")
                self.jan.release_container(self.root, restored[t])
                self.jan.release_dir(imgs[t])
            self.progress("restore", r)

    # --- 4: from Python, one process, --leave-running
    def sec_api(self) -> None:
        import fastckpt

        proc = self.jan.spawn([shutil.which("sleep") or "sleep", "infinity"])
        exe = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
        bl.wait_until(lambda: os.path.realpath(f"/proc/{proc.pid}/exe") == exe, "the sleep process to exec")
        pid = proc.pid
        tools = ["fastckpt-api", "pycriu", "criu-cli"] if self.pycriu_ok else ["fastckpt-api", "criu-cli"]

        def api(img: str) -> float:
            t0 = time.perf_counter()
            fastckpt.checkpoint(pid=pid, leave_running=True, image_path=img)
            return time.perf_counter() - t0

        def pyc(img: str) -> float:
            import pycriu

            t0 = time.perf_counter()
            fd = os.open(img, os.O_RDONLY | os.O_DIRECTORY)
            try:
                c = pycriu.criu()
                c.use_binary("criu")
                c.opts.images_dir_fd = fd
                c.opts.pid = pid
                c.opts.leave_running = True
                c.opts.log_file = bl.DUMP_LOG
                c.opts.log_level = 4
                c.dump()
            finally:
                os.close(fd)
            return time.perf_counter() - t0

        def cli(img: str) -> float:
            return bl.run_timed(["criu", "dump", "-t", str(pid), "-D", img, "--leave-running", "-o", bl.DUMP_LOG,
                                 "-v4"], errfile=self.errfile("criu-cli"), logs=[os.path.join(img, bl.DUMP_LOG)])

        fns: Dict[str, Callable[[str], float]] = {"fastckpt-api": api, "pycriu": pyc, "criu-cli": cli}
        session = None
        if getattr(fastckpt, "Session", None) is not None:
            # informational: fastckpt's warm CRIU service for repeated API calls (started untimed)
            session = fastckpt.Session()
            close_session = self.jan.on_close(session.close)

            def ses(img: str) -> float:
                t0 = time.perf_counter()
                session.checkpoint(pid=pid, leave_running=True, image_path=img)
                return time.perf_counter() - t0

            fns["fastckpt-session"] = ses
            tools.append("fastckpt-session")
        for r in range(-1, self.fast_rounds):
            if r % 5 == 0:
                self.gate()
            for t in rotate(tools, r):
                img = self.image_dir()
                dt = fns[t](img)
                if not any(n.startswith("pages-") for n in os.listdir(img)):
                    raise RuntimeError(f"{t} wrote no pages image in {img}")
                self.record("api", t, dt, r >= 0)
                self.record("api-criu", t, dump_log_seconds(os.path.join(img, bl.DUMP_LOG)) or 0.0, r >= 0)
                self.jan.release_dir(img)
            self.progress("api", r, self.fast_rounds)
        if proc.poll() is not None:
            raise RuntimeError("the process died during the --leave-running checkpoints")
        if session is not None:
            self.jan.release_callback(close_session)
        self.jan.release_proc(proc)

    # --- 5: 1 GiB of memory, images on tmpfs, beside dd
    def sec_big(self) -> None:
        bindir = self.jan.mkdtemp("bigmem-", self.base)
        binary = bl.build_bigmem(bindir)
        bundle = bl.make_bundle(os.path.join(self.base, "bundle-big"), args=["/bigmem", str(BIG_MIB), "/tmp/ready"])
        shutil.copy2(binary, os.path.join(bundle, "rootfs", "bigmem"))
        ready = os.path.join(bundle, "rootfs", "tmp", "ready")
        tools = ["fastckpt", "runc", "dd"]
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
                if os.path.exists(ready):
                    os.unlink(ready)
                cid = bl.start_container(self.jan, self.root, bundle)
                pid = bl.container_pid(self.root, cid)
                bl.wait_until(lambda: os.path.exists(ready) or not os.path.exists(f"/proc/{pid}"),
                              "the 1 GiB process to fill its memory", timeout=120, interval=0.02)
                if not os.path.exists(ready):
                    raise RuntimeError("the 1 GiB process died before it was ready")
                tm = self.jan.mount_tmpfs("2g", self.base)
                img = os.path.join(tm, "img")
                os.mkdir(img, 0o700)
                time.sleep(0.2)
                log_path = os.path.join(img, bl.DUMP_LOG)
                dt = bl.run_timed(self.ckpt_cmd(t, cid, img), errfile=self.errfile(t + "-big"), logs=[log_path])
                nbytes = bl.pages_bytes(img)
                if nbytes < BIG_MIB * 2**20:
                    raise RuntimeError(f"{t} wrote only {nbytes} bytes of pages for a 1 GiB process")
                stats, source = bl.dump_stats(img, log_path)
                self.record("big", t, dt)
                self.record("big-gbps", t, nbytes / dt / GB)
                self.record("big-criu", t, dump_log_seconds(log_path) or 0.0)
                if stats and "frozen_time" in stats:
                    self.record("big-frozen", t, stats["frozen_time"] / 1e6)
                for k in ("freezing_time", "memdump_time", "memwrite_time"):
                    if stats and k in stats:
                        self.record(f"big-{k}", t, stats[k] / 1e6)
                self.samples["big-meta"]["pages_bytes"].setdefault(t, []).append(nbytes)
                self.samples["big-meta"]["stats_source"][t] = source
                self.jan.release_mount(tm)
                self.jan.release_container(self.root, cid)
            self.progress("big", r, self.big_rounds)

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


# (section, tool, group, label, ratio = median(NUM) / median(DEN) with (NUM, DEN), target key)
ROWS = [
    ("tiny", "fastckpt", "1. checkpoint, tiny container", "`fastckpt checkpoint`", None, None),
    ("tiny", "runc", "", "`runc checkpoint`", ("fastckpt", "runc"), "tiny"),
    ("leave", "fastckpt", "2. checkpoint --leave-running, tiny container", "`fastckpt checkpoint --leave-running`",
     None, None),
    ("leave", "runc", "", "`runc checkpoint --leave-running`", ("fastckpt", "runc"), "leave"),
    ("restore", "fastckpt", "3. restore -d, tiny container", "`fastckpt restore -d`", None, None),
    ("restore", "runc", "", "`runc restore -d`", ("fastckpt", "runc"), "restore"),
    ("api", "fastckpt-api", "4. Python, checkpoint --leave-running of a process",
     "`fastckpt.checkpoint(pid=…, leave_running=True)`", None, None),
    ("api", "pycriu", "", "pycriu `criu().dump()`", ("fastckpt-api", "pycriu"), "api-pycriu"),
    ("api", "criu-cli", "", "`criu dump -t PID --leave-running -v4` (CLI)", ("fastckpt-api", "criu-cli"), None),
    ("version", "fastckpt --version", "6. CLI start", "`fastckpt --version`", None, "version-ms"),
    ("version", "python -c pass", "", "`python -c pass` (the floor)", ("fastckpt --version", "python -c pass"), None),
    ("tiny", "runc-nokdat", "info: runc without the kdat cache", "`runc checkpoint`, /run/criu.kdat hidden "
     "(unshare -m + sh + mount wrapper)", ("fastckpt", "runc-nokdat"), None),
    ("tiny", "unshare-overhead", "", "that wrapper alone (`unshare -m sh -c 'mount --bind …; exec true'`)", None,
     None),
    ("api", "fastckpt-session", "info: row 4 through fastckpt.Session (ratio: vs pycriu)",
     "`Session().checkpoint(pid=…, leave_running=True)` (warm `criu service`)", ("fastckpt-session", "pycriu"),
     None),
]


def build_report(b: Bench, meta: dict) -> dict:
    s = b.samples
    rows, ratios = [], []

    def med(section, tool):
        xs = s.get(section, {}).get(tool)
        return bl.summarize(xs)["median"] if xs else None

    for section, tool, group, label, pair, tkey in ROWS:
        xs = s.get(section, {}).get(tool)
        if not xs:
            continue
        summ = bl.summarize(xs)
        row = {"section": section, "tool": tool, "group": group, "label": label, "unit": "s", "samples": xs, **summ,
               "criu_median": med(f"{section}-criu", tool)}
        cr = s.get(f"{section}-criu", {}).get(tool)
        if cr and len(cr) == len(xs) and all(cr):
            # the tool's own time: wall time minus CRIU's, round by round
            row["outside_criu_median"] = bl.summarize([w - c for w, c in zip(xs, cr)])["median"]
        if pair:
            num, den = med(section, pair[0]), med(section, pair[1])
            row["ratio"] = num / den if num and den else None
            row["ratio_of"] = list(pair)
            target = TARGETS.get(tkey) if tkey else None
            row["target"] = target
            row["met"] = _met(row["ratio"], target) if target else ""
            ratios.append({"name": f"{section}: {pair[0]} / {pair[1]}", "ratio": row["ratio"],
                           "target": target, "met": row["met"] == "yes" if target else None})
        elif tkey == "version-ms":
            target = TARGETS[tkey]
            row["target"] = target
            row["met"] = _met(summ["median"] * 1000, target)
            ratios.append({"name": "fastckpt --version median ms", "ratio": summ["median"] * 1000,
                           "target": target, "met": row["met"] == "yes"})
        rows.append(row)

    big = {}
    if s.get("big"):
        for tool in ("fastckpt", "runc", "dd"):
            if tool not in s["big"]:
                continue
            big[tool] = {
                "wall": bl.summarize(s["big"][tool]), "wall_samples": s["big"][tool],
                "gbps": bl.summarize(s["big-gbps"][tool]), "gbps_samples": s["big-gbps"][tool],
            }
            for k in ("criu", "frozen", "freezing_time", "memdump_time", "memwrite_time"):
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
        for other, tkey in (("runc", "big-runc"), ("dd", "big-dd")):
            o = big.get(other, {}).get("gbps", {}).get("median")
            if fc and o:
                ratio = fc / o
                big[other]["ratio"] = ratio
                big[other]["target"] = TARGETS[tkey]
                big[other]["met"] = _met(ratio, TARGETS[tkey])
                ratios.append({"name": f"1 GiB throughput: fastckpt / {other}", "ratio": ratio,
                               "target": TARGETS[tkey], "met": big[other]["met"] == "yes"})
    kd = s.get("kdat-loaded", {})
    meta["kdat_loaded_per_tool"] = {t: f"{sum(v)}/{len(v)}" for t, v in kd.items()}
    return {"meta": meta, "rows": rows, "big": big, "ratios": ratios, "notes": b.notes}


def render_markdown(rep: dict) -> str:
    m = rep["meta"]
    out = [f"# fastckpt side by side — {m['date']}", ""]
    out.append(f"{m['rounds']} interleaved rounds per row (first tool rotated each round, one warm-up round "
               f"discarded); rows 4 and 6 (milliseconds each): {3 * m['rounds']} rounds; 1 GiB rows: "
               f"{m['big_rounds']} rounds (no warm-up). Times in ms, wall time of the whole command "
               f"(or API call). Ratio = fastckpt's median / this row's median "
               "(for the Session row: its median / pycriu's). CRIU's own = the last timestamp of CRIU's log "
               "(median), i.e. CRIU's time from its start to its end; outside CRIU = the median of wall time minus "
               "that, round by round (interpreter start, imports, the tool's own work, process spawn and exit).")
    out.append("")
    out.append(f"Machine: {m['cpus']} CPUs, kernel {m['kernel']}; CRIU {m['criu']}; {m['runc']}; "
               f"fastckpt {m['fastckpt']} (commit {m.get('git_commit', '?')}"
               f"{', src/ with uncommitted changes' if m.get('src_modified') else ''}); Python {m['python']}. /run is {m['run_fstype']}; "
               f"load average {m['loadavg_start']} at start, {m['loadavg_end']} at end; run took "
               f"{m['duration_s']:.0f} s.")
    out.append("")
    if rep["rows"]:
        out.append("| benchmark | tool | median | min | max | CRIU's own (log) | outside CRIU | ratio | target | met |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for row in rep["rows"]:
        ratio = row.get("ratio")
        out.append(f"| {row['group']} | {row['label']} | {_ms(row['median'])} | {_ms(row['min'])} | "
                   f"{_ms(row['max'])} | {_ms(row.get('criu_median'))} | {_ms(row.get('outside_criu_median'))} | "
                   f"{'' if ratio is None else f'{ratio:.2f}'} | {_target(row.get('target'))} | "
                   f"{row.get('met', '')} |")
    big = rep["big"]
    if big:
        out.append("")
        out.append("## 5. 1 GiB of non-zero memory in a container, images on a fresh tmpfs")
        out.append("")
        out.append("Throughput = bytes of pages-*.img / wall time of the command (GB = 10⁹ bytes); dd: "
                   f"`dd if=/dev/zero of=<fresh tmpfs>/x bs=1M count={BIG_MIB}`, its wall time. "
                   "Frozen = CRIU's frozen_time from stats-dump (or dump.log): from CRIU's freeze to the end of "
                   "the dump.  fastckpt freezes the container's cgroup itself just before it starts CRIU, so for "
                   "fastckpt the container is frozen a little longer than that (CRIU's start).")
        out.append("")
        out.append("| tool | wall median (min–max) ms | GB/s median (min–max) | CRIU's own (log) ms | "
                   "CRIU frozen ms | memdump / memwrite ms | fastckpt/this GB/s | target | met |")
        out.append("|---|---|---|---:|---:|---|---:|---|---|")
        names = {"fastckpt": "`fastckpt checkpoint`", "runc": "`runc checkpoint`", "dd": "dd (the ceiling)"}
        for tool, d in big.items():
            w, g = d["wall"], d["gbps"]
            frozen = _ms(d["frozen"]["median"]) if "frozen" in d else "—"
            crlog = _ms(d["criu"]["median"]) if "criu" in d else "—"
            mm = (f"{_ms(d['memdump_time']['median'])} / {_ms(d['memwrite_time']['median'])}"
                  if "memdump_time" in d and "memwrite_time" in d else "—")
            ratio = d.get("ratio")
            out.append(f"| {names[tool]} | {_ms(w['median'])} ({_ms(w['min'])}–{_ms(w['max'])}) | "
                       f"{g['median']:.2f} ({g['min']:.2f}–{g['max']:.2f}) | {crlog} | {frozen} | {mm} | "
                       f"{'' if ratio is None else f'{ratio:.2f}'} | {_target(d.get('target'))} | "
                       f"{d.get('met', '')} |")
    srcs = sorted({d["stats_source"] for d in big.values() if d.get("stats_source")})
    if srcs:
        out.append("")
        out.append(f"CRIU's statistics read through: {', '.join(srcs)}.")
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
    kd = m.get("kdat_loaded_per_tool") or {}
    if kd:
        out.append("CRIU loaded /run/criu.kdat (per its dump.log, counted rounds): " +
                   ", ".join(f"{t} {v}" for t, v in sorted(kd.items())) + ".")
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
        "kdat_cache_present": os.path.exists(bl.KDAT),
        "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3]),
        "git_commit": _version_line(["git", "-C", bl.REPO, "rev-parse", "--short", "HEAD"]),
        "src_modified": bool(bl.run_quiet(["git", "-C", bl.REPO, "status", "--porcelain", "--", "src", "ext"]).stdout
                             .strip()),
    }


def save(rep: dict, md: str, partial: bool) -> List[str]:
    """latest.* and a timestamped copy in benchmarks/results; a partial run (BENCH_ONLY) only in /tmp."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    where = "/tmp" if partial else RESULTS
    names = [f"fastckpt-bench-partial-{stamp}"] if partial else ["latest", stamp]
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
    rounds = env_int("BENCH_ROUNDS", 15, 10)
    big_rounds = env_int("BENCH_BIG_ROUNDS", 5, 3)
    only = [x.strip() for x in os.environ.get("BENCH_ONLY", "").split(",") if x.strip()]
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        log(f"side_by_side: unknown BENCH_ONLY section(s) {bad}: choose from {', '.join(SECTIONS)}")
        return 2
    sections = only or list(SECTIONS)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    b = Bench(rounds, big_rounds)
    t0 = time.monotonic()
    failed = None
    try:
        quiet = env_int("BENCH_WAIT_QUIET", 0, 0)
        meta = collect_meta(rounds, big_rounds)
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
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            problems = b.jan.close()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
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
    md = render_markdown(rep)
    print(md)
    for p in save(rep, md, partial=bool(only)):
        log(f"side_by_side: wrote {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
