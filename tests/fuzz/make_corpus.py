"""Write tests/fuzz/corpus/*.tar, the fuzzer's starting archives (uncompressed): what GNU tar and
fastckpt's shim write, with CRIU's command line, for what a container's tmpfs mounts hold, GNU tar's
other formats, and a few hand-made entries (links, nodes, a deep tree). Run as root; the files are
kept in the repository, so this only runs again when the corpus should change.
"""
from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if not __package__:  # a script: tests/ (the shim's tests describe a tree); pytest has it (pythonpath)
    sys.path.insert(0, os.path.dirname(HERE))
CREATE = ["--create", "--gzip", "--no-unquote", "--no-wildcards", "--one-file-system", "--check-links",
          "--preserve-permissions", "--sparse", "--numeric-owner", "--directory"]


def populate(src: str) -> None:
    from test_tar_shim import populate as container_like  # the same tree the shim's tests use

    container_like(src)


def main() -> None:
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    shim = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src", "fastckpt", "libexec", "tar")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.mkdir(src)
        populate(src)
        for name, cmd in (("gnu-criu", ["/bin/tar", *CREATE, src, "."]),
                          ("shim-criu", [shim, *CREATE, src, "."]),
                          ("gnu-ustar", ["/bin/tar", "--create", "--gzip", "--format=ustar", "--directory", src, "."]),
                          ("gnu-names", ["/bin/tar", "--create", "--gzip", "--directory", src, "."])):
            r = subprocess.run(cmd, capture_output=True, check=True)
            with open(os.path.join(out, name + ".tar"), "wb") as f:
                f.write(gzip.decompress(r.stdout))
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty, 0o1777)
        r = subprocess.run([shim, *CREATE, empty, "."], capture_output=True, check=True)
        with open(os.path.join(out, "shim-empty.tar"), "wb") as f:
            f.write(gzip.decompress(r.stdout))
    # hand-made: every type the shim handles, a deep tree, links pointing out
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        entries = [("./", tarfile.DIRTYPE, ""), ("./a/", tarfile.DIRTYPE, ""), ("./a/b/", tarfile.DIRTYPE, ""),
                   ("./a/b/c", tarfile.REGTYPE, ""), ("./a/up", tarfile.SYMTYPE, "../../outside"),
                   ("./a/abs", tarfile.SYMTYPE, "/etc/passwd"), ("./a/fifo", tarfile.FIFOTYPE, ""),
                   ("./a/tty", tarfile.CHRTYPE, ""), ("./a/blk", tarfile.BLKTYPE, "")]
        for name, kind, link in entries:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname, ti.mtime, ti.uid, ti.gid = kind, link, 1_000_000_000, 0, 0
            ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o640
            ti.uname = ti.gname = ""
            if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                ti.devmajor, ti.devminor = 5, 0
            data = b"content\n" * 70 if kind == tarfile.REGTYPE else b""
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with open(os.path.join(out, "hand-made.tar"), "wb") as f:
        f.write(buf.getvalue())
    print("\n".join(sorted(os.listdir(out))))


if __name__ == "__main__":
    main()
