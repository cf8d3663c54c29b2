"""What fastckpt's cgroup warm-up (--fast-migrations, ext/warm.h) costs the other processes of the host.

While it runs, a thread of fastckpt rewrites its own pid into cgroup.procs every 3 ms: each write takes
cgroup_mutex and the host-wide cgroup_threadgroup_rwsem for writing, and keeps that rwsem off its
fast path, so every fork, exec and exit on the host waits behind it. Measured here: the latency of
fork()+_exit()+waitpid() in a bystander process (a small C program, not fastckpt's child, sampling
back to back) while fastckpt checkpoints a runc container (--leave-running) again and again, in
rounds that alternate

- off: the default (no warm-up),
- on: fast_migrations=True (the warm-up from the start of the checkpoint to its end),
- idle: no checkpoint at all (the host's baseline, 200 ms windows),
- warm-idle: the warm-up alone, no checkpoint (200 ms windows): its own cost, without CRIU's noise,

and, with --favordynmods, the same checkpoints without the warm-up on a host whose cgroup2 hierarchy
is mounted with the kernel's own favordynmods (remounted through mount(2) for each of those
checkpoints and put back right after, with the options it had: this changes the whole host for
the length of one checkpoint each time; mount(8) cannot take the option off again, it merges the
options a mount has). Reported: medians (and p90/p99) of the bystander's
fork+exit latency in microseconds, of the checkpoint's wall time in ms, per mode.

    .venv/bin/python benchmarks/warm_bystander.py [--rounds 15] [--favordynmods]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib

BYSTANDER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
static long long now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
int main(int argc, char **argv) {
	FILE *out = fopen(argv[1], "w");
	signal(SIGTERM, on_term);
	setvbuf(out, NULL, _IOFBF, 1 << 20);
	while (!stop) {
		long long t0 = now_ns();
		pid_t p = fork();
		if (p == 0) _exit(0);
		if (p < 0) return 1;
		waitpid(p, NULL, 0);
		long long t1 = now_ns();
		fprintf(out, "%lld %lld\n", t0, t1 - t0);
		usleep(200);
	}
	fclose(out);
	return 0;
}
"""

CGROUP2 = "/sys/fs/cgroup/unified"


def build_bystander(tmp: str) -> str:
    src, out = os.path.join(tmp, "bystander.c"), os.path.join(tmp, "bystander")
    with open(src, "w") as f:
        f.write(BYSTANDER_C)
    subprocess.run(["cc", "-O2", "-o", out, src], check=True)
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def read_samples(samples_file: str) -> list:
    """The bystander's samples: (start, seconds on CLOCK_MONOTONIC; fork+exit latency, µs)."""
    out = []
    with open(samples_file) as f:
        for line in f:
            t, d = line.split()
            out.append((int(t) / 1e9, int(d) / 1e3))
    return out


def window_latencies(samples: list, windows: list) -> dict:
    """Median, p90, p99 and max of the latencies of SAMPLES that started within one of WINDOWS
    ((t0, t1), time.monotonic() seconds: the same clock as the bystander's)."""
    lat = [d for t, d in samples if any(w0 <= t <= w1 for w0, w1 in windows)]
    return {"n": len(lat), "median": statistics.median(lat) if lat else None,
            "p90": pct(lat, 0.9), "p99": pct(lat, 0.99), "max": max(lat, default=None)}


def cgroup2_options() -> str | None:
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            if mnt == CGROUP2 and fstype == "cgroup2":
                return opts
    return None


# cgroup2's own mount options (Documentation/admin-guide/cgroup-v2.rst)
CGROUP2_OPTIONS = ("nsdelegate", "favordynmods", "memory_localevents", "memory_recursiveprot",
                   "memory_hugetlb_accounting", "pids_localevents")


def remount_cgroup2(options: list[str]) -> None:
    """Remount the cgroup2 hierarchy with exactly OPTIONS (its own ones), through mount(2) itself:
    mount(8) merges the options the mount already has, so it cannot take favordynmods off again."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ms_remount = 32
    if libc.mount(None, CGROUP2.encode(), None, ms_remount, ",".join(options).encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"remount {CGROUP2} with {options}: {os.strerror(e)}")


def own_options(opts: str | None) -> list[str]:
    return [o for o in (opts or "").split(",") if o in CGROUP2_OPTIONS]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--favordynmods", action="store_true", help="also measure with cgroup2 favordynmods")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    why = benchlib.why_not_runnable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 1
    import fastckpt
    from fastckpt import cgroups

    jan = benchlib.Janitor()
    tmp = jan.mkdtemp("fcwarm-")
    windows: dict[str, list[tuple[float, float]]] = {}
    walls: dict[str, list[float]] = {}
    saved_opts = cgroup2_options()
    try:
        root = jan.mkdtemp("fcwarm-root-")
        bundle = benchlib.make_bundle(os.path.join(tmp, "bundle"))
        cid = benchlib.start_container(jan, root, bundle)
        bystander = build_bystander(tmp)
        samples_file = os.path.join(tmp, "samples")
        modes = ["off", "on", "idle", "warm-idle"]
        if a.favordynmods:
            if saved_opts is None:
                print(f"no cgroup2 mount at {CGROUP2}", file=sys.stderr)
                return 1
            if "favordynmods" in own_options(saved_opts):
                print("the host already runs with favordynmods: every mode below has it", file=sys.stderr)
            else:
                modes.append("favordynmods")
        env_saved = {k: os.environ.pop(k, None) for k in ("FASTCKPT_WARM", "FASTCKPT_NO_WARM")}
        by = subprocess.Popen([bystander, samples_file])
        try:
            time.sleep(0.3)
            for i in range(a.rounds + 1):  # round 0 warms caches up and is not counted
                for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
                    if mode == "favordynmods":
                        remount_cgroup2(own_options(saved_opts) + ["favordynmods"])
                        if "favordynmods" not in own_options(cgroup2_options()):
                            raise RuntimeError("the kernel took the remount but does not show favordynmods")
                        time.sleep(0.05)
                    img = os.path.join(tmp, f"img-{i}-{mode}")
                    t0 = time.monotonic()
                    try:
                        if mode == "idle":
                            time.sleep(0.2)
                        elif mode == "warm-idle":
                            with cgroups.FastMigrations(True):
                                time.sleep(0.2)
                        else:
                            fastckpt.checkpoint(cid, image_path=img, leave_running=True, root=root,
                                                fast_migrations=(mode == "on"))
                    finally:
                        t1 = time.monotonic()
                        if mode == "favordynmods":
                            remount_cgroup2(own_options(saved_opts))
                    if i:
                        windows.setdefault(mode, []).append((t0, t1))
                        walls.setdefault(mode, []).append((t1 - t0) * 1e3)
                    subprocess.run(["rm", "-rf", img])
                    time.sleep(0.1)  # the lock falls idle between checkpoints, as between commands
        finally:
            by.send_signal(signal.SIGTERM)
            by.wait()
            for k, v in env_saved.items():
                if v is not None:
                    os.environ[k] = v
        samples = read_samples(samples_file)
    finally:
        if saved_opts is not None and own_options(cgroup2_options()) != own_options(saved_opts):
            remount_cgroup2(own_options(saved_opts))
        if saved_opts is not None and own_options(cgroup2_options()) != own_options(saved_opts):
            print(f"WARNING: {CGROUP2} could not be put back to {saved_opts!r}: it is "
                  f"{cgroup2_options()!r}", file=sys.stderr)
        jan.close()
    report = {}
    for mode, wins in windows.items():
        report[mode] = {"fork_exit_us": window_latencies(samples, wins),
                        "window_ms_median": statistics.median(walls[mode])}
    print(f"bystander fork+_exit+waitpid latency, µs ({a.rounds} rounds; kernel {os.uname().release}):")
    print(f"{'mode':14} {'samples':>7} {'median':>8} {'p90':>8} {'p99':>8} {'max':>9} {'checkpoint ms':>14}")
    for mode in modes:
        r = report[mode]
        f = r["fork_exit_us"]
        print(f"{mode:14} {f['n']:7d} {f['median']:8.1f} {f['p90']:8.1f} {f['p99']:8.1f} {f['max']:9.1f} "
              f"{'' if 'idle' in mode else format(r['window_ms_median'], '.1f'):>14}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
