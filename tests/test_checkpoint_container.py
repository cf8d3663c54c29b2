"""Integration: real CRIU dumps of real runc containers, through the CLI and the API.

Each test runs its own containers in a private runc root (see conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import ckpt_support as cs
import fastckpt

pytestmark = pytest.mark.integration


def checkpoint_cli(ct, *args, cwd=None):
    return cs.fastckpt("--root", ct.root, "checkpoint", *args, ct.id, cwd=cwd)


assert_ok = cs.assert_ok
assert_images = cs.assert_images


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def restore_log(img) -> str:
    p = os.path.join(str(img), "restore.log")
    return open(p).read()[-3000:] if os.path.exists(p) else "(no restore.log)"


# --- checkpoint, then `runc restore` ----------------------------------------------------

def test_checkpoint_then_runc_restore(container, runc_root, tmp_path):
    ct = container()
    ct.wait_count(3)  # a counter restarted from scratch would write 1, 2, ...
    descriptors = ct.state_json()["external_descriptors"]
    init_pid = ct.pid
    freezer_dir, state_dir = ct.freezer_dir, ct.state_dir
    assert os.path.isdir(freezer_dir)
    img = tmp_path / "img"

    proc = checkpoint_cli(ct, "--image-path", str(img), "--json")
    assert_ok(proc)
    res = json.loads(proc.stdout)
    assert res["image_path"] == str(img) and res["container_id"] == ct.id and res["pid"] == init_pid
    assert res["leave_running"] is False

    names = assert_images(img)
    assert "pstree.img" in res["files"]
    assert mode(img) == 0o700
    with open(img / "descriptors.json") as f:
        assert json.load(f) == descriptors == ["/dev/null"] * 3
    assert (img / "dump.log").exists() and "dump.log" in names
    # the container's netns has no firewall rules and no routes: those images recorded
    # nothing and are gone, so no restore runs iptables-restore or `ip route restore` for them
    assert not [n for n in names if n.startswith(("iptables-", "ip6tables-", "route", "rule-"))], names
    assert [n for n in names if n.startswith("ifaddr-")], names  # lo's addresses are kept

    # the container is gone: from runc, its state dir, its cgroups, its processes
    assert ct.id not in cs.runc_ids(runc_root)
    assert ct.runc_state() is None
    assert not os.path.exists(state_dir)
    assert not os.path.exists(freezer_dir)
    assert not cs.proc_alive(init_pid)
    checkpointed = ct.count()
    assert checkpointed >= 3

    # runc itself restores fastckpt's images
    rc = cs.run_quiet(["runc", "--root", runc_root, "restore", "-d", "--image-path", str(img),
                       "-b", ct.bundle, ct.id])
    assert rc == 0, f"runc restore failed: {restore_log(img)}"
    assert ct.status() == "running"
    ct.remember_cgroups()
    after = cs.wait_until(lambda: (v := ct.count()) is not None and v != checkpointed and v,
                          "the restored counter to write")
    assert after > checkpointed, f"the counter restarted ({after} after {checkpointed}) instead of continuing"
    ct.assert_running_thawed_advancing()


def test_prune_empty_net_images(tmp_path):
    """Only images that record nothing go: empty iptables dumps, route dumps of no route,
    the rules every new network namespace has."""
    from fastckpt import netimages

    magic = b"\x24\x12\x31\x45"  # iproute2's route dump header
    default = subprocess.run(["unshare", "--net", "ip", "rule", "save"], capture_output=True, check=True).stdout
    reseq = bytearray(default)  # the same rules from another dump: other sequence numbers and port ids
    reseq[4 + 8:4 + 16] = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    changed = bytearray(default)
    changed[4 + 16 + 4] ^= 0x01  # the first rule's table
    files = {
        "iptables-10.img": b"", "ip6tables-10.img": b"",
        "iptables-11.img": b"*filter\nCOMMIT\n",
        "route-10.img": magic, "route6-10.img": magic,
        "route-11.img": magic + b"\x01\x02",
        "rule-10.img": bytes(reseq), "rule-11.img": bytes(changed), "rule-12.img": default + default[4:],
        "nftables-10.img": b"", "pages-1.img": b"", "ifaddr-10.img": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    pruned = netimages.prune(str(tmp_path))
    assert sorted(pruned) == ["ip6tables-10.img", "iptables-10.img", "route-10.img", "route6-10.img",
                              "rule-10.img"]
    assert sorted(os.listdir(tmp_path)) == sorted(set(files) - set(pruned))


def test_leave_running(container, runc_root, tmp_path):
    ct = container()
    pid = ct.pid
    res = fastckpt.checkpoint(ct.id, root=runc_root, image_path=str(tmp_path / "img"), leave_running=True)
    assert res.leave_running and res.container_id == ct.id and res.pid == pid
    assert_images(tmp_path / "img")
    assert set(res.files) >= {"pstree.img", "inventory.img", "descriptors.json"}
    assert ct.id in cs.runc_ids(runc_root)
    assert ct.pid == pid and os.path.exists(ct.state_dir)
    ct.assert_running_thawed_advancing()


def test_default_image_path_is_cwd_checkpoint(container, tmp_path):
    ct = container()
    proc = checkpoint_cli(ct, "--leave-running", cwd=str(tmp_path))
    assert_ok(proc)
    assert_images(tmp_path / "checkpoint")
    assert mode(tmp_path / "checkpoint") == 0o700
    ct.assert_running_thawed_advancing()


def test_paused_container_stays_paused(container, runc_root, tmp_path):
    ct = container()
    assert cs.runc(runc_root, "pause", ct.id).returncode == 0
    fastckpt.checkpoint(ct.id, root=runc_root, image_path=str(tmp_path / "img"), leave_running=True)
    assert_images(tmp_path / "img")
    assert ct.status() == "paused" and ct.freezer_state() == "FROZEN"
    assert cs.runc(runc_root, "resume", ct.id).returncode == 0
    ct.assert_running_thawed_advancing()


@pytest.mark.parametrize("leave_running", [
    True,
    False,
], ids=["leave-running", "no-leave-running"])
def test_paused_container_stays_paused_when_criu_fails(container, runc_root, tmp_path, leave_running):
    ct = container()
    assert cs.runc(runc_root, "pause", ct.id).returncode == 0
    with pytest.raises(fastckpt.CriuError, match="Can't connect to server"):
        fastckpt.checkpoint(ct.id, root=runc_root, image_path=str(tmp_path / "img"),
                            page_server=f"127.0.0.1:{cs.free_port()}", leave_running=leave_running)
    assert (ct.status(), ct.freezer_state()) == ("paused", "FROZEN")
    assert cs.runc(runc_root, "resume", ct.id).returncode == 0
    ct.assert_running_thawed_advancing()


def test_created_container_is_refused(container, runc_root, tmp_path):
    ct = container(create_only=True)
    assert ct.status() == "created"
    proc = checkpoint_cli(ct, "--image-path", str(tmp_path / "img"))
    cs.assert_error(proc, 1, "created state")
    assert not os.path.exists(tmp_path / "img" / "pstree.img")
    assert ct.status() == "created"
    assert ct.id in cs.runc_ids(runc_root)


# --- flags ---------------------------------------------------------------------------------

def test_work_path(container, tmp_path):
    ct = container()
    img, work = tmp_path / "img", tmp_path / "work"
    proc = checkpoint_cli(ct, "--image-path", str(img), "--work-path", str(work), "--leave-running", "--json")
    assert_ok(proc)
    assert json.loads(proc.stdout)["log_path"] == str(work / "dump.log")
    assert (work / "dump.log").is_file()
    assert not (img / "dump.log").exists()
    assert_images(img)
    assert not any(n.endswith(".img") for n in cs.images(str(work)))
    assert mode(img) == 0o700 and mode(work) == 0o700
    ct.assert_running_thawed_advancing()


def cgroup_dirs(img) -> int:
    """How many cgroup directories (with their properties) CRIU saved in cgroup.img."""
    images = pytest.importorskip("pycriu.images")
    with open(os.path.join(str(img), "cgroup.img"), "rb") as f:
        entry = images.load(f)["entries"][0]
    return sum(len(c.get("dirs", [])) for c in entry.get("controllers", []))


@pytest.mark.parametrize("cg_mode", ["soft", "full", "strict", "ignore"])
def test_manage_cgroups_mode(container, tmp_path, cg_mode):
    ct = container()
    img = tmp_path / "img"
    proc = checkpoint_cli(ct, "--image-path", str(img), "--manage-cgroups-mode", cg_mode, "--leave-running")
    assert_ok(proc)
    assert_images(img)
    assert (img / "cgroup.img").is_file()
    if cg_mode == "ignore":
        assert cgroup_dirs(img) == 0, "--manage-cgroups-mode ignore still dumped cgroup properties"
    else:
        assert cgroup_dirs(img) > 0, f"--manage-cgroups-mode {cg_mode} dumped no cgroup properties"
    ct.assert_running_thawed_advancing()


@pytest.mark.parametrize("lock", ["auto", "iptables", "nftables", "skip"])
def test_network_lock(container, tmp_path, lock):
    ct = container()
    proc = checkpoint_cli(ct, "--image-path", str(tmp_path / "img"), "--network-lock", lock, "--leave-running")
    assert_ok(proc)
    assert_images(tmp_path / "img")
    ct.assert_running_thawed_advancing()


def criu_lock_rules(img) -> int:
    """How often CRIU's lock (its CRIU table or chains) appears in the dumped netns ruleset."""
    return sum(open(os.path.join(img, p)).read().count("CRIU") for p in cs.images(str(img), "nftables-"))


def test_auto_network_lock_skips_a_loopback_only_netns(container, tmp_path):
    ct = container(network_ns="")  # its own netns, loopback only
    assert_ok(checkpoint_cli(ct, "--image-path", str(tmp_path / "auto"), "--leave-running"))
    assert criu_lock_rules(tmp_path / "auto") == 0, "auto locked a netns that has only loopback"
    assert json.load(open(tmp_path / "auto" / "fastckpt.json"))["network_lock"] == "skip"
    # with established connections to carry, it locks (with nftables)
    assert_ok(checkpoint_cli(ct, "--image-path", str(tmp_path / "tcp"), "--leave-running", "--tcp-established"))
    assert criu_lock_rules(tmp_path / "tcp") > 0, "auto did not lock for --tcp-established"
    assert json.load(open(tmp_path / "tcp" / "fastckpt.json"))["network_lock"] == "nftables"
    ct.assert_running_thawed_advancing()


def test_empty_ns_network(container, tmp_path):
    ct = container(network_ns="")  # a network namespace of its own
    assert ct.state_json()["config"]["namespaces"]  # sanity
    full, empty = tmp_path / "full", tmp_path / "empty"
    assert_ok(checkpoint_cli(ct, "--image-path", str(full), "--leave-running"))
    assert cs.images(str(full), "netns-"), "a plain dump should save the network namespace"
    proc = checkpoint_cli(ct, "--image-path", str(empty), "--empty-ns", "network", "--leave-running")
    assert_ok(proc)
    assert_images(empty)
    assert not cs.images(str(empty), "netns-"), "--empty-ns network still dumped the network namespace"
    assert not cs.images(str(empty), "netdev-")
    ct.assert_running_thawed_advancing()


def test_page_server(container, page_server, tmp_path):
    ct = container()
    img, remote = tmp_path / "img", tmp_path / "remote"
    server, port = page_server(remote)
    proc = checkpoint_cli(ct, "--image-path", str(img), "--page-server", f"127.0.0.1:{port}", "--leave-running")
    assert_ok(proc)
    assert not cs.images(str(img), "pages-"), "pages were written locally despite --page-server"
    assert cs.images(str(remote), "pages-"), f"no pages arrived at the page server: {cs.images(str(remote))}"
    assert cs.images(str(remote), "pagemap-")
    assert server.wait(30) == 0  # the page server got everything and finished
    assert (img / "pstree.img").exists() and (img / "inventory.img").exists()
    ct.assert_running_thawed_advancing()


TCP_PORT = 1234
# a listener and a client in the container's network namespace, both kept open by a sleeping input
TCP_SCRIPT = (f"sleep 100000 | nc -l -p {TCP_PORT} >/dev/null & sleep 0.3; "
              f"sleep 100000 | nc 127.0.0.1 {TCP_PORT} >/dev/null & " + cs.COUNTER.format(path="/tmp/count"))


def test_tcp_established(container, tmp_path):
    ct = container(["sh", "-c", TCP_SCRIPT], network_ns="")
    pid = ct.pid
    cs.wait_until(lambda: cs.established(TCP_PORT, pid), "the TCP connection inside the container")

    proc = checkpoint_cli(ct, "--image-path", str(tmp_path / "without"))
    cs.assert_error(proc, 1, "--tcp-established", criu_lines=True)
    err = proc.stderr
    assert "TCP" in err
    ct.assert_running_thawed_advancing()
    assert cs.established(TCP_PORT, pid)

    proc = checkpoint_cli(ct, "--image-path", str(tmp_path / "with"), "--tcp-established", "--leave-running")
    assert_ok(proc)
    assert_images(tmp_path / "with")
    ct.assert_running_thawed_advancing()
    assert cs.established(TCP_PORT, pid), "the connection did not survive the checkpoint"
