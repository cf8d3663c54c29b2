"""fastckpt.atomicfile.write_atomic: the one write-a-temporary-file-and-rename of the package (the
kernel-probe cache, --pid-file, an imported bundle's config.json). A reader sees the old file or the
new one, whole; a failure leaves the old file and nothing else; the mode asked for is the mode got."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

from fastckpt.atomicfile import write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process's umask for the test; the old one is put back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def test_creates_then_replaces_with_the_mode_asked_for(tmp_path, umask):
    path = tmp_path / "f"
    umask(0)
    write_atomic(str(path), b"one")
    assert path.read_bytes() == b"one" and _mode(path) == 0o600
    path.chmod(0o644)
    write_atomic(str(path), b"two", 0o640)
    assert path.read_bytes() == b"two" and _mode(path) == 0o640  # the new file's mode, not the old one's
    assert os.listdir(tmp_path) == ["f"]


def test_mode_0666_is_what_open_gives_under_the_umask(tmp_path, umask):
    umask(0o027)
    with open(tmp_path / "by-open", "w") as f:
        f.write("1")
    write_atomic(str(tmp_path / "by-helper"), b"1", 0o666)
    assert _mode(tmp_path / "by-helper") == _mode(tmp_path / "by-open") == 0o640


def test_a_stale_temporary_file_gives_neither_its_mode_nor_its_contents(tmp_path, umask):
    umask(0)
    path = tmp_path / "f"
    stale = tmp_path / f".f.{os.getpid()}.tmp"  # a writer of this pid that died before its rename
    stale.write_bytes(b"stale contents, longer than the new ones")
    stale.chmod(0o777)
    write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_links_are_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    (tmp_path / "f").symlink_to(victim)
    (tmp_path / f".g.{os.getpid()}.tmp").symlink_to(victim)  # planted where the temporary file goes
    write_atomic(str(tmp_path / "f"), b"f")
    write_atomic(str(tmp_path / "g"), b"g")
    assert victim.read_bytes() == b"victim"
    assert not (tmp_path / "f").is_symlink() and (tmp_path / "f").read_bytes() == b"f"
    assert (tmp_path / "g").read_bytes() == b"g"
    assert sorted(os.listdir(tmp_path)) == ["f", "g", "victim"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    """The write fails half-way (the file-size limit: EFBIG after 64 KiB of 1 MiB), in a process of its
    own so that the limit binds nothing else."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    code = ("import errno, resource, signal, sys\n"
            "from fastckpt.atomicfile import write_atomic\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "try:\n"
            "    write_atomic(sys.argv[1], b'x' * (1 << 20))\n"
            "except OSError as e:\n"
            "    sys.exit(0 if e.errno == errno.EFBIG else f'errno {e.errno}')\n"
            "sys.exit('the write did not fail')\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_a_missing_directory_is_an_oserror_and_makes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(str(tmp_path / "no-such-dir" / "f"), b"new")
    assert os.listdir(tmp_path) == []


def test_readers_see_the_old_file_or_the_new_one_never_a_part(tmp_path):
    """A reader that reads the file in a loop while it is replaced, 200 times, by 1 MiB of another byte:
    every read is one whole version (a write in place would show a short file or a mix)."""
    path = tmp_path / "f"
    versions = [bytes([c]) * (1 << 20) for c in b"ab"]
    write_atomic(str(path), versions[0])
    seen, bad, done = set(), [], threading.Event()

    def reader():
        while not done.is_set():
            with open(path, "rb") as f:
                data = f.read()
            if data in versions:
                seen.add(data[:1])
            else:
                bad.append((len(data), data[:1], data[-1:]))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            write_atomic(str(path), versions[i % 2])
    finally:
        done.set()
        t.join()
    assert not bad, bad[:5]
    assert seen, "the reader read nothing"
