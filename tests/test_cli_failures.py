"""Integration: bad input and CRIU failures through the CLI never hurt a running container.

Each case runs `fastckpt checkpoint` (without --leave-running, so a wrongly
accepted request would end the container) against a RUNNING container and
asserts the message, the exit code, no traceback, and that the container is
still running, thawed and counting afterwards.
"""
from __future__ import annotations

import os

import pytest

import ckpt_support as cs

pytestmark = pytest.mark.integration

BAD_OPTIONS = [
    (["--page-server", "foo"], "Use --page-server ADDRESS:PORT to specify page server"),
    (["--page-server", "host:abc"], "Invalid port number"),
    (["--page-server", "a:b:c"], "Use --page-server ADDRESS:PORT to specify page server"),
    (["--page-server", "127.0.0.1:0"], "Invalid port number"),
    (["--manage-cgroups-mode", "bogus"], "Invalid manage cgroups mode 'bogus'"),
    (["--empty-ns", "pid"], "namespace 'pid' is not supported by --empty-ns"),
    (["--network-lock", "bogus"], "Invalid network lock method 'bogus'"),
]


def assert_untouched(ct, img):
    assert not os.path.exists(os.path.join(str(img), "pstree.img")), "CRIU dumped the container anyway"
    ct.assert_running_thawed_advancing()


@pytest.mark.parametrize("args, needle", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option(container, tmp_path, args, needle):
    ct = container()
    img = tmp_path / "img"
    proc = cs.fastckpt("--root", ct.root, "checkpoint", "--image-path", str(img), *args, ct.id)
    cs.assert_error(proc, 2, needle)
    assert_untouched(ct, img)


def test_unknown_container(container, tmp_path):
    ct = container()
    missing = cs.new_id()
    img = tmp_path / "img"
    proc = cs.fastckpt("--root", ct.root, "checkpoint", "--image-path", str(img), missing)
    cs.assert_error(proc, 1, repr(missing), "does not exist")
    assert_untouched(ct, img)


@pytest.mark.parametrize("flag, what", [("--image-path", "image directory"), ("--work-path", "work directory")])
def test_directory_that_cannot_be_created(container, tmp_path, flag, what):
    ct = container()
    blocker = tmp_path / "regular-file"
    blocker.write_text("not a directory\n")
    bad = blocker / "sub"
    args = [flag, str(bad)] if flag == "--image-path" else ["--image-path", str(tmp_path / "img"), flag, str(bad)]
    proc = cs.fastckpt("--root", ct.root, "checkpoint", *args, ct.id)
    cs.assert_error(proc, 1, f"cannot create {what} {bad}", "Not a directory")
    assert blocker.read_text() == "not a directory\n"
    assert_untouched(ct, tmp_path / "img")


def test_criu_failure_unreachable_page_server(container, tmp_path):
    ct = container()
    img = tmp_path / "img"
    port = cs.free_port()  # nothing listens there
    proc = cs.fastckpt("--root", ct.root, "checkpoint", "--image-path", str(img),
                       "--page-server", f"127.0.0.1:{port}", ct.id)
    cs.assert_error(proc, 1, f"Can't connect to server 127.0.0.1:{port}",
                                   f"(log: {img / 'dump.log'})", criu_lines=True)
    err = proc.stderr
    first = err.splitlines()[0]
    assert first.startswith("fastckpt: criu dump failed: Can't connect to server")
    assert "RLIMIT" not in err  # CRIU's harmless error line is not shown
    assert (img / "dump.log").is_file()
    assert_untouched(ct, img)
    assert ct.id in cs.runc_ids(ct.root)
