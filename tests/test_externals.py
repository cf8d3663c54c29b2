"""Integration: CheckpointOptions.extra_externals reach CRIU (its --external KEY objects)."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

import ckpt_support as cs
import fastckpt

pytestmark = pytest.mark.integration


def _tree_holding(proc_tree, sock: socket.socket, count_file: str) -> cs.ProcTree:
    """A counter that holds SOCK (under its own fd number): a unix socket whose peer is outside the tree."""
    with open(os.devnull, "r+b") as null:
        p = subprocess.Popen(["busybox", "sh", "-c", cs.COUNTER.format(path=count_file)], stdin=null,
                             stdout=null, stderr=null, start_new_session=True, pass_fds=(sock.fileno(),))
    tree = cs.ProcTree(p, True, count_file)
    proc_tree.trees.append(tree)  # torn down with the fixture's trees
    cs.wait_until(lambda: cs.read_int(count_file), f"pid {p.pid} to write {count_file}")
    return tree


def test_extra_externals_reach_criu(proc_tree, tmp_path):
    """A tree connected to an outside unix socket dumps only when that socket is named external
    (unix[INODE]): without it CRIU refuses, with it the dump completes and the tree runs on."""
    ours_in_tree, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tree = _tree_holding(proc_tree, ours_in_tree, str(tmp_path / "count"))
        ino = os.fstat(ours_in_tree.fileno()).st_ino
    finally:
        ours_in_tree.close()
    try:
        with pytest.raises(fastckpt.CriuError) as refused:
            fastckpt.checkpoint(pid=tree.pid, image_path=str(tmp_path / "without"), leave_running=True)
        assert "External socket is used" in str(refused.value.log_errors), refused.value.log_errors
        res = fastckpt.checkpoint(pid=tree.pid, image_path=str(tmp_path / "with"), leave_running=True,
                                  extra_externals=[f"unix[{ino}]"])
        assert "pstree.img" in res.files
        assert tree.alive()
        tree.wait_advancing()
    finally:
        peer.close()
