"""A differential fuzzer of fastckpt's `tar` (ext/tar_shim.c), against GNU tar: no libFuzzer needed.

The shim parses archives as root (CRIU's restore of a tmpfs). Each case is an archive of the corpus
(tests/fuzz/corpus/*.tar: what GNU tar and the shim write for a container's tmpfs mounts, and some
hand-made forms), mutated where a parser goes wrong -- a header field (name, link name, mode,
owners, size, time, type, magic, device numbers, ustar prefix, user names), checksums kept right
most of the time so that the parser gets past them, bytes flipped, blocks cut, repeated or
dropped -- then gzipped and extracted twice with CRIU's exact command line: by the shim, built with
AddressSanitizer and UndefinedBehaviorSanitizer, and by GNU tar. A case fails when

- the sanitizers report anything, or the shim dies of a signal;
- one of them succeeds where the other fails, or both succeed with different trees (names, types,
  modes, owners, times, link targets, contents, device numbers);
- anything appears outside the directory extracted into.

What the shim hands to GNU tar (it does so for whatever it does not handle itself) goes through a
`tar` wrapper that counts it: the report says how many cases the shim's own parser took.

A quarter of the time goes to the parser alone (parse_fuzz.c: parse() called in one sanitized
process, each mutated archive in a buffer of its exact size: ~30000 cases a second here).

    python tests/fuzz/fuzz_tar_shim.py [SECONDS]   # standalone; tests/test_tar_fuzz.py runs it in `make test`
"""
from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if not __package__:  # a script: tests/ (the shim's tests describe a tree); pytest has it (pythonpath)
    sys.path.insert(0, os.path.dirname(HERE))

from test_tar_shim import tree as snapshot  # noqa: E402
ROOT = os.path.dirname(os.path.dirname(HERE))
SOURCE = os.path.join(ROOT, "ext", "tar_shim.c")
CORPUS = os.path.join(HERE, "corpus")
GNU_TAR = shutil.which("tar", path="/usr/bin:/bin")
EXTRACT = ["--extract", "--gzip", "--no-unquote", "--no-wildcards", "--directory"]
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "SUMMARY: ")

# header fields: (offset, width)
FIELDS = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
          "mtime": (136, 12), "type": (156, 1), "link": (157, 100), "magic": (257, 8), "uname": (265, 32),
          "gname": (297, 32), "major": (329, 8), "minor": (337, 8), "prefix": (345, 155)}
NAMES = [b"a", b"./a", b"a/", b"./", b".", b"..", b"../x", b"/abs", b"a//b", b"a/./b", b"a/../b", b"dir/x",
         b"x" * 99, b"x" * 100, b"sub/deeper/f", b"\xff\xfe", b"a\nb", b"-rf", b"pts", b"null", b"shm/f"]
LINKS = [b"", b"/etc/passwd", b"../../outside", b"..", b".", b"a", b"null", b"/", b"x" * 99, b"sub"]
TYPES = b"0123456789AgxLKSVMN\x00 "
OCTALS = [b"0", b"7", b"0000000", b"7777777", b"77777777777", b"00000001000", b"  123 ", b"8", b"-1",
          b"\x80\x00\x00\x00\x00\x00\x00\x01", b"\xff" * 8, b"", b" ", b"0000777\x00", b"1777", b"4755", b"6777"]


def build_sanitized(source: str, out: str) -> str:
    """SOURCE built with ASan and UBSan (errors fatal) into OUT."""
    cmd = [os.environ.get("CC", "cc"), "-O1", "-g", "-fno-omit-frame-pointer",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-o", out, source, "-lz"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cannot build {source} with the sanitizers ({' '.join(cmd)}): {r.stderr.strip()}")
    return out


def build_shim(out_dir: str) -> str:
    """tar_shim.c built with ASan and UBSan into OUT_DIR/tar (the name CRIU runs)."""
    return build_sanitized(SOURCE, os.path.join(out_dir, "tar"))


def corpus() -> list[bytes]:
    out = []
    for name in sorted(os.listdir(CORPUS)):
        if name.endswith(".tar"):
            with open(os.path.join(CORPUS, name), "rb") as f:
                out.append(f.read())
    if not out:
        raise RuntimeError(f"no corpus archives in {CORPUS}")
    return out


def headers(ar: bytes) -> list[int]:
    """Offsets of the header blocks (walking sizes as a reader would)."""
    out, off = [], 0
    while off + 512 <= len(ar):
        h = ar[off:off + 512]
        if not any(h):
            break
        out.append(off)
        try:
            size = int(h[124:136].split(b"\0")[0].strip() or b"0", 8)
        except ValueError:
            size = 0
        off += 512 + (size + 511) // 512 * 512
    return out


def fix_checksum(ar: bytearray, off: int) -> None:
    h = ar[off:off + 512]
    if len(h) < 512:
        return
    h[148:156] = b" " * 8
    ar[off + 148:off + 156] = b"%06o\0 " % (sum(h) & 0o777777)


def put(ar: bytearray, off: int, field: str, value: bytes) -> None:
    start, width = FIELDS[field]
    value = value[:width]
    ar[off + start:off + start + width] = value + b"\0" * (width - len(value))


def mutate(rng: random.Random, base: bytes) -> bytes:
    ar = bytearray(base)
    hdrs = headers(bytes(ar)) or [0]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.random()
        off = rng.choice(hdrs)
        if off + 512 > len(ar):
            break
        if kind < 0.55:  # one header field
            field = rng.choice(list(FIELDS))
            if field == "name" or field == "prefix":
                value = rng.choice(NAMES) if rng.random() < 0.8 else bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            elif field == "link":
                value = rng.choice(LINKS)
            elif field == "type":
                value = bytes([rng.choice(TYPES)])
            elif field == "magic":
                value = rng.choice([b"ustar  ", b"ustar\x0000", b"ustar", b"", b"GNUtar "])
            elif field in ("uname", "gname"):
                value = rng.choice([b"", b"root", b"nobody"])
            else:
                value = rng.choice(OCTALS) if rng.random() < 0.7 else b"%o" % rng.randrange(1 << rng.choice((3, 12, 21, 33, 36)))
            put(ar, off, field, value)
        elif kind < 0.75:  # bytes flipped in a header
            for _ in range(rng.randrange(1, 4)):
                ar[off + rng.randrange(512)] = rng.randrange(256)
        elif kind < 0.85:  # anywhere
            if ar:
                ar[rng.randrange(len(ar))] ^= 1 << rng.randrange(8)
        elif kind < 0.92:  # a header repeated after itself, or moved to the end
            blk = ar[off:off + 512]
            at = rng.choice([off, off + 512, headers(bytes(ar))[-1] if headers(bytes(ar)) else 0])
            ar[at:at] = blk
        else:  # cut short, or the end marker dropped
            ar = ar[:rng.randrange(len(ar) + 1)] if rng.random() < 0.5 else ar.rstrip(b"\0")
        if rng.random() < 0.85:
            fix_checksum(ar, off)
    return bytes(ar)


def _undate(tree: dict, since: int) -> dict:
    """TREE with the times that are the time of the extraction itself (directories made on the way,
    directories changed after their time was set) as "now": the two extractions run a moment apart."""
    return {k: v if v[3] < since else (*v[:3], "now", *v[4:]) for k, v in tree.items()}


def _rm(path: str) -> None:
    """Remove PATH whatever modes the archive gave (directories without x or w for the owner)."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)


class Fuzzer:
    def __init__(self, work: str, seed: int | None = None):
        self.work = work
        self.bin_dir = os.path.join(work, "shim")
        self.wrap_dir = os.path.join(work, "wrap")
        os.makedirs(self.bin_dir)
        os.makedirs(self.wrap_dir)
        self.shim = build_shim(self.bin_dir)
        # the `tar` the shim hands over to: GNU tar, counted
        self.handed = os.path.join(work, "handed-over")
        wrapper = os.path.join(self.wrap_dir, "tar")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\necho >> {self.handed}\nexec {GNU_TAR} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        self.env = dict(os.environ, PATH=f"{self.bin_dir}:{self.wrap_dir}:/usr/bin:/bin",
                        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=99",
                        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")
        self.env.pop("FASTCKPT_TAR_SHIM", None)
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        self.rng = random.Random(self.seed)
        self.cases = 0
        self.parser_cases = self.parser_parsed = 0
        self.failures: list[str] = []

    def handed_over(self) -> int:
        try:
            with open(self.handed) as f:
                return len(f.read().splitlines())
        except FileNotFoundError:
            return 0

    def run_case(self, archive: bytes) -> str | None:
        """None, or what went wrong (the archive is saved beside it)."""
        case = tempfile.mkdtemp(prefix="case-", dir=self.work)
        started = int(time.time()) - 1
        try:
            tgz = os.path.join(case, "in.tgz")
            with open(tgz, "wb") as f:
                f.write(gzip.compress(archive, compresslevel=1, mtime=0))
            results = {}
            for who, tool in (("shim", self.shim), ("gnu", GNU_TAR)):
                dest = os.path.join(case, who)
                os.mkdir(dest)
                with open(tgz, "rb") as f:
                    r = subprocess.run([tool, *EXTRACT, dest], stdin=f, capture_output=True, env=self.env,
                                       cwd=case, timeout=60)
                results[who] = r
            shim, gnu = results["shim"], results["gnu"]
            err = shim.stderr.decode("utf-8", "replace")
            problem = None
            if any(m in err for m in SANITIZER_MARKS) or shim.returncode < 0 or shim.returncode in (98, 99):
                problem = f"the sanitized shim failed (exit {shim.returncode}):\n{err[-3000:]}"
            elif (shim.returncode == 0) != (gnu.returncode == 0):
                problem = (f"shim exit {shim.returncode}, GNU tar exit {gnu.returncode}\nshim: {err[-800:]}\n"
                           f"gnu: {gnu.stderr.decode('utf-8', 'replace')[-800:]}")
            elif shim.returncode == 0:
                a, b = (_undate(snapshot(os.path.join(case, w)), started) for w in ("shim", "gnu"))
                if a != b:
                    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
                    problem = f"the trees differ (shim, gnu): {diff!r}"[:3000]
            extra = set(os.listdir(case)) - {"in.tgz", "shim", "gnu"}
            if not problem and extra:
                problem = f"written outside the directory extracted into: {sorted(extra)}"
            if problem:
                keep = os.path.join(self.work, f"failure-{len(self.failures)}.tar")
                with open(keep, "wb") as f:
                    f.write(archive)
                return f"{problem}\n(archive: {keep})"
            return None
        finally:
            _rm(case)

    def run_parser(self, seconds: int) -> None:
        """The parser alone, in one process (parse_fuzz.c): many more cases per second than whole
        extractions, each archive in a buffer of its exact size."""
        binary = build_sanitized(os.path.join(HERE, "parse_fuzz.c"), os.path.join(self.work, "parse_fuzz"))
        archives = [os.path.join(CORPUS, n) for n in sorted(os.listdir(CORPUS)) if n.endswith(".tar")]
        r = subprocess.run([binary, str(max(1, int(seconds))), str(self.seed), *archives], capture_output=True,
                           text=True, env=self.env, timeout=seconds + 120)
        if r.returncode != 0:
            self.failures.append(f"the sanitized parser failed (exit {r.returncode}, seed {self.seed}):\n"
                                 f"{r.stderr[-3000:]}")
            return
        cases, parsed = (int(x) for x in r.stdout.split())
        self.parser_cases, self.parser_parsed = cases, parsed

    def run(self, seconds: float, max_failures: int = 5) -> None:
        """A quarter of SECONDS on the parser alone, the rest on whole extractions against GNU tar."""
        self.run_parser(max(2, int(seconds / 4)))
        seeds = corpus()
        deadline = time.monotonic() + seconds - max(2, int(seconds / 4))
        for base in seeds:  # the corpus itself first: it must pass as it is
            self._record(self.run_case(base))
        while time.monotonic() < deadline and len(self.failures) < max_failures:
            self._record(self.run_case(mutate(self.rng, self.rng.choice(seeds))))

    def _record(self, problem: str | None) -> None:
        self.cases += 1
        if problem:
            self.failures.append(problem)

    def summary(self) -> str:
        handed = self.handed_over()
        return (f"parser alone: {self.parser_cases} cases, {self.parser_parsed} accepted; extractions: "
                f"{self.cases} cases (seed {self.seed}): {self.cases - handed} parsed and extracted by the "
                f"shim itself, {handed} handed to GNU tar; {len(self.failures)} failures")


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 25
    work = tempfile.mkdtemp(prefix="fastckpt-tar-fuzz-")
    fz = Fuzzer(work, int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None)
    fz.run(seconds)
    print(fz.summary())
    for f in fz.failures:
        print("---\n" + f)
    if not fz.failures:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if fz.failures else 0


if __name__ == "__main__":
    sys.exit(main())
