"""Integration: what reaches the user's terminal when CRIU fails is fastckpt's one line (and CRIU's
log lines after it): never libcriu's own perror()s, glibc's abort message of a crashing CRIU, CRIU's
raw stderr or a traceback; through the API, nothing at all on stderr.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import ckpt_support as cs

pytestmark = pytest.mark.integration

UNRESOLVABLE = "no.such.host.invalid:1234"  # .invalid never resolves (RFC 6761)
# libcriu's messages (lib/c/criu.c) and glibc's
LEAKS = ("free()", "Can't receive response", "Failed unpacking response", "Can't send request",
         "Can't read request", "Traceback", "Warn  (", "Error (")


def assert_clean(stderr: str) -> list[str]:
    """One `fastckpt: ` line, then only CRIU's log lines (indented); none of the leaks."""
    lines = stderr.splitlines()
    assert lines and lines[0].startswith("fastckpt: "), stderr
    assert all(l.startswith("  ") for l in lines[1:]), stderr
    for leak in LEAKS:
        assert leak not in stderr, f"{leak!r} leaked: {stderr!r}"
    return lines


def test_unresolvable_page_server_cli(proc_tree, tmp_path):
    tree = proc_tree.counter(str(tmp_path / "count"))
    r = cs.fastckpt("checkpoint", "--pid", str(tree.pid), "--leave-running", "--image-path", str(tmp_path / "img"),
                    "--page-server", UNRESOLVABLE)
    assert r.returncode == 1, r
    lines = assert_clean(r.stderr)
    assert "criu dump failed: Failed to resolve hostname: no.such.host.invalid" in lines[0], lines
    assert tree.alive()
    tree.wait_advancing()


def test_unresolvable_page_server_api_prints_nothing(proc_tree, tmp_path):
    """The API raises; the caller's stderr stays empty (libcriu's prints are held back), and what the
    caller itself writes to stderr meanwhile still gets there."""
    tree = proc_tree.counter(str(tmp_path / "count"))
    code = f"""
import sys, threading, time, fastckpt
def chatter():
    time.sleep(0.001)
    sys.stderr.write("the caller's own line\\n"); sys.stderr.flush()
threading.Thread(target=chatter).start()
try:
    fastckpt.checkpoint(pid={tree.pid}, image_path={str(tmp_path / 'img')!r}, leave_running=True,
                        page_server={UNRESOLVABLE!r})
except fastckpt.CriuError as e:
    print("raised:", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "raised: criu dump failed: Failed to resolve hostname" in r.stdout, r
    assert r.stderr == "the caller's own line\n", r.stderr
    assert tree.alive()


def test_check_as_non_root_is_one_line():
    import robust_support as rb

    assert shutil.which("setpriv"), "setpriv (util-linux, essential in Debian) is not installed"
    # fastckpt as nobody runs it, wherever the checkout is (a clone under a 0700 home included)
    r = subprocess.run(rb.setpriv() + rb.nobody_fastckpt() + ["check"], cwd="/", stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r
    lines = assert_clean(r.stderr)
    assert len(lines) == 1, r.stderr
    assert "check needs root (or the capabilities CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN)" in lines[0], lines
    assert "libcriu returned" not in r.stderr


def test_held_back_are_libcriu_lines_only():
    """While libcriu is called, fd 2 is held back and libcriu's own messages dropped; a line of the
    caller's that merely starts alike ("Can't ...") reaches stderr, in its order."""
    code = """
import os
from fastckpt import criu_proc
with criu_proc._LibcriuStderr():
    os.write(2, b"Can't open my own config: No such file or directory\\n")
    os.write(2, b"Can't send request: Broken pipe\\n")
    os.write(2, b"Failed unpacking response: Success\\n")
    os.write(2, b"the caller's own line\\n")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    assert r.stderr == "Can't open my own config: No such file or directory\nthe caller's own line\n", r.stderr
