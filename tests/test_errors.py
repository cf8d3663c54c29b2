"""Unit tests of fastckpt.errors: the hierarchy, CriuError's message, pickling, CRIU log parsing."""
from __future__ import annotations

import errno
import pickle

import pytest

from fastckpt import errors
from fastckpt.errors import (ContainerNotFound, ContainerStateError, CriuError, Error, ImageDirError, UsageError,
                             log_errors)

# What CRIU 4.2 writes when the page server cannot be reached (trimmed): the
# root cause is a plain line, the first Error line is the harmless RLIMIT one.
SAMPLE_LOG = """\
(00.000000) Version: 4.2.1 (gitid 0)
(00.000012) Running on fastckpt Linux 6.18.0 #1 SMP x86_64
(00.025396) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.025400) cg: Set 1 is criu one
(00.025832) Connecting to server 127.0.0.1:41234
(00.025883) Can't connect to server 127.0.0.1:41234
(00.025893) net: Unlock network
(00.025898) Unfreezing tasks into 1
(00.025902) Error (compel/src/lib/infect.c:417): Unable to detach from 21811: No such process
(00.025909) Error (criu/cr-dump.c:1975): Dumping FAILED.
"""


def write(tmp_path, text, name="dump.log"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_log_errors_sample(tmp_path):
    lines = log_errors(write(tmp_path, SAMPLE_LOG))
    assert lines == [
        "Can't connect to server 127.0.0.1:41234",
        "Unable to detach from 21811: No such process",
        "Dumping FAILED.",
    ]
    assert not any("RLIMIT" in l for l in lines)


def test_log_errors_only_harmless(tmp_path):
    text = "(00.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n"
    assert log_errors(write(tmp_path, text)) == []


def test_log_errors_plain_error_lines(tmp_path):
    text = ("(00.1) Dumping processes\n"
            "(00.2) Error (criu/sk-inet.c:197): inet: Connected TCP socket, consider using --tcp-established option.\n"
            "(00.3) Error (criu/cr-dump.c:1975): Dumping FAILED.\n")
    assert log_errors(write(tmp_path, text)) == [
        "inet: Connected TCP socket, consider using --tcp-established option.", "Dumping FAILED."]


def test_log_errors_only_cant_lines_before_the_first_error(tmp_path):
    text = ("(00.1) Can't do something early\n"
            "(00.2) ordinary line\n"
            "(00.3) Error (a.c:1): first\n"
            "(00.4) Can't do something later\n"
            "(00.5) Error (a.c:2): second\n")
    assert log_errors(write(tmp_path, text)) == ["Can't do something early", "first", "second"]


def test_log_errors_task_prefixed_lines(tmp_path):
    # restore-side and parasite lines carry the task's pid after the time stamp
    text = ("(00.060000)      1: Can't open the mount point\n"
            "(00.064840)      1: Error (criu/mount-v2.c:634): mnt-v2: Can't stat /x: No such file or directory\n"
            "(00.070000) Error (criu/cr-restore.c:2397): Restoring FAILED.\n")
    assert log_errors(write(tmp_path, text)) == [
        "Can't open the mount point", "mnt-v2: Can't stat /x: No such file or directory", "Restoring FAILED."]


def test_log_errors_limit_and_missing(tmp_path):
    text = "".join(f"(00.{i}) Error (a.c:{i}): e{i}\n" for i in range(50))
    assert log_errors(write(tmp_path, text), limit=3) == ["e0", "e1", "e2"]
    assert len(log_errors(write(tmp_path, text))) == 20
    assert log_errors(str(tmp_path / "nope.log")) == []
    assert log_errors(None) == []
    assert log_errors("") == []


# --- CriuError -------------------------------------------------------------------------

def test_criu_error_message_uses_first_log_error():
    e = CriuError("dump", -52, errno.EBADE, "/img/dump.log", ["Can't connect to server h:1", "Dumping FAILED."])
    assert str(e) == "criu dump failed: Can't connect to server h:1 (log: /img/dump.log)"
    assert e.errno == errno.EBADE
    assert (e.op, e.ret, e.log_path) == ("dump", -52, "/img/dump.log")
    assert e.details.splitlines() == [str(e), "  Can't connect to server h:1", "  Dumping FAILED."]
    assert isinstance(e, Error) and isinstance(e, OSError)


@pytest.mark.parametrize("ret, text", [
    (-errno.ECONNREFUSED, "could not start or connect to criu"),
    (-errno.ECOMM, "the connection to criu broke"),
    (-errno.EINVAL, "does not understand the request"),
    (-errno.EBADMSG, "does not understand the request"),
])
def test_criu_error_without_log(ret, text):
    e = CriuError("dump", ret, 0)
    assert text in str(e)
    assert "log:" not in str(e)
    assert e.errno == errno.EIO  # no errno from libcriu: EIO, never 0


def test_criu_error_strerror_and_detail():
    assert "Permission denied" in str(CriuError("check", -1, errno.EACCES))
    e = CriuError("dump", -1, 0, "/l", [], detail="CRIU 3.19 is too old")
    assert str(e) == "criu dump failed: CRIU 3.19 is too old (log: /l)"


def roundtrip(e):
    return pickle.loads(pickle.dumps(e))


def test_criu_error_pickles():
    e = CriuError("dump", -52, errno.EBADE, "/img/dump.log", ["Can't connect to server h:1", "Dumping FAILED."])
    e2 = roundtrip(e)
    assert type(e2) is CriuError
    assert (e2.op, e2.ret, e2.errno, e2.log_path, e2.log_errors) == (
        "dump", -52, errno.EBADE, "/img/dump.log", ["Can't connect to server h:1", "Dumping FAILED."])
    assert str(e2) == str(e) and e2.details == e.details


@pytest.mark.parametrize("cls, code", [
    (Error, errno.EIO), (UsageError, errno.EINVAL), (ContainerNotFound, errno.ENOENT),
    (ContainerStateError, errno.EBUSY), (ImageDirError, errno.EIO),
])
def test_errors_pickle_and_default_errno(cls, code):
    e = cls("something went wrong")
    assert e.errno == code and str(e) == "something went wrong"
    e2 = roundtrip(e)
    assert type(e2) is cls and e2.errno == code and str(e2) == "something went wrong"
    e3 = roundtrip(cls("x", errno=errno.ENOTDIR))
    assert e3.errno == errno.ENOTDIR


def test_hierarchy():
    assert issubclass(UsageError, ValueError)
    assert issubclass(ContainerNotFound, LookupError)
    for name in ("UsageError", "ContainerNotFound", "ContainerStateError", "ImageDirError", "CriuError",
                 "CriuNotFound", "CriuVersionError", "FeatureUnavailable"):
        assert issubclass(getattr(errors, name), errors.Error)
    assert issubclass(errors.Error, OSError)


def test_a_too_old_criu_is_named_by_its_own_error(monkeypatch, tmp_path):
    """CRIU failed without a word in its log, and it is older than 4.1: CriuVersionError, a CriuError."""
    from fastckpt import criu, criu_failures
    from fastckpt.errors import CriuVersionError

    monkeypatch.setattr(criu, "criu_version", lambda: (3, 17, 1))
    log = tmp_path / "dump.log"
    log.write_text("")
    with pytest.raises(CriuVersionError) as ei:
        criu_failures.raise_criu_failure("dump", -1, 0, str(log))
    e = ei.value
    assert isinstance(e, CriuError)
    assert str(e) == f"criu dump failed: CRIU 3.17.1 is too old (need >= 4.1) (log: {log})"
    assert type(roundtrip(e)) is CriuVersionError and str(roundtrip(e)) == str(e)
    # a recent one: the plain error
    monkeypatch.setattr(criu, "criu_version", lambda: (4, 2, 1))
    with pytest.raises(CriuError) as ei:
        criu_failures.raise_criu_failure("dump", -1, 0, str(log))
    assert type(ei.value) is CriuError
