"""fastckpt's `tar` for CRIU (ext/tar_shim.c) against GNU tar, with CRIU's exact command lines.

What it archives must extract, with GNU tar, to what GNU tar's own archive
gives, and the other way round; whatever it does not handle itself goes to
GNU tar, with the same result.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time

import pytest

from fastckpt import criu_proc

SHIM = os.path.join(criu_proc.LIBEXEC, "tar")
GNU_TAR = shutil.which("tar", path="/usr/bin:/bin")

# CRIU 4.2's command lines (criu/filesystems.c: tmpfs_dump, tmpfs_restore)
CREATE = ["--create", "--gzip", "--no-unquote", "--no-wildcards", "--one-file-system", "--check-links",
          "--preserve-permissions", "--sparse", "--numeric-owner", "--directory"]
EXTRACT = ["--extract", "--gzip", "--no-unquote", "--no-wildcards", "--directory"]


def shim_env(**extra) -> dict:
    env = dict(os.environ, PATH=criu_proc.LIBEXEC + os.pathsep + os.environ.get("PATH", os.defpath))
    env.update(extra)
    return env


def create(tool: str, src: str, **env) -> bytes:
    r = subprocess.run([tool, *CREATE, src, "."], capture_output=True, env=shim_env(**env))
    assert r.returncode == 0, r.stderr
    return r.stdout


def extract(tool: str, archive: bytes, dest: str, *, pipe: bool = False) -> subprocess.CompletedProcess:
    os.makedirs(dest, exist_ok=True)
    if pipe:  # input that cannot be rewound
        return subprocess.run([tool, *EXTRACT, dest], input=archive, capture_output=True, env=shim_env())
    path = dest + ".tgz"
    with open(path, "wb") as f:
        f.write(archive)
    with open(path, "rb") as f:
        return subprocess.run([tool, *EXTRACT, dest], stdin=f, capture_output=True, env=shim_env())


def tree(root: str) -> dict:
    """Every entry under ROOT (and ROOT itself): type and mode, owner, mtime, device, target or content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = describe(path)
    out["."] = describe(root)
    return out


def describe(path: str) -> tuple:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        what = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            what = (f.read(), st.st_nlink)
    else:
        what = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else None
    return oct(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime), what


def populate(src: str) -> None:
    """What a container's tmpfs mounts hold, and some more: owners, odd modes, times."""
    os.makedirs(os.path.join(src, "pts"))
    os.makedirs(os.path.join(src, "sub", "deeper"))
    os.mknod(os.path.join(src, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(os.path.join(src, "loop0"), 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(os.path.join(src, "sub", "fifo"), 0o640)
    os.symlink("/proc/self/fd", os.path.join(src, "fd"))
    os.symlink("pts/ptmx", os.path.join(src, "ptmx"))
    with open(os.path.join(src, "sub", "file"), "w") as f:
        f.write("hello\n" * 300)
    open(os.path.join(src, "empty"), "w").close()
    os.chmod(os.path.join(src, "sub", "file"), 0o4750)
    os.chmod(os.path.join(src, "sub", "deeper"), 0o1777)
    os.chmod(os.path.join(src, "null"), 0o666)  # mknod applied our umask
    os.chmod(os.path.join(src, "loop0"), 0o660)
    os.chown(os.path.join(src, "sub"), 1234, 5678)
    os.chown(os.path.join(src, "sub", "file"), 1234, 5678)
    os.lchown(os.path.join(src, "fd"), 42, 43)
    for rel, t in (("sub/file", 1_600_000_000), ("fd", 1_500_000_000), ("null", 1_400_000_000),
                   ("sub/deeper", 1_300_000_000), ("sub", 1_650_000_000), (".", 1_700_000_000)):
        os.utime(os.path.join(src, rel), (t, t), follow_symlinks=False)
    os.chmod(src, 0o755)


@pytest.fixture
def src(tmp_path):
    path = str(tmp_path / "src")
    os.mkdir(path)
    populate(path)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    return path


def test_the_shim_is_built_and_given_to_criu(monkeypatch):
    assert os.access(SHIM, os.X_OK), f"{SHIM} missing: `make deps` builds it"
    monkeypatch.delenv("FASTCKPT_TAR_SHIM", raising=False)
    assert criu_proc.criu_env()["PATH"].split(os.pathsep)[0] == criu_proc.LIBEXEC
    monkeypatch.setenv("FASTCKPT_TAR_SHIM", "0")
    assert criu_proc.LIBEXEC not in criu_proc.criu_env()["PATH"].split(os.pathsep)


@pytest.mark.parametrize("creator,extractor", [("shim", "gnu"), ("gnu", "shim"), ("shim", "shim")])
def test_round_trip_as_gnu_tar(src, tmp_path, creator, extractor):
    tools = {"shim": SHIM, "gnu": GNU_TAR}
    want = tree(src)
    archive = create(tools[creator], src)
    dest = str(tmp_path / "dest")
    r = extract(tools[extractor], archive, dest)
    assert r.returncode == 0, r.stderr
    assert tree(dest) == want


def test_an_empty_directory(tmp_path):
    """The masked /proc/acpi and /sys/firmware of every runc container: empty, read-only."""
    src = str(tmp_path / "src")
    os.mkdir(src, 0o555)
    os.utime(src, (1_234_567_890, 1_234_567_890))
    want = tree(src)
    for creator, extractor in ((SHIM, GNU_TAR), (GNU_TAR, SHIM)):
        dest = str(tmp_path / f"dest-{os.path.basename(creator)}-{creator == SHIM}")
        r = extract(extractor, create(creator, src), dest)
        assert r.returncode == 0, r.stderr
        assert tree(dest) == want


def _unusual(src: str, kind: str) -> None:
    if kind == "long name":
        name = "n" * 120
        with open(os.path.join(src, name), "w") as f:
            f.write("x")
    elif kind == "hard link":
        os.link(os.path.join(src, "sub", "file"), os.path.join(src, "hardlink"))
    elif kind == "sparse file":
        with open(os.path.join(src, "sparse"), "wb") as f:
            f.seek(8 << 20)
            f.write(b"end")
    elif kind == "big file":
        with open(os.path.join(src, "big"), "wb") as f:
            f.write(os.urandom(3 << 20))
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(src, "sock"))
        s.close()
    elif kind == "long link":
        os.symlink("t" * 150, os.path.join(src, "longlink"))


@pytest.mark.parametrize("kind", ["long name", "hard link", "sparse file", "big file", "socket", "long link"])
def test_what_it_does_not_handle_is_gnu_tars(src, tmp_path, kind):
    _unusual(src, kind)
    shim_archive, gnu_archive = create(SHIM, src), create(GNU_TAR, src)
    by_gnu = str(tmp_path / "by-gnu")
    assert extract(GNU_TAR, gnu_archive, by_gnu).returncode == 0
    for name, archive, extractor, pipe in (("a", shim_archive, GNU_TAR, False),
                                           ("b", gnu_archive, SHIM, False),
                                           ("c", gnu_archive, SHIM, True)):
        dest = str(tmp_path / name)
        r = extract(extractor, archive, dest, pipe=pipe)
        assert r.returncode == 0, (name, r.stderr)
        assert tree(dest) == tree(by_gnu), name
    if kind == "hard link":
        assert os.stat(os.path.join(str(tmp_path / "b"), "hardlink")).st_nlink == 2
    if kind == "sparse file":  # GNU tar's sparse form, holes kept
        st = os.stat(os.path.join(str(tmp_path / "b"), "sparse"))
        assert st.st_blocks * 512 < st.st_size


@pytest.mark.parametrize("fmt", [["--format=pax"], ["--format=ustar"], []])
def test_archives_of_other_forms_extract_as_gnu_tar_does(src, tmp_path, fmt):
    """Named owners (no --numeric-owner), pax headers, POSIX ustar: as GNU tar extracts them."""
    r = subprocess.run([GNU_TAR, "--create", "--gzip", *fmt, "--directory", src, "."], capture_output=True)
    assert r.returncode == 0, r.stderr
    by_gnu, by_shim = str(tmp_path / "by-gnu"), str(tmp_path / "by-shim")
    assert extract(GNU_TAR, r.stdout, by_gnu).returncode == 0
    rs = extract(SHIM, r.stdout, by_shim)
    assert rs.returncode == 0, rs.stderr
    assert tree(by_shim) == tree(by_gnu)


def test_a_damaged_archive_fails_as_with_gnu_tar(src, tmp_path):
    archive = create(SHIM, src)
    cut = archive[: len(archive) // 2]
    g = extract(GNU_TAR, cut, str(tmp_path / "g"))
    s = extract(SHIM, cut, str(tmp_path / "s"))
    assert g.returncode != 0 and s.returncode == g.returncode, (g.stderr, s.stderr)


def test_other_command_lines_are_gnu_tars(src, tmp_path):
    r = subprocess.run([SHIM, "--version"], capture_output=True, text=True, env=shim_env())
    assert r.returncode == 0 and "GNU tar" in r.stdout, r
    # switched off: CRIU's own command line goes to GNU tar too (the archive lists the same)
    listing = [GNU_TAR, "--list", "--gzip", "--numeric-owner", "--verbose"]
    for env in ({}, {"FASTCKPT_TAR_SHIM": "0"}):
        archive = create(SHIM, src, **env)
        r = subprocess.run(listing, input=archive, capture_output=True)
        assert r.returncode == 0, r.stderr
        names = sorted(line.split()[-1] if " -> " not in line else line.split(" -> ")[0].split()[-1]
                       for line in r.stdout.decode().splitlines())
        assert "./sub/file" in names and "./null" in names and "./fd" in names, names


def _archive(entries) -> bytes:
    """A gzip'd GNU tar archive of ENTRIES: (name, type, link); all root's, 0755, time 1e9."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, link in entries:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname, ti.mode, ti.mtime = kind, link, 0o755, 1_000_000_000
            data = b"owned\n" if kind == tarfile.REGTYPE else b""
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_an_archive_cannot_write_outside_through_its_links(tmp_path):
    """A damaged or hostile image must not reach outside the mount it restores, as with GNU tar."""
    import tarfile

    outside = tmp_path / "outside"
    outside.mkdir()
    for entries in (
        # a link, then a file "in" it
        [("./", tarfile.DIRTYPE, ""), ("./a", tarfile.SYMTYPE, str(outside)), ("./a/evil", tarfile.REGTYPE, "")],
        # a directory, replaced by a link, then a file in it
        [("./", tarfile.DIRTYPE, ""), ("./a/", tarfile.DIRTYPE, ""), ("./a", tarfile.SYMTYPE, str(outside)),
         ("./a/evil", tarfile.REGTYPE, "")],
        # a path that climbs out
        [("./", tarfile.DIRTYPE, ""), ("./../evil", tarfile.REGTYPE, "")],
    ):
        archive = _archive(entries)
        results = []
        for tool in (GNU_TAR, SHIM):
            dest = str(tmp_path / f"dest-{len(results)}")
            r = extract(tool, archive, dest)
            results.append((r.returncode, tree(dest)))
            assert not os.listdir(outside), (tool, entries, r.stderr)
            assert not os.path.exists(tmp_path / "evil"), (tool, entries)
            shutil.rmtree(dest)
        assert results[0] == results[1], entries  # the shim handed these to GNU tar


def test_links_already_in_the_directory_are_not_followed(tmp_path):
    """What the archive did not make is not trusted either: no path is resolved through a link."""
    import tarfile

    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside), dest / "a")
    archive = _archive([("./", tarfile.DIRTYPE, ""), ("./a/", tarfile.DIRTYPE, ""),
                        ("./a/evil", tarfile.REGTYPE, "")])
    r = extract(SHIM, archive, str(dest))
    assert not os.listdir(outside), r.stderr
    assert r.returncode != 0 or os.path.isdir(dest / "a") and not os.path.islink(dest / "a")


def test_dot_components_and_a_dir_mode_cannot_reach_a_link_target(tmp_path):
    """`./d/` then `././d` as a link to a file outside: the directory's mode must not land on that file."""
    import tarfile

    victim = tmp_path / "victim"
    victim.write_text("")
    victim.chmod(0o600)
    entries = [("./", tarfile.DIRTYPE, ""), ("./d/", tarfile.DIRTYPE, ""), ("././d", tarfile.SYMTYPE, str(victim))]
    archive = _archive(entries)
    results = []
    for tool in (GNU_TAR, SHIM):
        dest = str(tmp_path / f"dest-{len(results)}")
        r = extract(tool, archive, dest)
        assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600, (tool, r.stderr)
        results.append((r.returncode, tree(dest)))
    assert results[0] == results[1]


def test_a_non_directory_named_with_a_slash_is_gnu_tars(tmp_path):
    import tarfile

    archive = _archive([("./", tarfile.DIRTYPE, ""), ("./x/", tarfile.REGTYPE, "")])
    got = []
    for tool in (GNU_TAR, SHIM):
        dest = str(tmp_path / f"dest-{len(got)}")
        r = extract(tool, archive, dest)
        got.append((r.returncode, tree(dest)))
    assert got[0] == got[1]


def test_a_hard_linked_symlink_is_gnu_tars(src, tmp_path):
    os.link(os.path.join(src, "fd"), os.path.join(src, "fd2"), follow_symlinks=False)
    by_gnu, by_shim = str(tmp_path / "g"), str(tmp_path / "s")
    assert extract(GNU_TAR, create(GNU_TAR, src), by_gnu).returncode == 0
    assert extract(GNU_TAR, create(SHIM, src), by_shim).returncode == 0
    assert os.lstat(os.path.join(by_shim, "fd2")).st_ino == os.lstat(os.path.join(by_shim, "fd")).st_ino
    assert tree(by_shim) == tree(by_gnu)


def test_junk_through_a_pipe_fails_as_gnu_tar_does(tmp_path):
    junk = os.urandom(9 << 20)  # more than the shim reads before it hands over: fed through a pipe
    g = extract(GNU_TAR, junk, str(tmp_path / "g"), pipe=True)
    s = extract(SHIM, junk, str(tmp_path / "s"), pipe=True)
    assert g.returncode == s.returncode == 2, (g.returncode, s.returncode, s.stderr)


RACER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
/* racer DIR N TARGET SECONDS: a symbolic link to TARGET in place of each FIFO DIR/fI (I < N), again and again */
int main(int argc, char **argv) {
	int n = atoi(argv[2]), d = open(argv[1], O_RDONLY | O_DIRECTORY);
	time_t end = time(NULL) + atoi(argv[4]);
	char p[64];
	while (time(NULL) < end)
		for (int i = 0; i < n; i++) {
			struct stat st;
			snprintf(p, sizeof p, "f%d", i);
			if (!fstatat(d, p, &st, AT_SYMLINK_NOFOLLOW) && S_ISFIFO(st.st_mode) && !unlinkat(d, p, 0))
				symlinkat(argv[3], d, p);
		}
	return 0;
}
"""


def test_a_node_swapped_for_a_link_does_not_pass_its_mode_on(tmp_path):
    """Between making a node and setting its mode, something in the directory (the restored
    container) may put a symbolic link in its place: the mode must not go to the link's target
    (fchmodat without AT_SYMLINK_NOFOLLOW did so, in most rounds of this test)."""
    import io
    import tarfile

    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler for the racer (make deps installs gcc: CRIU's build needs it)"
    racer = str(tmp_path / "racer")
    (tmp_path / "racer.c").write_text(RACER_C)
    subprocess.run([cc, "-O2", "-o", racer, str(tmp_path / "racer.c")], check=True)
    n = 3000
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        for name, kind in [("./", tarfile.DIRTYPE)] + [(f"./f{i}", tarfile.FIFOTYPE) for i in range(n)]:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.uname, ti.gname = kind, 0o777 if kind == tarfile.FIFOTYPE else 0o755, "", ""
            tf.addfile(ti)
    archive = buf.getvalue()
    sentinel = tmp_path / "sentinel"
    for round_ in range(4):
        sentinel.write_text("")
        os.chmod(sentinel, 0o600)
        dest = str(tmp_path / f"dest{round_}")
        os.mkdir(dest)
        race = subprocess.Popen([racer, dest, str(n), str(sentinel), "2"])
        try:
            extract(SHIM, archive, dest)  # it may fail where it finds a link: it must not follow it
        finally:
            race.kill()
            race.wait()
        assert stat.S_IMODE(os.stat(sentinel).st_mode) == 0o600, f"round {round_}: the link's target got the mode"


def test_entries_out_of_tree_order_as_gnu_tar(tmp_path):
    """GNU tar sets a directory's owner, mode and time once an entry outside it comes; an entry put
    in it later changes its time again. The fuzzer found the shim setting them only at the end."""
    import tarfile

    entries = [("./", tarfile.DIRTYPE, ""), ("./a/", tarfile.DIRTYPE, ""), ("./b", tarfile.REGTYPE, ""),
               ("./a/c", tarfile.REGTYPE, ""), ("./a/l", tarfile.SYMTYPE, "c")]
    def undated(root: str, since: int) -> dict:  # "now" for the times of the extraction itself
        return {k: v if v[3] < since else (*v[:3], "now", *v[4:]) for k, v in tree(root).items()}

    for order in (entries, [entries[0], entries[2], entries[1], entries[3], entries[4]]):
        archive = _archive(order)
        by_gnu, by_shim = str(tmp_path / "by-gnu"), str(tmp_path / "by-shim")
        since = int(time.time()) - 1
        assert extract(GNU_TAR, archive, by_gnu).returncode == 0
        r = extract(SHIM, archive, by_shim)
        assert r.returncode == 0, r.stderr
        assert undated(by_shim, since) == undated(by_gnu, since)
        shutil.rmtree(by_gnu)
        shutil.rmtree(by_shim)
