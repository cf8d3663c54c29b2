"""Terminal containers (runc's default spec: terminal: true): checkpoint, and restore with --console-socket.

A real receiver (console_support.ConsoleReceiver) takes each pty master sent to
the socket; the restored shell must answer on the new master. runc is the
oracle both ways: it restores fastckpt's images, fastckpt restores runc's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from test_runc_checkpoint_bats import Bats, require_root_runc_criu
from restore_support import assert_nothing_left

pytestmark = pytest.mark.integration


@pytest.fixture
def term(request, tmp_path):
    require_root_runc_criu("terminal container tests")
    b = Bats("fastckpt", str(tmp_path), request)
    b.setup_busybox()
    yield b
    b.teardown()


def _fastckpt(b: Bats, *args: str) -> "subprocess.CompletedProcess":
    return subprocess.run([sys.executable, "-m", "fastckpt", "--root", b.root, *args], cwd=b.bundle,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def _one_line(r, code: int, *needles: str) -> None:
    assert r.returncode == code, f"exit {r.returncode}: {r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastckpt: "), r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_fastckpt_images_restored_by_runc_and_runc_images_by_fastckpt(term):
    m0 = term.run_console("ct")
    term.recv.run(m0, "echo before > /dev/shm/mark; echo mark-$((1+1))", "mark-2")
    # fastckpt checkpoints, runc restores (runc passes the new master to the socket itself)
    r = _fastckpt(term, "checkpoint", "--image-path", "./img1", "ct")
    assert r.returncode == 0, r.stderr
    term.testcontainer("ct", "checkpointed")
    n = len(term.recv.masters)
    rr = term.runc("restore", "-d", "--image-path", "./img1", "--console-socket", term.console_socket, "ct")
    assert rr.status == 0, rr
    m1 = term.recv.wait_masters(n + 1)
    term.recv.assert_shell_works(m1)
    term.recv.run(m1, "cat /dev/shm/mark", "before")
    # runc checkpoints, fastckpt restores
    rr = term.runc("checkpoint", "--image-path", "./img2", "ct")
    assert rr.status == 0, rr
    term.testcontainer("ct", "checkpointed")
    m2 = term.restore_console("ct", "--image-path", "./img2")
    term.recv.run(m2, "cat /dev/shm/mark", "before")
    assert term.recv.messages[-1] == b"orphan-pts-master"  # what runc sends with the master, too


def test_console_socket_through_the_api(term):
    import fastckpt

    term.run_console("api")
    res = fastckpt.checkpoint("api", root=term.root, image_path=os.path.join(term.bundle, "img"))
    assert res.container_id == "api"
    n = len(term.recv.masters)
    res = fastckpt.restore("api", root=term.root, image_path=os.path.join(term.bundle, "img"), bundle=term.bundle,
                           detach=True, console_socket=term.console_socket)
    term.recv.assert_shell_works(term.recv.wait_masters(n + 1))
    assert term.state("api")["pid"] == res.pid


def test_terminal_restore_flags_refused_before_anything_is_made(term, tmp_path):
    term.run_console("ct")
    assert _fastckpt(term, "checkpoint", "--image-path", "./img", "ct").returncode == 0
    # detached without a console socket: the new pty would have no one to take it (runc's check)
    r = _fastckpt(term, "restore", "-d", "--image-path", "./img", "ct")
    _one_line(r, 2, "console socket")
    assert_nothing_left("ct", term.root, str(tmp_path))
    # a socket nobody listens on
    r = _fastckpt(term, "restore", "-d", "--image-path", "./img", "--console-socket", "/nonexistent.sock", "ct")
    _one_line(r, 2, "--console-socket /nonexistent.sock")
    assert_nothing_left("ct", term.root, str(tmp_path))
    # then it restores
    term.restore_console("ct", "--image-path", "./img")


def test_console_socket_refused_for_a_container_without_terminal(term, tmp_path):
    def no_tty(cfg):
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["sleep", "1000"]
    term.update_config(no_tty)
    with open(os.devnull, "r+b") as null:
        assert subprocess.run(["runc", "--root", term.root, "run", "-d", "plain"], cwd=term.bundle, stdin=null,
                              stdout=null, stderr=null).returncode == 0
    assert _fastckpt(term, "checkpoint", "--image-path", "./img", "plain").returncode == 0
    r = _fastckpt(term, "restore", "-d", "--image-path", "./img", "--console-socket", term.console_socket, "plain")
    _one_line(r, 2, "console socket")
    assert_nothing_left("plain", term.root, str(tmp_path))
    rr = term.runc("restore", "-d", "--image-path", "./img", "--console-socket", term.console_socket, "plain")
    assert rr.status != 0 and "console socket" in rr.output, rr  # runc refuses it the same way


def test_exec_session_beside_the_console_as_runc(term):
    """A `runc exec -t` session beside the console (two ptys whose masters are outside): fastckpt
    checkpoints and restores the container as runc does (CRIU hands back the console's pty master)."""
    def with_exec_session(cid: str) -> None:
        term.run_console(cid)
        n = len(term.recv.masters)
        r = term.runc("exec", "-d", "-t", "--console-socket", term.console_socket, cid, "sh")
        assert r.status == 0, r
        term.recv.assert_shell_works(term.recv.wait_masters(n + 1))

    results = {}
    for tool in ("runc", "fastckpt"):
        cid = f"ct-{tool}"
        with_exec_session(cid)
        ck = (term.runc("checkpoint", "--image-path", f"./img-{tool}", cid).status if tool == "runc"
              else _fastckpt(term, "checkpoint", "--image-path", f"./img-{tool}", cid).returncode)
        assert ck == 0
        n = len(term.recv.masters)
        if tool == "runc":
            rr = term.runc("restore", "-d", "--image-path", f"./img-{tool}", "--console-socket",
                           term.console_socket, cid)
            assert rr.status == 0, rr
            m = term.recv.wait_masters(n + 1)
            term.recv.assert_shell_works(m)
        else:
            term.restore_console(cid, "--image-path", f"./img-{tool}")
        time.sleep(0.5)  # any further master would have come by now
        results[tool] = len(term.recv.masters) - n
        term.testcontainer(cid, "running")
    assert results["fastckpt"] == results["runc"], results


def test_foreground_restore_relays_the_terminal(term):
    """No -d, no --console-socket: fastckpt is the terminal's other end, as runc is (stdin in, output out)."""
    term.run_console("fg")
    assert _fastckpt(term, "checkpoint", "--image-path", "./img", "fg").returncode == 0
    p = subprocess.Popen([sys.executable, "-m", "fastckpt", "--root", term.root, "restore", "--image-path", "./img",
                          "fg"], cwd=term.bundle, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(b"echo fg-$((6*7))-ok\nexit 3\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert b"fg-42-ok" in out, (out, err)
    assert p.returncode == 3, (p.returncode, err)
    term.testcontainer("fg", "checkpointed")  # gone with its init, as after runc's foreground restore
