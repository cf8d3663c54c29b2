"""Robustness: many checkpoint/restore cycles of one container, through the API, in this process.

N cycles (10 by default; FASTCKPT_SOAK=N for more: `make soak` runs 100):
each checkpoints the container (it leaves runc) and restores it under the same
id.  Afterwards nothing may have piled up: no criu process, no mount under the
runc root, no cgroup directory but the container's own, no runc state but the
container's, no file descriptor of this process, and this process's memory
may grow only a little (measured after 3 warm-up cycles).  The container's
counter went on through every cycle without a restart.
"""
from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

import restore_support as rs
import robust_support as rb

import fastckpt
from fastckpt import locks

pytestmark = pytest.mark.integration

CYCLES = int(os.environ.get("FASTCKPT_SOAK") or 10)
WARMUP = 3
RSS_GROWTH_KIB = 10 << 10  # 10 MiB over the soak


@pytest.fixture
def env(runc_root, tmp_path):
    yield from rs.Env.scoped(runc_root, str(tmp_path), "the soak left (now removed)")


def own_cgroups(ct: rs.Container) -> set:
    with open(os.path.join(ct.state_dir, "state.json")) as f:
        return {p for p in json.load(f)["cgroup_paths"].values() if os.path.isdir(p)}


def test_soak_checkpoint_restore_cycles(env, tmp_path):
    assert CYCLES > WARMUP, f"FASTCKPT_SOAK={CYCLES}: at least {WARMUP + 1} cycles"
    ct = env.start(count_to=2)
    first = ct.counter.last()
    cgroups = own_cgroups(ct)
    fds = rb.fd_count()
    rss = None
    previous = None
    for i in range(CYCLES):
        images = str(tmp_path / f"images-{i}")
        res = fastckpt.checkpoint(ct.id, root=env.root, image_path=images)
        assert res.container_id == ct.id and res.files.get("pages-1.img", 0) > 0
        assert ct.state() is None, f"cycle {i}: {ct.id} still known to runc after its checkpoint"
        assert not rs.frozen_cgroups(ct.id)
        stopped = ct.counter.last()
        r = fastckpt.restore(ct.id, root=env.root, image_path=images, bundle=ct.bundle, detach=True)
        assert r.container_id == ct.id and r.pid > 0
        # running again, counting on from where it stopped
        rs.wait_until(lambda: ct.counter.last() > stopped, f"cycle {i}: the counter to go on past {stopped}")
        if previous:
            shutil.rmtree(previous)  # keep the disk use flat over a long soak
        previous = images
        if i + 1 == WARMUP:
            rss = rb.rss_kib()

    ct.assert_running()
    log = ct.counter.assert_continued(first, more=2)  # 1..n: no restart in any cycle
    assert log[-1] >= first + CYCLES, rs.compress(log)  # each cycle counted on at least once

    assert not rb.criu_left(str(tmp_path)), rs.criu_pids_in(str(tmp_path))
    assert not rs.mounts_under(env.root), rs.mounts_under(env.root)
    assert sorted(os.listdir(env.root)) == [ct.id], os.listdir(env.root)
    assert rs.runc_known(env.root) == [ct.id]
    assert set(rb.cgroup_dirs(ct.id)) == own_cgroups(ct) == cgroups, (rb.cgroup_dirs(ct.id), cgroups)
    assert not rb.restore_cgroups(os.getpid())
    assert not glob.glob(os.path.join(locks.LOCK_DIR, f"*-{ct.id}.lock")), "lock files pile up"
    assert rb.fd_count() == fds, f"fds: {fds} before, {rb.fd_count()} after {CYCLES} cycles: " \
                                 f"{sorted(os.listdir('/proc/self/fd'))}"
    growth = rb.rss_kib() - rss
    print(f"soak: {CYCLES} cycles, {fds} fds before and after, RSS {rss} KiB after {WARMUP} cycles, "
          f"+{growth} KiB at the end")
    assert growth < RSS_GROWTH_KIB, f"RSS grew by {growth} KiB over {CYCLES - WARMUP} cycles"
