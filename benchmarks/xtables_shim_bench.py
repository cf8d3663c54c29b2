#!/usr/bin/env python3
"""fastckpt with its iptables shim (ext/xtables_shim.c) and without it (FASTCKPT_XTABLES_SHIM=0).

Tiny runc containers with a network namespace of their own, N interleaved rounds (BENCH_ROUNDS,
default 15): in every round a fresh container per mode is checkpointed with `fastckpt checkpoint`,
then restored with `fastckpt restore -d`, the mode that goes first alternating. One warm-up round
is not counted (it also fills the shim's cache). Reported, per mode: the medians (min, max) of the
wall time of each command and of CRIU's own time (the last timestamp of dump.log / restore.log),
and the difference of the medians; and the parts of CRIU's network namespace dump, from the
timestamps of dump.log (the iptables tools run in the second).

    .venv/bin/python benchmarks/xtables_shim_bench.py     # BENCH_WAIT_QUIET=S: wait for quiet before rounds
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import benchlib as bl
from side_by_side import cpu_busy, dump_log_seconds

MODES = ("shim", "off")


def timed(cmd, mode: str, log: str) -> tuple[float, float]:
    old = os.environ.get("FASTCKPT_XTABLES_SHIM")
    os.environ["FASTCKPT_XTABLES_SHIM"] = "1" if mode == "shim" else "0"
    try:
        wall = bl.run_timed(cmd, logs=[log])
    finally:
        if old is None:
            del os.environ["FASTCKPT_XTABLES_SHIM"]
        else:
            os.environ["FASTCKPT_XTABLES_SHIM"] = old
    return wall, dump_log_seconds(log) or 0.0


# CRIU's network namespace dump, in the order of criu/net.c's dump_net_ns, by the lines of dump.log that
# start each part: (part, the line's text)
NETNS_PARTS = (
    ("ip addr/route/-6 route save", "Running ip addr save"),
    ("ip rule save, iptables tools, nftables", "Running ip rule save"),
    ("netns sysctls", "stable_secret nr"),
    ("conntrack dumps (CT, then CRIU's EXP request)", "net: Dumping netns links"),
    ("", "Namespaces dump complete"),
)


def netns_parts(log: str) -> dict[str, float]:
    """The seconds each part of CRIU's network namespace dump took, from DUMP.LOG's timestamps."""
    starts: dict[str, float] = {}
    want = 0
    with open(log, errors="replace") as f:
        for line in f:
            if want < len(NETNS_PARTS) and NETNS_PARTS[want][1] in line and line.startswith("("):
                starts[NETNS_PARTS[want][0]] = float(line[1:line.index(")")])
                want += 1
    names = [p for p, _ in NETNS_PARTS]
    return {names[i]: starts[names[i + 1]] - starts[names[i]] for i in range(len(names) - 1)
            if names[i] in starts and names[i + 1] in starts}


def quiet_for(limit: float) -> None:
    """BENCH_WAIT_QUIET=S: before a round, wait up to S seconds while the machine is busy (CPUs >= 25 %
    busy over 0.25 s: another helper's tests), then go on regardless."""
    end = time.monotonic() + limit
    while limit > 0 and cpu_busy(0.25) >= 0.25 and time.monotonic() < end:
        time.sleep(0.5)


def main() -> int:
    why = bl.why_not_runnable()
    if why:
        print(f"xtables_shim_bench: {why}", file=sys.stderr)
        return 1
    rounds = max(3, int(os.environ.get("BENCH_ROUNDS", "15")))
    jan = bl.Janitor()
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        base = jan.mkdtemp("fastckpt-xtbench-")
        root = os.path.join(base, "runc-root")
        os.makedirs(root, mode=0o700)
        bundles = {m: bl.make_bundle(os.path.join(base, f"bundle-{m}")) for m in MODES}
        for r in range(-1, rounds):
            quiet_for(float(os.environ.get("BENCH_WAIT_QUIET", "0") or 0))
            order = MODES if r % 2 else MODES[::-1]
            ids = {m: bl.start_container(jan, root, bundles[m]) for m in MODES}
            time.sleep(0.05)
            imgs = {m: jan.mkdtemp("img-", base) for m in MODES}
            got, parts = {}, {}
            for m in order:
                cmd = [bl.FASTCKPT, "--root", root, "checkpoint", "--image-path", imgs[m], ids[m]]
                got[("checkpoint", m)] = timed(cmd, m, os.path.join(imgs[m], "dump.log"))
                parts[m] = netns_parts(os.path.join(imgs[m], "dump.log"))
            for m in order:
                cmd = [bl.FASTCKPT, "--root", root, "restore", "-d", "--image-path", imgs[m], "-b", bundles[m],
                       ids[m]]
                got[("restore", m)] = timed(cmd, m, os.path.join(imgs[m], "restore.log"))
            for m in MODES:
                jan.release_container(root, ids[m])
                jan.release_dir(imgs[m])
            if r >= 0:
                for (op, m), (wall, criu) in got.items():
                    samples.setdefault(f"{op} wall", {}).setdefault(m, []).append(wall)
                    samples.setdefault(f"{op} CRIU", {}).setdefault(m, []).append(criu)
                for part in (p for p, _ in NETNS_PARTS if all(p in parts[m] for m in MODES)):
                    for m in MODES:
                        samples.setdefault(f"dump.log: {part}", {}).setdefault(m, []).append(parts[m][part])
            print(f"round {r + 1}/{rounds}", file=sys.stderr)
    finally:
        problems = jan.close()
        if problems:
            print("clean-up: " + "; ".join(problems), file=sys.stderr)
    print(f"tiny container, {rounds} interleaved rounds, ms: median (min-max); the last column is the median of "
          "the rounds' own differences (the two modes of a round ran back to back)")
    print("| what | shim | FASTCKPT_XTABLES_SHIM=0 | shim - off (medians) | shim - off (paired) |")
    print("|---|---|---|---|---|")
    for what, by_mode in samples.items():
        cells = []
        for m in MODES:
            v = by_mode[m]
            cells.append(f"{statistics.median(v) * 1e3:.1f} ({min(v) * 1e3:.1f}-{max(v) * 1e3:.1f})")
        diff = (statistics.median(by_mode["shim"]) - statistics.median(by_mode["off"])) * 1e3
        paired = statistics.median(a - b for a, b in zip(by_mode["shim"], by_mode["off"])) * 1e3
        print(f"| {what} | {cells[0]} | {cells[1]} | {diff:+.1f} | {paired:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
