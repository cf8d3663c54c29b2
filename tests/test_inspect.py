"""`fastckpt inspect` and fastckpt.inspect(): what a checkpoint holds, read from its images.

Unit tests on crafted image directories (bad input: one line, non-zero exit);
integration tests checkpoint a real container with a known process tree (a
shell counting, a sleeping child, a process of three threads sharing memory
with its child, a listening TCP socket, an established loopback connection, an
open file, a bind mount) with fastckpt and with `runc checkpoint`
(the container paused meanwhile, so what /proc says of it is what the images
hold), and check both outputs of inspect against /proc.
"""
from __future__ import annotations

import json
import os
import tempfile
import struct
import subprocess

import pytest

import ckpt_support as cs
import fastckpt
from fastckpt import images, inspection
from fastckpt.errors import ImageError

PAGE = os.sysconf("SC_PAGE_SIZE")


# --- crafted images -------------------------------------------------------------------------

def _write(path, kind, entries, head=True):
    with open(path, "wb") as f:
        f.write(images.encode(kind, entries, head_magic="IMG_COMMON" if head else None))


def crafted(d) -> str:
    """A checkpoint of two tasks (pid 1 with two threads, its child 2): inventory, pstree, cores,
    pagemaps and pages."""
    os.makedirs(d)
    M = images.message_class
    _write(os.path.join(d, "inventory.img"), "INVENTORY", [M("inventory_entry")(img_version=2, fdinfo_per_id=True)],
           head=False)
    _write(os.path.join(d, "pstree.img"), "PSTREE", [
        M("pstree_entry")(pid=1, ppid=0, pgid=1, sid=1, threads=[1, 3]),
        M("pstree_entry")(pid=2, ppid=1, pgid=1, sid=1, threads=[2])])
    for pid, comm in ((1, "server"), (2, "worker")):
        core = M("core_entry")(mtype=1)
        core.tc.task_state, core.tc.exit_code, core.tc.personality, core.tc.flags = 1, 0, 0, 0
        core.tc.blk_sigset, core.tc.comm = 0, comm
        _write(os.path.join(d, f"core-{pid}.img"), "CORE", [core])
        _write(os.path.join(d, f"pagemap-{pid}.img"), "PAGEMAP", [
            M("pagemap_head")(pages_id=pid),
            M("pagemap_entry")(vaddr=0x400000, compat_nr_pages=0, flags=images.PE_PRESENT, nr_pages=pid + 1)])
        with open(os.path.join(d, f"pages-{pid}.img"), "wb") as f:
            f.write(b"\0" * (pid + 1) * PAGE)
    return str(d)


def test_crafted_checkpoint(tmp_path):
    d = crafted(tmp_path / "img")
    info = fastckpt.inspect(d)
    assert info == fastckpt.inspect_path(d)
    assert info["made_by"] == "runc"  # no fastckpt.json: images of `runc checkpoint`
    procs = {p["pid"]: p for p in info["processes"]}
    assert set(procs) == {1, 2}
    assert (procs[1]["command"], procs[1]["threads"], procs[1]["tids"]) == ("server", 2, [1, 3])
    assert (procs[2]["command"], procs[2]["ppid"], procs[2]["threads"]) == ("worker", 1, 1)
    assert procs[1]["memory"]["private"] == {"pages": 2, "bytes": 2 * PAGE}
    assert procs[2]["memory"]["bytes"] == 3 * PAGE
    assert info["statistics"] is None and info["sockets"] == [] and info["mounts"] == []
    json.dumps(info)  # JSON as it is
    text = inspection.render(info)
    assert "[1] server" in text and "[2] worker" in text and "threads 2" in text


def test_cli_both_outputs(tmp_path):
    d = crafted(tmp_path / "img")
    r = cs.fastckpt("inspect", "--json", d)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(json.dumps(fastckpt.inspect(d)))
    r = cs.fastckpt("inspect", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == inspection.render(fastckpt.inspect(d))


def _truncate(path, by):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - by)


@pytest.mark.parametrize("damage, needles", [
    (lambda d: os.unlink(os.path.join(d, "inventory.img")), ["not a checkpoint", "inventory.img"]),
    (lambda d: _truncate(os.path.join(d, "pstree.img"), 3), ["pstree.img", "truncated"]),
    (lambda d: open(os.path.join(d, "core-2.img"), "wb").write(b"\x19\x43\x56\x54\x30\x30\x27\x50"),
     ["core-2.img", "not a CRIU core image"]),
    (lambda d: _truncate(os.path.join(d, "pagemap-1.img"), 2), ["pagemap-1.img", "truncated"]),
    (lambda d: open(os.path.join(d, "inventory.img"), "wb").write(b"garbage!!"), ["inventory.img"]),
], ids=["no-inventory", "truncated-pstree", "wrong-core", "truncated-pagemap", "garbage-inventory"])
def test_damaged_checkpoint_one_line(tmp_path, damage, needles):
    d = crafted(tmp_path / "img")
    damage(d)
    with pytest.raises(ImageError):
        fastckpt.inspect(d)
    for args in (("inspect", d), ("inspect", "--json", d)):
        r = cs.fastckpt(*args)
        cs.assert_error(r, 1, *needles)
        assert r.stdout == ""


def test_not_a_checkpoint(tmp_path):
    cs.assert_error(cs.fastckpt("inspect", str(tmp_path)), 1, "is not a checkpoint")
    cs.assert_error(cs.fastckpt("inspect", str(tmp_path / "nowhere")), 1, "does not exist")
    archive = tmp_path / "ckpt.tar.zst"
    archive.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    # an archive is unpacked and checked as an import checks it: a damaged one is named, in one line
    r = cs.fastckpt("inspect", str(archive))
    cs.assert_error(r, 1, "damaged or truncated")
    err = r.stderr
    assert "restored" not in err, err  # inspect restores nothing: no word of it
    with pytest.raises(ImageError, match="damaged or truncated"):
        fastckpt.inspect_path(str(archive))
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("fastckpt-inspect-")]
    cs.assert_error(cs.fastckpt("inspect"), 2, "PATH")


def _threads_file(cgroup: str) -> str:
    """The file listing a cgroup's threads: v1's tasks, v2's cgroup.threads."""
    v1 = os.path.join(cgroup, "tasks")
    return v1 if os.path.exists(v1) else os.path.join(cgroup, "cgroup.threads")


# --- real checkpoints ------------------------------------------------------------------------

LISTEN_PORT, CONN_PORT = 8000, 8001
THREADS = 3  # of /threads, below
SCRIPT = f"""exec 3>/tmp/held.txt
sleep 1000 &
/threads &
(sleep 1000 | nc -l -p {LISTEN_PORT}) &
(sleep 1000 | nc -l -p {CONN_PORT}) &
sleep 0.3
(sleep 1000 | nc 127.0.0.1 {CONN_PORT}) &
i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done"""


SHARED_PAGES, PRIVATE_PAGES = 64, 32  # written by /threads, below
THREADS_C = r"""
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static void *idle(void *arg) { for (;;) pause(); return arg; }
int main(void) {
    long page = sysconf(_SC_PAGESIZE);
    char *shared = mmap(0, %(shared)d * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char *private = mmap(0, %(private)d * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(shared, 0x5a, %(shared)d * page);
    memset(private, 0xa5, %(private)d * page);
    if (fork() == 0)  /* a child mapping the same shared memory */
        for (;;) pause();
    pthread_t t;
    for (int i = 1; i < %(threads)d; i++) pthread_create(&t, 0, idle, 0);
    for (;;) pause();
}
""" % {"threads": THREADS, "shared": SHARED_PAGES, "private": PRIVATE_PAGES}


def threads_binary(d) -> str:
    """A static program of THREADS threads (busybox has none) with SHARED_PAGES of anonymous shared memory
    that its child maps too, and PRIVATE_PAGES of its own, for a bind mount."""
    src, out = os.path.join(d, "threads.c"), os.path.join(d, "threads")
    with open(src, "w") as f:
        f.write(THREADS_C)
    r = subprocess.run(["gcc", "-static", "-pthread", "-O2", "-o", out, src], capture_output=True, text=True)
    assert r.returncode == 0, f"gcc (installed by make deps, build-essential) failed: {r.stderr}"
    return out


def _status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def proc_facts(ct) -> dict:
    """What /proc says of the (paused) container: by pid in its namespace, ppid, comm, threads, RSS;
    its mount points; the loopback client's port."""
    with open(os.path.join(ct.freezer_dir, "cgroup.procs")) as f:
        host_pids = [int(x) for x in f.read().split()]
    ns = {hp: int(_status(hp)["NSpid"].split()[-1]) for hp in host_pids}
    procs = {}
    for hp in host_pids:
        st = _status(hp)
        procs[ns[hp]] = {"ppid": ns.get(int(st["PPid"]), 0), "command": st["Name"], "threads": int(st["Threads"]),
                         "rss": int(st["VmRSS"].split()[0]) * 1024}
    with open(f"/proc/{ct.pid}/mountinfo") as f:
        mounts = {line.split()[4] for line in f}
    client = [s["lport"] for s in cs.tcp_sockets(ct.pid) if s["state"] == cs.TCP_ESTABLISHED
              and s["rport"] == CONN_PORT]
    assert len(client) == 1, cs.tcp_sockets(ct.pid)
    return {"procs": procs, "mounts": mounts, "client_port": client[0]}


def _criu_version() -> str:
    out = subprocess.run(["criu", "--version"], capture_output=True, text=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("Version:"))


def check(info: dict, facts: dict, images_dir: str, tool: str) -> None:
    procs = {p["pid"]: p for p in info["processes"]}
    assert set(procs) == set(facts["procs"])
    for pid, f in facts["procs"].items():
        p = procs[pid]
        assert (p["ppid"], p["command"], p["threads"]) == (f["ppid"], f["command"], f["threads"]), (p, f)
        assert p["state"] == "alive"
        m = p["memory"]
        # what CRIU dumps of a process's own is what it has in memory (clean file pages aside):
        # 0 < dumped <= RSS (shared memory counts in the RSS of who touched it only)
        assert 0 < m["private"]["bytes"] <= f["rss"], (pid, m, f)
        assert m["bytes"] == m["pages"] * PAGE and m["vmas"] > 0
    pages_files = sum(os.path.getsize(os.path.join(images_dir, n)) for n in os.listdir(images_dir)
                      if n.startswith("pages-"))
    shmem = [images.read_pagemap(os.path.join(images_dir, n)) for n in os.listdir(images_dir)
             if n.startswith("pagemap-shmem-")]
    assert [pm.stored_pages for pm in shmem] == [SHARED_PAGES]  # dumped once, for both who map it
    # every page in the pages files is a process's own or the shared segment's
    assert sum(p["memory"]["private"]["bytes"] for p in procs.values()) + SHARED_PAGES * PAGE == pages_files
    stats = info["statistics"]
    assert stats["pages_written"] * PAGE + stats["shpages_written"] * PAGE == pages_files
    assert stats["shpages_written"] == SHARED_PAGES
    threaded = [p for p in procs.values() if p["command"] == "threads"]
    assert sorted(p["threads"] for p in threaded) == [1, THREADS]
    parent = next(p for p in threaded if p["threads"] == THREADS)
    child = next(p for p in threaded if p["threads"] == 1)
    assert len(parent["tids"]) == THREADS and child["ppid"] == parent["pid"]
    for p in (parent, child):
        m = p["memory"]
        assert m["shared"]["pages"] == SHARED_PAGES and m["shared"]["bytes"] == SHARED_PAGES * PAGE
        assert m["shared"]["virtual_bytes"] >= SHARED_PAGES * PAGE
        assert m["private"]["pages"] >= PRIVATE_PAGES  # its own copy (a child's too, copy-on-write)
        assert m["bytes"] == m["private"]["bytes"] + m["shared"]["bytes"]
    root = procs[1]
    assert root["cmdline"][:2] == ["sh", "-c"] and root["cmdline"][2].startswith("exec 3>/tmp/held.txt")
    for p in procs.values():  # the open file, inherited by every process
        assert {"fd": 3, "path": "/tmp/held.txt"}.items() <= next(fd for fd in p["files"] if fd["fd"] == 3).items()
    # sockets
    listeners = [s for s in info["sockets"] if s["state"] == "LISTEN"]
    assert [s["local_port"] for s in listeners] == [LISTEN_PORT]
    assert procs[listeners[0]["pid"]]["cmdline"] == ["nc", "-l", "-p", str(LISTEN_PORT)]
    conns = sorted((s["local_port"], s["remote_port"]) for s in info["tcp_connections"])
    assert conns == sorted([(CONN_PORT, facts["client_port"]), (facts["client_port"], CONN_PORT)])
    for s in info["tcp_connections"]:
        assert s["remote"].endswith(f"127.0.0.1]:{s['remote_port']}") or s["remote"] == f"127.0.0.1:{s['remote_port']}"
        assert "queued_bytes" in s  # its tcp-stream image was read
    assert {m["mountpoint"] for m in info["mounts"]} == facts["mounts"]
    assert {"/proc", "/dev", "/sys", "/threads"} <= facts["mounts"]
    assert next(m for m in info["mounts"] if m["mountpoint"] == "/threads").get("external")
    assert info["checkpoint"]["criu_version"] == _criu_version()
    assert info["checkpoint"]["options"]["tcp_established"] is True
    assert info["container"]["hostname"]
    assert info["container"]["stdio"] == ["/dev/null"] * 3  # runc's descriptors.json
    if tool == "fastckpt":
        lo = [i for i in info["network"]["interfaces"] if i["name"] == "lo"]
        assert lo and lo[0]["up"] and "127.0.0.1/8" in lo[0]["addresses"], info["network"]
    # the tree
    text = inspection.render(info)
    for pid, f in facts["procs"].items():
        assert f"[{pid}] " in text
    for needle in (f"nc -l -p {LISTEN_PORT}", f"nc 127.0.0.1 {CONN_PORT}", "LISTEN", "ESTABLISHED",
                   "fd 3: /tmp/held.txt", "CRIU statistics", f"-> 127.0.0.1:{CONN_PORT}", "/proc proc"):
        assert needle in text, needle


@pytest.mark.integration
@pytest.mark.parametrize("tool", ["fastckpt", "runc"])
def test_inspect_real_checkpoint(container, runc_root, tmp_path, tool):
    binary = threads_binary(str(tmp_path))
    ct = container(["sh", "-c", SCRIPT], mounts=[{"destination": "/threads", "type": "bind", "source": binary,
                                                  "options": ["bind", "ro"]}])
    # (busybox nc listens on IPv6's any address: not in /proc/net/tcp, which cs.listening reads)
    cs.wait_until(lambda: cs.established(CONN_PORT, ct.pid)
                  and len(open(os.path.join(ct.freezer_dir, "cgroup.procs")).read().split()) >= 10
                  and len(open(_threads_file(ct.freezer_dir)).read().split()) >= 10 + THREADS - 1,
                  "the container's sockets and processes")
    assert cs.run_quiet(["runc", "--root", runc_root, "pause", ct.id]) == 0
    try:
        facts = proc_facts(ct)
        images_dir = str(tmp_path / "images")
        if tool == "fastckpt":
            r = cs.fastckpt("--root", runc_root, "checkpoint", "--leave-running", "--tcp-established",
                            "--image-path", images_dir, ct.id)
            assert r.returncode == 0, r.stderr
        else:
            rc = cs.run_quiet(["runc", "--root", runc_root, "checkpoint", "--leave-running", "--tcp-established",
                               "--image-path", images_dir, ct.id])
            assert rc == 0, f"runc checkpoint failed (exit {rc})"
        assert ct.status() == "paused"
    finally:
        cs.run_quiet(["runc", "--root", runc_root, "resume", ct.id])
    r = cs.fastckpt("inspect", "--json", images_dir)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["made_by"] == tool
    if tool == "fastckpt":
        assert info["container"]["id"] == ct.id and info["container"]["runtime"] == "runc"
        assert info["checkpoint"]["options"]["manifest"] is True
    check(info, facts, images_dir, tool)
    assert info == json.loads(json.dumps(fastckpt.inspect(images_dir)))  # the API says the same
    r = cs.fastckpt("inspect", images_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == inspection.render(info)
    ct.wait_advancing()  # still running, unharmed
    # damaged: one line naming the file, for either output
    _truncate(os.path.join(images_dir, "files.img"), 5)
    for args in (("inspect", images_dir), ("inspect", "--json", images_dir)):
        cs.assert_error(cs.fastckpt(*args), 1, "files.img", "truncated")


@pytest.mark.integration
def test_inspect_process_tree(proc_tree, tmp_path):
    """A process tree checkpointed with --pid: no container; its real pids, commands, executable, cwd."""
    tree = proc_tree.counter(str(tmp_path / "count"), prefix="sleep 1000 & ")
    kids = [int(x) for x in open(f"/proc/{tree.pid}/task/{tree.pid}/children").read().split()]
    images_dir = str(tmp_path / "images")
    r = cs.fastckpt("checkpoint", "--pid", str(tree.pid), "--leave-running", "--image-path", images_dir)
    assert r.returncode == 0, r.stderr
    info = fastckpt.inspect(images_dir)
    assert info["made_by"] == "fastckpt" and info["checkpoint"]["options"]["kind"] == "process"
    assert info["container"]["id"] is None and info["container"]["runtime"] is None
    procs = {p["pid"]: p for p in info["processes"]}
    assert tree.pid in procs and procs[tree.pid]["ppid"] == 0
    sleeper = [p for p in procs.values() if p["cmdline"] == ["sleep", "1000"]]
    assert len(sleeper) == 1 and sleeper[0]["pid"] in kids and sleeper[0]["ppid"] == tree.pid
    root = procs[tree.pid]
    assert root["cmdline"][:2] == ["busybox", "sh"] and root["command"] == "busybox"
    assert root["exe"] == os.path.realpath(f"/proc/{tree.pid}/exe") and root["cwd"] == os.getcwd()
    assert info["mounts"] == []  # the host's mount namespace is not the tree's own: not dumped
    tree.wait_advancing()


# --- podman's checkpoints ----------------------------------------------------------------------

PODMAN_SCRIPT = "exec 3>/tmp/held.txt; sleep 1000 & i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done"


@pytest.fixture
def podman():
    """A podman of the test's own (tests/podman_support.py: storage, run root, containers.conf)."""
    import podman_support as ps

    yield from ps.private()


@pytest.mark.integration
def test_inspect_podman_checkpoint(podman, tmp_path):
    """podman's exported checkpoint, unpacked: its checkpoint/ directory with config.dump and spec.dump."""
    import tarfile

    from fastckpt import bundle as fb

    rootfs = str(tmp_path / "rootfs")
    fb.make_rootfs(rootfs)
    name = "inspect-" + cs.new_id()[-12:]
    image = f"localhost/{name}"
    podman.import_rootfs(rootfs, image)
    podman.run(image, "sh", "-c", PODMAN_SCRIPT, name=name)
    cid = podman.ok("inspect", "--format", "{{.Id}}", name)

    def counter():
        out = podman.exec_cat(name, "/tmp/count")
        return int(out) if out and out.strip().isdigit() else None

    cs.wait_advancing(counter, "the podman container's counter")
    archive = str(tmp_path / "ckpt.tar")
    podman.ok("container", "checkpoint", "--export", archive, "--compress", "none", name)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as t:
        t.extractall(unpacked, filter="tar") if hasattr(tarfile, "tar_filter") else t.extractall(unpacked)
    for path in (str(unpacked), str(unpacked / "checkpoint"), archive):  # the archive itself too
        r = cs.fastckpt("inspect", "--json", path)
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["made_by"] == "podman"
        c = info["container"]
        assert (c["id"], c["name"], c["runtime"], c["engine"]) == (cid, name, "runc", "podman")
        assert c["image"] == f"{image}:latest" and c["args"] == ["sh", "-c", PODMAN_SCRIPT]
        assert len(c["stdio"]) == 3  # conmon's pipes
        procs = {p["pid"]: p for p in info["processes"]}
        assert procs[1]["cmdline"] == ["sh", "-c", PODMAN_SCRIPT]
        assert [p["cmdline"] for p in procs.values() if p["ppid"] == 1 and p["command"] == "sleep"
                and p["cmdline"] == ["sleep", "1000"]]
        assert any(fd["fd"] == 3 and fd["path"] == "/tmp/held.txt" for fd in procs[1]["files"])
        assert info["statistics"]["pages_written"] > 0  # podman keeps stats-dump beside checkpoint/
        text = cs.fastckpt("inspect", path).stdout
        assert f"name: {name}" in text and "engine: podman" in text and "[1] sh -c exec 3>/tmp/held.txt" in text
