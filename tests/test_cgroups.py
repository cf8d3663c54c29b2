"""cgroups of a restored container, with runc as the oracle, in the layout this host has.

The suite runs once as the host is (hybrid here) and once in a cgroup2 mount
namespace (unified, `make test`'s second run): these tests check the layout
they find.  One config with resources and device rules is restored once by
`runc restore` and once by `fastckpt restore` from the same checkpoint: every
setting file of the cgroups runc made is compared value by value with
fastckpt's, the BPF device program (v2) must be runc's own, and the device
policy is probed from inside both containers.  A config naming a controller
the host lacks fails as runc fails, in one line, leaving nothing behind.

The unit tests below need no root: runc's device-rule semantics and v1->v2
conversions, and what each manager writes (into plain files).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

import ckpt_support as cs
import restore_support as rs

from fastckpt import cgroups, devicefilter, manifest
from fastckpt.errors import Error, UsageError
from fastckpt_testing.plugin import skip_or_fail

MiB = 1 << 20


# --- unit: device rules as runc reduces them, the program, conversions, writes ----------------------

def rule(kind, major=-1, minor=-1, perms="rwm", allow=True):
    return {"type": ord(kind), "major": major, "minor": minor, "permissions": perms, "allow": allow}


RUNC_DEFAULT = [rule("a", allow=False), rule("c", perms="m"), rule("b", perms="m"), rule("c", 1, 3),
                rule("c", 1, 8), rule("c", 1, 7), rule("c", 5, 0), rule("c", 1, 5), rule("c", 1, 9),
                rule("c", 136), rule("c", 5, 2), rule("c", 10, 200)]


def test_device_rules_allow_list():
    r = devicefilter.Rules(RUNC_DEFAULT + [rule("b", 7, 0, "r")])
    assert not r.default_allow
    assert r.allows("c", 1, 3, "rw") and r.allows("c", 136, 4, "rw")  # /dev/null, a pty
    assert not r.allows("b", 254, 0, "r") and r.allows("b", 254, 0, "m")  # made, never opened
    assert r.allows("b", 7, 0, "r") and not r.allows("b", 7, 0, "w") and not r.allows("b", 7, 0, "rw")
    assert not r.allows("c", 1, 1, "r")  # /dev/mem


def test_device_rules_as_cgroup_v1_applies_them():
    # "a" resets; a rule of the default's own action subtracts from the exact exception
    r = devicefilter.Rules([rule("c", 1, 3), rule("a"), rule("c", 1, 5, allow=False)])
    assert r.default_allow and not r.allows("c", 1, 5, "r") and r.allows("c", 1, 3, "r")
    r = devicefilter.Rules([rule("a", allow=False), rule("c", 1, 3), rule("c", 1, 3, "w", allow=False)])
    assert r.allows("c", 1, 3, "r") and not r.allows("c", 1, 3, "w")
    assert devicefilter.Rules([]).default_allow is False  # runc: no rules, nothing allowed
    with pytest.raises(Error, match="cannot punch a hole in the wildcard rule c 136:\\* rwm"):
        devicefilter.Rules([rule("a", allow=False), rule("c", 136), rule("c", 136, 2, "r", allow=False)])
    with pytest.raises(Error, match="type 'p'"):
        devicefilter.Rules([rule("p", 1, 1)])


def test_device_program_shape():
    insns = devicefilter.program(RUNC_DEFAULT)
    assert len(insns) % 8 == 0
    # 6 loads; per exception: type, [access (3)], [major], [minor], verdict, exit; the default, exit
    # c *:* m and b *:* m: 6 each; eight c MAJ:MIN rwm: 5 each; c 136:* rwm: 4
    assert len(insns) // 8 == 6 + 2 * 6 + 8 * 5 + 4 + 2
    assert insns[-8:] == bytes([0x95]) + bytes(7)  # exit
    assert insns[-16:-8] == bytes([0xB4, 0, 0, 0, 0, 0, 0, 0])  # default: deny


def test_conversions_are_runcs():
    assert [cgroups.cpu_weight(s) for s in (0, 2, 512, 1024, 262144)] == [0, 1, 20, 39, 10000]
    assert [cgroups.io_weight(w) for w in (0, 10, 500, 1000)] == [0, 1, 4950, 10000]
    assert cgroups.swap_v2(128 * MiB, 64 * MiB) == 64 * MiB
    assert cgroups.swap_v2(0, -1) == -1 and cgroups.swap_v2(-1, 64 * MiB) == -1 and cgroups.swap_v2(0, 1) == 0
    with pytest.raises(cgroups.SetupError, match="without memory limit"):
        cgroups.swap_v2(128 * MiB, 0)
    with pytest.raises(cgroups.SetupError, match="should be >= memory limit"):
        cgroups.swap_v2(MiB, 64 * MiB)


def _files(d, names):
    for n in names:
        open(os.path.join(d, n), "w").close()


def _read_all(d):
    return {n: open(os.path.join(d, n)).read() for n in sorted(os.listdir(d)) if os.path.getsize(os.path.join(d, n))}


V2_FILES = ["pids.max", "memory.max", "memory.swap.max", "memory.low", "io.weight", "io.max", "cpu.weight",
            "cpu.max", "cpuset.cpus", "cpuset.mems", "hugetlb.2MB.max", "memory.high", "cgroup.controllers"]


def test_v2_writes_what_runcs_fs2_writes(tmp_path):
    d = str(tmp_path)
    _files(d, V2_FILES)
    cgroups._set_v2(d, {"pids_limit": 100, "memory": 64 * MiB, "memory_swap": 128 * MiB,
                        "memory_reservation": 32 * MiB, "blkio_weight": 500,
                        "blkio_throttle_read_bps_device": [{"major": 8, "minor": 0, "rate": 1000}],
                        "cpu_shares": 1024, "cpu_quota": 50000, "cpu_period": 100000, "cpuset_cpus": "0",
                        "hugetlb_limit": [{"page_size": "2MB", "limit": 4 * MiB}],
                        "unified": {"memory.high": "96000000"}, "skip_devices": True})
    assert _read_all(d) == {"pids.max": "100", "memory.max": str(64 * MiB), "memory.swap.max": str(64 * MiB),
                            "memory.low": str(32 * MiB), "io.weight": "4950", "io.max": "8:0 rbps=1000",
                            "cpu.weight": "39", "cpu.max": "50000 100000", "cpuset.cpus": "0",
                            "hugetlb.2MB.max": str(4 * MiB), "memory.high": "96000000"}


def test_v2_refuses_what_it_cannot_apply(tmp_path):
    d = str(tmp_path)
    _files(d, V2_FILES)
    for bad, msg in (({"cpu_rt_period": 1000}, "cpu_rt_period: cgroup v1 settings that cgroup v2 has not"),
                     ({"memory_swappiness": 10}, "memory_swappiness"),
                     ({"unified": {"a/b": "1"}}, "must be a file name"),
                     ({"unified": {"rdma.max": "1"}}, "controller 'rdma' not available")):
        with pytest.raises(cgroups.SetupError, match=msg):
            cgroups._set_v2(d, dict(bad, skip_devices=True))


def test_v1_writes_what_runcs_fs_writes(tmp_path):
    paths = {}
    for key, names in (("memory", ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                                   "memory.soft_limit_in_bytes", "memory.swappiness", "memory.oom_control"]),
                       ("cpu", ["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.rt_period_us",
                                "cpu.rt_runtime_us"]),
                       ("pids", ["pids.max"]), ("blkio", ["blkio.weight", "blkio.throttle.write_iops_device"]),
                       ("hugetlb", ["hugetlb.2MB.limit_in_bytes"])):
        paths[key] = str(tmp_path / key)
        os.mkdir(paths[key])
        _files(paths[key], names)
    with open(os.path.join(paths["memory"], "memory.limit_in_bytes"), "w") as f:
        f.write(str(1 << 62))  # current limit above the new swap: memory first, then memory+swap
    cgroups._set_v1(paths, {"memory": 64 * MiB, "memory_swap": 128 * MiB, "memory_reservation": 32 * MiB,
                            "memory_swappiness": 10, "oom_kill_disable": True, "cpu_shares": 0,
                            "cpu_period": 100000, "cpu_quota": 50000, "cpu_rt_period": 1000000,
                            "cpu_rt_quota": 950000, "pids_limit": -1, "blkio_weight": 300,
                            "blkio_throttle_write_iops_device": [{"major": 8, "minor": 0, "rate": 50}],
                            "hugetlb_limit": [{"page_size": "2MB", "limit": 4 * MiB}]})
    assert _read_all(paths["memory"]) == {"memory.limit_in_bytes": str(64 * MiB),
                                          "memory.memsw.limit_in_bytes": str(128 * MiB),
                                          "memory.soft_limit_in_bytes": str(32 * MiB), "memory.swappiness": "10",
                                          "memory.oom_control": "1"}
    assert _read_all(paths["cpu"]) == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000",
                                       "cpu.rt_period_us": "1000000", "cpu.rt_runtime_us": "950000"}
    assert _read_all(paths["pids"]) == {"pids.max": "max"}
    assert _read_all(paths["blkio"]) == {"blkio.weight": "300", "blkio.throttle.write_iops_device": "8:0 50"}
    assert _read_all(paths["hugetlb"]) == {"hugetlb.2MB.limit_in_bytes": str(4 * MiB)}
    # a limit for a controller without a cgroup, and v2's unified keys, are errors (runc's words)
    with pytest.raises(cgroups.SetupError, match="cannot set net_cls limit: container could not join or create"):
        cgroups._set_v1(paths, {"net_cls_classid_u": 0x100001})
    with pytest.raises(cgroups.SetupError, match="cannot use unified on cgroup v1"):
        cgroups._set_v1(paths, {"unified": {"memory.high": "1"}})


def test_paths_as_runc_cleans_them():
    assert cgroups._clean("a/../../b") == "b" and cgroups._clean("/x/../y") == "/y" and cgroups._clean("") == ""
    with pytest.raises(UsageError, match="either Path or Name and Parent"):
        cgroups.paths_for({"path": "/a", "name": "b"})


def test_layout_is_the_one_asked_for():
    want = os.environ.get("FASTCKPT_TEST_LAYOUT")
    assert cgroups.layout() in (cgroups.UNIFIED, cgroups.HYBRID, cgroups.LEGACY, None)
    if want:
        assert cgroups.layout() == want
    with open("/proc/self/mountinfo") as f:
        fstypes = {l.split(" - ")[1].split()[0] for l in f if l.split()[4] == "/sys/fs/cgroup"}
    if cgroups.layout() == cgroups.UNIFIED:
        assert "cgroup2" in fstypes, fstypes


# --- integration: runc as the oracle ---------------------------------------------------------------

@pytest.fixture
def env(runc_root, tmp_path):
    yield from rs.Env.scoped(runc_root, str(tmp_path), "the test left (now removed)")


# a block device outside every allow-list, and one the config lets the container read (not write)
PROBES = {"blk": (254, 0), "loop": (7, 0)}
EXTRA_DEVICE_RULE = {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"}


def oracle_resources() -> dict:
    """Limits of every kind this host's layout has controllers for (OCI spec form)."""
    if cs.UNIFIED:  # only hugetlb is a v2 controller on this host
        return {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}],
                "unified": {"hugetlb.1GB.max": str(1 << 30)}}
    return {"memory": {"limit": 64 * MiB, "swap": 128 * MiB, "reservation": 32 * MiB},
            "pids": {"limit": 123}, "cpu": {"shares": 512, "quota": 50000, "period": 100000}}


def expected_settings() -> dict:
    """What those limits must read as in the restored container's cgroups: (hierarchy, file) -> value."""
    if cs.UNIFIED:
        return {("", "hugetlb.2MB.max"): str(4 * MiB), ("", "hugetlb.1GB.max"): str(1 << 30)}
    return {("memory", "memory.limit_in_bytes"): str(64 * MiB),
            ("memory", "memory.memsw.limit_in_bytes"): str(128 * MiB),
            ("memory", "memory.soft_limit_in_bytes"): str(32 * MiB), ("pids", "pids.max"): "123",
            ("cpu", "cpu.shares"): "512", ("cpu", "cpu.cfs_quota_us"): "50000",
            ("cpu", "cpu.cfs_period_us"): "100000"}


def edit_config(bundle: str, cgroups_path: str = "", **resources) -> None:
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    if cgroups_path:
        cfg["linux"]["cgroupsPath"] = cgroups_path
    res = cfg["linux"].setdefault("resources", {})
    res.update(resources)
    res.setdefault("devices", []).append(EXTRA_DEVICE_RULE)
    with open(path, "w") as f:
        json.dump(cfg, f)


# files that are counters, triggers or controls rather than settings, and differ between any two cgroups
NOT_SETTINGS = {"cgroup.procs", "tasks", "cgroup.threads", "cgroup.freeze", "cgroup.kill", "cgroup.event_control",
                "memory.force_empty", "memory.reclaim", "memory.pressure_level", "cgroup.pressure"}


def settings(d: str) -> dict:
    """The writable, readable files of a cgroup directory and their values (and v1's devices.list)."""
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if (name in NOT_SETTINGS or name.endswith((".pressure", "failcnt", "max_usage_in_bytes", ".peak", ".usage"))
                or not os.stat(p).st_mode & stat.S_IWUSR and name != "devices.list"):  # v1's effective rules
            continue
        try:
            with open(p) as f:
                out[name] = f.read().strip()
        except OSError:
            continue  # write-only
    return out


def probe_devices(ct: rs.Container) -> dict:
    """What a process `runc exec` starts in the container may do with device nodes."""
    out = {}
    for what, cmd in (("null-write", "echo x > /dev/null"), ("blk-read", "head -c0 /tmp/blk"),
                      ("loop-read", "head -c0 /tmp/loop"), ("loop-write", "echo x > /tmp/loop")):
        r = ct.exec("sh", "-c", f"( {cmd} ) 2>&1; echo rc=$?")  # the shell's own open errors too
        # allowed: the open passed the device policy (a device without a driver may fail it after: ENXIO)
        out[what] = "denied" if "Operation not permitted" in r.stdout else "allowed"
    return out


# the counter, whose restored shell also opens /tmp/blk when asked (/tmp/probe): the restored processes'
# own cgroup is probed, not just the one `runc exec` joins
PROBING_COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > /tmp/count; echo $i >> /tmp/count.log; "
                   "if [ -e /tmp/probe ]; then rm /tmp/probe; (head -c0 /tmp/blk) > /tmp/probe.out 2>&1; "
                   "echo rc=$? >> /tmp/probe.out; fi; sleep 0.1; done")


def probe_init(ct: rs.Container) -> str:
    tmp = os.path.join(ct.bundle, "rootfs", "tmp")
    out = os.path.join(tmp, "probe.out")
    if os.path.exists(out):
        os.unlink(out)
    open(os.path.join(tmp, "probe"), "w").close()
    text = cs.wait_until(lambda: "rc=" in (open(out).read() if os.path.exists(out) else "") and open(out).read(),
                         f"the shell of {ct.id} to open /tmp/blk")
    return "denied" if "Operation not permitted" in text else "allowed: " + text


def restored_view(ct: rs.Container) -> dict:
    """A restored container's cgroups as the host sees them, and its device policy as it sees it."""
    ct.assert_running()
    with open(os.path.join(ct.state_dir, "state.json")) as f:
        paths = json.load(f)["cgroup_paths"]
    # its init is in them (in the hierarchies runc uses here), and they are named after it
    assert init_cgroup(ct) == sorted(l for l in init_cgroup(ct) if l.endswith("/" + ct.id)), init_cgroup(ct)
    assert all(os.path.basename(p) == ct.id and os.path.isdir(p) for p in paths.values()), paths
    view = {"paths": paths, "settings": {key: settings(d) for key, d in paths.items()},
            "policy": probe_devices(ct), "init": probe_init(ct)}
    if cs.UNIFIED:
        view["tags"] = devicefilter.tags(paths[""])
    return view


@pytest.fixture
def parent_cgroup():
    """A parent cgroup name of the test's own (cgroupsPath); removed afterwards from every hierarchy."""
    name = f"fxcg-{rs.new_id()}"
    yield name
    for mnt in set(cgroups.mounts().values()):
        for d in glob.glob(os.path.join(mnt, "**", name), recursive=True):
            os.rmdir(d)


@pytest.mark.integration
@pytest.mark.parametrize("cgroups_path", ["", "absolute", "relative"])
def test_restored_cgroups_are_runcs(parent_cgroup, env, cgroups_path):  # env goes first, then the parent
    """The same checkpoint restored by runc and by fastckpt (one after the other, under the checkpointed id):
    the same cgroups, settings, device program and device policy. The config names no cgroupsPath (runc's
    default path), an absolute one or a relative one, below a parent that does not exist yet."""
    cid = rs.new_id()
    bundle = env.bundle(script=PROBING_COUNTER)
    edit_config(bundle, {"": "", "absolute": f"/{parent_cgroup}/{cid}",
                         "relative": f"{parent_cgroup}/{cid}"}[cgroups_path], **oracle_resources())
    for name, (major, minor) in PROBES.items():
        os.mknod(os.path.join(bundle, "rootfs", "tmp", name), stat.S_IFBLK | 0o600, os.makedev(major, minor))
    ct = env.start(bundle, cid)
    images = os.path.join(env.workdir, "images")
    env.checkpoint(ct, images)
    runc_images = shutil.copytree(images, os.path.join(env.workdir, "images-runc"))
    runc_bundle = env.copy_bundle(bundle, "bundle-runc")  # a rootfs of its own (rs.copy_bundle says why)

    rc = rs.run_quiet(["runc", "--root", env.root, "restore", "-d", "--image-path", runc_images, "-b",
                       runc_bundle, ct.id])
    assert rc == 0, f"runc restore failed (exit {rc}); see {runc_images}/restore.log"
    runcs = env.track(ct.id, runc_bundle)
    theirs = restored_view(runcs)
    runcs.kill_and_delete()
    r = env.restore(ct.id, images, bundle)
    assert r.returncode == 0, str(r)
    ours = restored_view(ct)

    assert ours["paths"] == theirs["paths"]
    compared = 0
    for key in theirs["paths"]:
        assert ours["settings"][key] == theirs["settings"][key], \
            f"hierarchy {key or 'v2'}: fastckpt {ours['settings'][key]} != runc {theirs['settings'][key]}"
        compared += len(theirs["settings"][key])
    assert compared >= len(expected_settings()) + 2, compared
    for (key, fname), value in expected_settings().items():
        assert ours["settings"][key][fname] == value, (key, fname)
    if cs.UNIFIED:  # runc's program, instruction for instruction (the tag hashes them)
        assert len(ours["tags"]) == 1 and ours["tags"] == theirs["tags"], (ours["tags"], theirs["tags"])
    else:
        assert "b 7:0 r" in ours["settings"]["devices"]["devices.list"]
    assert ours["policy"] == theirs["policy"] == {"null-write": "allowed", "blk-read": "denied",
                                                  "loop-read": "allowed", "loop-write": "denied"}, ours
    assert ours["init"] == theirs["init"] == "denied"
    r = ct.exec("sh", "-c", "echo x > /dev/null && echo written")
    assert r.stdout.strip() == "written", r

    if cgroups_path:
        assert all(parent_cgroup in p for p in ours["paths"].values()), ours["paths"]
        return  # a restore under another id would join the cgroup the config names, as runc does
    # the same checkpoint restored again under a new id (a fork): in cgroups of its own, confined alike.
    # (runc 1.1's restore on cgroup v2 leaves the restored processes in the checkpointed id's cgroup.)
    fork = env.restore(rs.new_id("fork"), images, bundle)
    assert fork.returncode == 0, str(fork)
    forked = restored_view(env.track(fork.args[-1], bundle))
    assert forked["policy"] == ours["policy"] and forked["init"] == "denied"
    assert {os.path.basename(p) for p in forked["paths"].values()} == {fork.args[-1]}, forked["paths"]
    assert forked["settings"] == ours["settings"]
    env.track(fork.args[-1], bundle).counter.wait_advancing()


def missing_controller() -> tuple[dict, dict, str]:
    """A limit of a controller this host lacks: (OCI resources, runc's state form, runc's error fragment)."""
    if cs.UNIFIED:
        return ({"memory": {"limit": 64 * MiB}}, {"memory": 64 * MiB}, "memory.max: no such file or directory")
    if "hugetlb" not in cgroups.mounts():
        return ({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}]},
                {"hugetlb_limit": [{"page_size": "2MB", "limit": 4 * MiB}]},
                "cannot set hugetlb limit: container could not join or create cgroup")
    pytest.skip("every controller a config can name is mounted on this host")


def runc_error(log: str) -> str:
    with open(log) as f:
        return " ".join(json.loads(l).get("msg", "") for l in f if '"error"' in l)


@pytest.mark.integration
def test_missing_controller_fails_as_runc_does_and_leaves_nothing(env):
    oci, state_form, fragment = missing_controller()
    # runc: the same config cannot even run
    bad = env.bundle()
    edit_config(bad, **oci)
    cid = rs.new_id("bad")
    log = os.path.join(env.workdir, "runc.log")
    rc = rs.run_quiet(["runc", "--root", env.root, "--log", log, "--log-format", "json", "run", "-d", "-b", bad, cid])
    assert rc != 0 and fragment in runc_error(log), runc_error(log)
    rs.assert_nothing_left(cid, env.root)

    # fastckpt: a checkpoint whose container config names that controller
    ct = env.start()
    images = os.path.join(env.workdir, "images")
    env.checkpoint(ct, images)
    meta_path = os.path.join(images, "fastckpt.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["state"]["config"]["cgroups"].update(state_form)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    manifest.write(images)  # the edit is ours, not damage
    r = env.restore(cid, images, ct.bundle)
    rs.assert_error(r, 1, fragment, *(["(the memory controller is not available in this host's cgroup v2 "
                                       "hierarchy)"] if cs.UNIFIED else []))
    rs.assert_nothing_left(cid, env.root, env.workdir)
    # the checkpoint itself is fine: restored without that limit, it runs
    meta["state"]["config"]["cgroups"].update({k: None for k in state_form})
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    manifest.write(images)
    r = env.restore(cid, images, ct.bundle)
    assert r.returncode == 0, str(r)
    env.track(cid, ct.bundle).assert_running()


@pytest.mark.integration
def test_checkpoint_refuses_an_unsupported_layout_before_freezing(container, tmp_path, monkeypatch):
    """No cgroup layout fastckpt can work with: one clear line, and the container was never frozen."""
    ct = container()
    monkeypatch.setattr(cgroups, "layout", lambda: None)
    from fastckpt import engine

    with pytest.raises(Error, match=f"no cgroup filesystem is mounted at {cgroups.ROOT}"):
        engine.checkpoint(ct.id, root=ct.root, image_path=str(tmp_path / "img"))
    ct.assert_running_thawed_advancing()
    assert not os.path.exists(tmp_path / "img")


def test_report_of_a_host_without_cgroups(monkeypatch):
    monkeypatch.setattr(cgroups, "layout", lambda: None)
    assert cgroups.report() == {"layout": "none", "containers": False, "why_not": "no cgroup filesystem is mounted "
                                "at /sys/fs/cgroup: containers cannot be checkpointed or restored here"}
    with pytest.raises(Error, match="^no cgroup filesystem is mounted at /sys/fs/cgroup") as e:
        cgroups.require_supported()
    assert e.value.errno == 95  # EOPNOTSUPP


def init_cgroup(ct: rs.Container) -> list:
    """The cgroups of the container's init, in the hierarchies runc uses on this layout."""
    with open(f"/proc/{ct.assert_running()}/cgroup") as f:
        lines = f.read().splitlines()
    return sorted(l for l in lines if (l.startswith("0::") == cs.UNIFIED) or cs.LAYOUT == "hybrid")


@pytest.mark.integration
@pytest.mark.parametrize("cg_mode", ["soft", "full", "strict", "ignore"])
def test_manage_cgroups_modes_restore_as_runc(env, cg_mode):
    """Each --manage-cgroups-mode: runc's restore and fastckpt's put the restored tasks in the same cgroups;
    a restore under a new id gets cgroups of its own, devices confined."""
    bundle = env.bundle(script=PROBING_COUNTER)
    edit_config(bundle)
    os.mknod(os.path.join(bundle, "rootfs", "tmp", "blk"), stat.S_IFBLK | 0o600, os.makedev(*PROBES["blk"]))
    ct = env.start(bundle)
    images = os.path.join(env.workdir, "images")
    env.checkpoint(ct, images, "--manage-cgroups-mode", cg_mode)
    # each restore in a rootfs of its own, as it is now (rs.copy_bundle says why)
    runc_bundle, fork_bundle = (env.copy_bundle(bundle, name) for name in ("bundle-runc", "bundle-fork"))
    runc_images = shutil.copytree(images, os.path.join(env.workdir, "images-runc"))
    rc = rs.run_quiet(["runc", "--root", env.root, "restore", "-d", "--manage-cgroups-mode", cg_mode,
                       "--image-path", runc_images, "-b", runc_bundle, ct.id])
    assert rc == 0, f"runc restore failed (exit {rc}); see {runc_images}/restore.log"
    runcs = env.track(ct.id, runc_bundle)
    theirs = init_cgroup(runcs)
    assert probe_init(runcs) == "denied"
    runcs.kill_and_delete()

    r = env.restore(ct.id, images, bundle, "--manage-cgroups-mode", cg_mode)
    assert r.returncode == 0, str(r)
    assert init_cgroup(ct) == theirs
    assert probe_init(ct) == "denied"
    ct.counter.wait_advancing()

    fork = env.track(rs.new_id("fork"), fork_bundle)
    r = env.restore(fork.id, images, fork_bundle, "--manage-cgroups-mode", cg_mode)
    assert r.returncode == 0, str(r)
    fork.assert_own_cgroups()
    assert probe_init(fork) == "denied"
    fork.kill_and_delete()
    rs.assert_nothing_left(fork.id, env.root)


@pytest.mark.integration
def test_cgroup_yards_of_a_stopped_criu_are_unmounted(tmp_path):
    """A CRIU killed while restoring cgroups leaves its yard mounted in its work directory (seen: a hung
    `--manage-cgroups-mode full` restore stopped by SIGTERM); a failed restore detaches it."""
    work = tmp_path / "work"
    yard = work / ".criu.cgyard.AbC123"  # CRIU: a tmpfs on a mkdtemp() directory, a hierarchy per subdir
    yard.mkdir(parents=True)
    other = work / "kept"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "yard", str(yard)], check=True)
    (yard / "pids").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "pids", str(yard / "pids")], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "kept", str(other)], check=True)
    try:
        assert cgroups.unmount_yards(str(work)) == [str(yard)]
        assert rs.mounts_under(str(work)) == [str(other)]
        assert not yard.exists()
    finally:
        for m in sorted(rs.mounts_under(str(tmp_path)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m])


@pytest.mark.integration
@pytest.mark.parametrize("cg_mode", ["full", "soft"])
def test_paused_container_in_full_mode_comes_back_paused(env, cg_mode):
    """CRIU records the v1 freezer state of a paused container and a full restore writes it back: the
    container comes back paused (soft: running, its cgroups made by fastckpt; v2: running, CRIU records no
    cgroup.freeze), and resumes; CRIU does not freeze itself with it (it runs in a cgroup of fastckpt's
    own, not in the container's)."""
    ct = env.start()
    assert rs.run_quiet(["runc", "--root", env.root, "pause", ct.id]) == 0
    images = os.path.join(env.workdir, "images")
    r = env.fastckpt("checkpoint", "--image-path", images, "--manage-cgroups-mode", cg_mode, ct.id)
    assert r.returncode == 0, str(r)
    r = env.restore(ct.id, images, ct.bundle, "--manage-cgroups-mode", cg_mode)
    assert r.returncode == 0, str(r)
    paused = cg_mode == "full" and not cs.UNIFIED
    assert ct.state()["status"] == ("paused" if paused else "running"), ct.state()
    if paused:
        assert rs.run_quiet(["runc", "--root", env.root, "resume", ct.id]) == 0
    ct.counter.wait_advancing()
    assert not glob.glob(os.path.join(cs.FREEZER_ROOT, "**", f"fastckpt-restore-{r.pid}"), recursive=True)


# --- the dump's cgroup yard: CRIU reads the host's hierarchies instead of mounting its own -------------

def _criu_name(ctrls: str) -> str:
    """CRIU's name for a hierarchy of /proc/PID/cgroup (its directory in a yard)."""
    if not ctrls:
        return "unified"
    return ctrls[len("name="):] if ctrls.startswith("name=") else ctrls


@pytest.mark.integration
def test_dump_yard_holds_the_containers_hierarchies(container):
    """Each hierarchy CRIU dumps for the container is in the yard under CRIU's name for it, as the host's
    own mount of that hierarchy (the container's cgroup inside); on a unified host only v2, through a link
    in a temporary directory that goes afterwards; on a hybrid one the host's cgroup root is the yard."""
    ct = container()
    yard, tmp = cgroups.dump_yard(ct.pid)
    try:
        with open(f"/proc/{ct.pid}/cgroup") as f:
            lines = f.read().splitlines()
        host = cgroups.mounts()
        seen = []
        for line in lines:
            _, ctrls, path = line.split(":", 2)
            if cs.UNIFIED and ctrls:
                continue  # CRIU dumps v2 alone there
            entry = os.path.join(yard, _criu_name(ctrls))
            key = ctrls.split(",")[0] if ctrls else ""
            assert os.stat(entry).st_dev == os.stat(host[key]).st_dev, (entry, host[key])
            assert os.path.isdir(entry + path), f"{entry + path}: the container's cgroup is not in the yard"
            seen.append(ctrls)
        assert seen
        if cs.UNIFIED:
            assert tmp == yard and os.listdir(tmp) == ["unified"]
            assert os.readlink(os.path.join(tmp, "unified")) == cgroups.ROOT
        else:
            assert (yard, tmp) == (cgroups.ROOT, None)
    finally:
        cgroups.remove_yard(tmp)
    assert tmp is None or not os.path.exists(tmp)


def test_no_dump_yard_for_a_hierarchy_not_mounted_whole(monkeypatch):
    """A hierarchy of the task that the host has not mounted at its root: no yard (CRIU mounts its own)."""
    monkeypatch.setattr(cgroups, "mounts", lambda: {})
    assert cgroups.dump_yard(os.getpid()) is None


_YARD_PROBE = """
import json, os
from fastckpt import cgroups
found = cgroups.dump_yard(os.getpid())
missing = []
if found is not None:
    with open("/proc/self/cgroup") as f:
        for line in f.read().splitlines():
            _, ctrls, path = line.split(":", 2)
            if ctrls and cgroups.layout() == cgroups.UNIFIED:
                continue
            name = "unified" if not ctrls else ctrls[5:] if ctrls.startswith("name=") else ctrls
            if not os.path.isdir(os.path.join(found[0], name) + path):
                missing.append(os.path.join(found[0], name) + path)
    cgroups.remove_yard(found[1])
print(json.dumps({"yard": found and found[0], "missing": missing}))
"""


_V2_SEEN = "{ [ \"$(stat -fc %T /sys/fs/cgroup)\" = cgroup2fs ] || mount -t cgroup2 none /sys/fs/cgroup; }"
# the host's own layout under the cgroup2 mount of the unified run (none: the suite's own namespace)
_V1_SEEN = ("while [ \"$(stat -fc %T /sys/fs/cgroup)\" = cgroup2fs ]; do umount /sys/fs/cgroup || exit 9; done; "
            "[ \"$(stat -fc %T /sys/fs/cgroup/pids)\" = cgroupfs ] || exit 8")


@pytest.mark.integration
@pytest.mark.parametrize("seen, hierarchy", [(_V2_SEEN, cgroups.ROOT), (_V1_SEEN, "/sys/fs/cgroup/pids")],
                         ids=["v2", "v1-pids"])
def test_no_dump_yard_through_a_bind_mount_of_a_sub_cgroup(seen, hierarchy):
    """A hierarchy's mount point holding a bind mount of one of its sub-cgroups (v2: a v2-only host seen
    from a container without a cgroup namespace of its own; v1: over the whole hierarchy's mount):
    /proc/PID/cgroup's paths are not relative to it, so it is no yard (CRIU would not find the task's
    cgroup in it and fail the dump, or walk another one): CRIU mounts its own."""
    import uuid

    sub = f"fastckpt-test-yard-{uuid.uuid4().hex[:8]}"
    # the probe in a cgroup of its own beside the one bound over the hierarchy; all of it goes afterwards
    script = (f"mount --make-rprivate / && {seen} && H={hierarchy} && mkdir $H/$1 $H/$1-task "
              "&& echo $$ > $H/$1-task/cgroup.procs && mount --bind $H/$1 $H || exit 9; "
              "\"$2\" -c \"$3\"; rc=$?; umount $H; echo $$ > $H/cgroup.procs; rmdir $H/$1 $H/$1-task; exit $rc")
    p = subprocess.run(["unshare", "-m", "sh", "-c", script, "yard-probe", sub, sys.executable, _YARD_PROBE],
                       capture_output=True, text=True, timeout=120)
    if p.returncode == 8:
        skip_or_fail("no cgroup v1 pids hierarchy is mounted at /sys/fs/cgroup/pids on this host")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["missing"] == [], f"the yard {out['yard']} lacks the task's cgroups: {out['missing']}"
    assert out["yard"] is None


@pytest.mark.integration
def test_no_dump_yard_left_when_its_links_cannot_be_made(tmp_path):
    """A yard of links whose links cannot be made (a full temporary directory: a tmpfs of two inodes, the
    yard's directory the last): no yard (CRIU mounts its own, the dump goes on), and nothing left there."""
    tmp = tmp_path / "full"
    tmp.mkdir()
    probe = ("import json, os; from fastckpt import cgroups; found = cgroups.dump_yard(os.getpid()); "
             "print(json.dumps({'yard': found, 'left': os.listdir(os.environ['TMPDIR'])}))")
    script = ("mount --make-rprivate / && { [ \"$(stat -fc %T /sys/fs/cgroup)\" = cgroup2fs ] "
              "|| mount -t cgroup2 none /sys/fs/cgroup; } && mount -t tmpfs -o nr_inodes=2 none \"$TMPDIR\" "
              "|| exit 9; exec \"$1\" -c \"$2\"")
    p = subprocess.run(["unshare", "-m", "sh", "-c", script, "yard-probe", sys.executable, probe],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp)})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"yard": None, "left": []}


@pytest.mark.integration
def test_dump_through_the_yard_records_what_criu_mounting_records(container, tmp_path, monkeypatch):
    """The same container checkpointed (left running) through the yard and with CRIU mounting each
    hierarchy itself (FASTCKPT_CG_YARD=0): the same cgroup image, entry by entry; no yard is left behind."""
    import tempfile

    from fastckpt import engine, images

    ct = container()
    private = tmp_path / "tmp"  # the yard's directory of links (where one is made) goes here: only ours
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    recorded = {}
    for yard in ("1", "0"):
        monkeypatch.setenv("FASTCKPT_CG_YARD", yard)
        img = tmp_path / f"img-{yard}"
        engine.checkpoint(ct.id, root=ct.root, image_path=str(img), leave_running=True)
        entries = images.read_image(str(img / "cgroup.img"), "CGROUP").entries
        for entry in entries:  # CRIU leaves the perms of the freezer state it adds unset: memory's garbage
            for ctl in entry.controllers:
                for d in ctl.dirs:
                    for prop in d.properties:
                        if prop.name == "freezer.state":
                            prop.ClearField("perms")
        recorded[yard] = entries
    assert recorded["1"] and recorded["1"] == recorded["0"]
    assert not os.listdir(private), "a yard was left behind"
    ct.assert_running_thawed_advancing()
