"""``mem MIB [TICK_MS]``: the test container whose memory a restore must bring back intact.

A tiny static C program (built once per test session with ``gcc -O2 -static``) that fills MIB MiB
with a non-zero pattern, writes /tmp/ready, then counts every TICK_MS (100) ms into /tmp/count and
/tmp/count.log (as the busybox counter does: a restored counter's log reads 1..n without a restart).
When /tmp/verify exists it re-checks all its memory and writes "ok 0" (or "bad <words>") to
/tmp/verified, so a restored container's memory is checked exactly, not sampled
(Container.verify_memory).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

import pytest

from .containers import CONTAINER_COUNTER, Container, ContainerFactory

MEM_C = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void put(const char *path, const char *s, int append)
{
	int fd = open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
	if (fd >= 0) {
		if (write(fd, s, strlen(s)) < 0)
			_exit(3);
		close(fd);
	}
}

static uint64_t pattern(size_t i) { return (i * 0x9E3779B97F4A7C15ull) | 1; } /* never zero */

int main(int argc, char **argv)
{
	if (argc != 2 && argc != 3)
		return 2;
	size_t size = (size_t)strtoull(argv[1], NULL, 10) << 20;
	long tick_ms = argc == 3 ? strtol(argv[2], NULL, 10) : 100;
	uint64_t *p = NULL;
	if (size) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return 1;
	}
	size_t n = size / sizeof(*p);
	for (size_t i = 0; i < n; i++)
		p[i] = pattern(i);
	put("/tmp/ready", "1\n", 0);
	char buf[64];
	struct timespec tick = {tick_ms / 1000, tick_ms % 1000 * 1000000};
	for (unsigned long c = 1;; c++) {
		snprintf(buf, sizeof buf, "%lu\n", c);
		put("/tmp/count", buf, 0);
		put("/tmp/count.log", buf, 1);
		if (access("/tmp/verify", F_OK) == 0) {
			size_t bad = 0;
			for (size_t i = 0; i < n; i++)
				bad += p[i] != pattern(i);
			snprintf(buf, sizeof buf, "%s %zu %zu\n", bad ? "bad" : "ok", bad, size >> 20);
			put("/tmp/verified.tmp", buf, 0);
			rename("/tmp/verified.tmp", "/tmp/verified");
			unlink("/tmp/verify");
		}
		nanosleep(&tick, NULL);
	}
}
"""


def build_mem(outdir: str) -> str:
    """Compile MEM_C statically into OUTDIR; returns the binary (skips the test when gcc cannot)."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed (the big test container is a static C program)")
    src = os.path.join(outdir, "mem.c")
    out = os.path.join(outdir, "mem")
    with open(src, "w") as f:
        f.write(MEM_C)
    r = subprocess.run(["gcc", "-O2", "-static", "-o", out, src], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"gcc -static failed (static libc missing?): {r.stderr.strip()[-300:]}")
    return out



class MemContainers(ContainerFactory):
    """Factory: containers(mib, tick_ms=None) runs ``mem MIB [TICK_MS]`` (neither: the busybox counter,
    which writes a count.log too), and waits until it has counted to 2."""

    def __init__(self, root: str, workdir: str, binary: Optional[str]):
        super().__init__(root, workdir)
        self.binary = binary

    def __call__(self, mib: int = 0, *, tick_ms: Optional[int] = None,  # type: ignore[override]
                 network_ns: Optional[str] = "") -> Container:
        from fastckpt import bundle as fb

        def make(path: str) -> None:
            if mib or tick_ms:
                assert self.binary, "no mem binary"
                fb.make_bundle(path, args=["/mem", str(mib)] + ([str(tick_ms)] if tick_ms else []),
                               network_ns=network_ns)
                shutil.copy2(self.binary, os.path.join(path, "rootfs", "mem"))
            else:
                fb.make_bundle(path, args=["sh", "-c", CONTAINER_COUNTER], network_ns=network_ns)

        ct = self.start(make, mib=mib)
        ct.counter.wait_reach(2)
        return ct
