"""checkpoint --leave-running of a tiny runc container, by command: `fastckpt checkpoint`
vs `runc checkpoint` (the same container, checkpointed again and again into fresh image
directories; stdin/stdout /dev/null)."""
from __future__ import annotations

import os

import pytest

import benchlib as bl
from benchlib import bench_rounds

pytestmark = pytest.mark.benchmark(group="container: checkpoint --leave-running (CLI)")


def _check(img: str, root: str, cid: str) -> None:
    assert os.path.exists(os.path.join(img, "inventory.img")), os.listdir(img)
    assert os.path.exists(f"/proc/{bl.container_pid(root, cid)}"), "the container did not keep running"


def test_fastckpt_cli(benchmark, runc_root, container, fresh_dir):
    def dump(img):
        bl.run_timed([bl.FASTCKPT, "--root", runc_root, "checkpoint", "--image-path", img, "--leave-running",
                      container], logs=[os.path.join(img, bl.DUMP_LOG)])
        return img

    _check(bench_rounds(benchmark, dump, fresh_dir), runc_root, container)


def test_runc(benchmark, runc_root, container, fresh_dir):
    def dump(img):
        bl.run_timed(["runc", "--root", runc_root, "checkpoint", "--image-path", img, "--leave-running", container],
                     logs=[os.path.join(img, bl.DUMP_LOG)])
        return img

    _check(bench_rounds(benchmark, dump, fresh_dir), runc_root, container)
