"""The tar shim (ext/tar_shim.c) fuzzed against GNU tar for a bounded time (tests/fuzz/fuzz_tar_shim.py).

FASTCKPT_FUZZ_SECONDS sets the time (default 25 s); FUZZ_SEED repeats a run.
"""
from __future__ import annotations

import os

import pytest

from fuzz import fuzz_tar_shim as fz  # tests/fuzz, a namespace package below pythonpath's tests/

pytestmark = pytest.mark.integration  # root: the archives hold device nodes and owners


def test_corpus_is_in_the_repository():
    archives = fz.corpus()
    assert len(archives) >= 5
    assert all(len(a) % 512 == 0 and fz.headers(a) for a in archives)


def test_mutations_keep_checksums_right_mostly():
    """A fuzzer whose archives all fail their checksum would only test the checksum test."""
    import random

    rng = random.Random(1)
    base = fz.corpus()[0]
    ok = 0
    for _ in range(200):
        ar = fz.mutate(rng, base)
        hdrs = fz.headers(ar)
        if hdrs and all(_checksum_ok(ar[o:o + 512]) for o in hdrs if o + 512 <= len(ar)):
            ok += 1
    assert ok > 100, ok


def _checksum_ok(h: bytes) -> bool:
    try:
        want = int(h[148:156].split(b"\0")[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return want == sum(h[:148]) + 8 * 32 + sum(h[156:])


def test_fuzz_the_shim_against_gnu_tar(tmp_path):
    seconds = float(os.environ.get("FASTCKPT_FUZZ_SECONDS", "25"))
    seed = int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None
    fuzzer = fz.Fuzzer(str(tmp_path), seed)  # gcc with ASan/UBSan comes with make deps (CRIU's build needs gcc)
    fuzzer.run(seconds)
    print(fuzzer.summary())
    assert not fuzzer.failures, fuzzer.summary() + "\n---\n" + "\n---\n".join(fuzzer.failures)
    assert fuzzer.cases >= len(fz.corpus())
    assert fuzzer.parser_cases > 1000 and fuzzer.parser_parsed > 0, fuzzer.summary()
    # the shim's own parser must have had a good share of the cases, not GNU tar only
    assert fuzzer.cases - fuzzer.handed_over() >= fuzzer.cases // 10, fuzzer.summary()
