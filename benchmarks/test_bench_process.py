"""checkpoint --leave-running of one running process, from Python: fastckpt's API vs pycriu
(vs the criu CLI for reference).  Same CRIU options: images_dir_fd, pid, leave_running,
log file dump.log, log level 4."""
from __future__ import annotations

import os

import pytest

import benchlib as bl
from benchlib import bench_rounds

pytestmark = pytest.mark.benchmark(group="process: checkpoint --leave-running (Python)")


def _assert_images(img: str) -> None:
    names = os.listdir(img)
    assert any(n.startswith("pages-") for n in names), f"no pages image in {img}: {names}"


def test_fastckpt_api(benchmark, sleeper, fresh_dir):
    import fastckpt

    def dump(img):
        fastckpt.checkpoint(pid=sleeper, leave_running=True, image_path=img)
        return img

    _assert_images(bench_rounds(benchmark, dump, fresh_dir))
    assert bl.wait_until(lambda: os.path.exists(f"/proc/{sleeper}"), "the process to live on")


def test_pycriu(benchmark, sleeper, fresh_dir):
    pytest.importorskip("pycriu")

    def dump(img):
        bl.pycriu_dump(sleeper, img)
        return img

    _assert_images(bench_rounds(benchmark, dump, fresh_dir))


def test_criu_cli(benchmark, sleeper, fresh_dir):
    def dump(img):
        bl.run_timed(["criu", "dump", "-t", str(sleeper), "-D", img, "--leave-running", "-o", bl.DUMP_LOG, "-v4"],
                     logs=[os.path.join(img, bl.DUMP_LOG)])
        return img

    _assert_images(bench_rounds(benchmark, dump, fresh_dir))
