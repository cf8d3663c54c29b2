"""The public API as a user meets it: help(), docstrings, the errors of wrong input."""
from __future__ import annotations

import inspect
import os
import pydoc
import subprocess
import sys

import pytest

import fastckpt
import restore_support as rs


@pytest.mark.parametrize("cls, first, some", [
    (fastckpt.CheckpointOptions, "image_path", ["leave_running", "page_server", "network_lock"]),
    (fastckpt.RestoreOptions, "image_path", ["bundle", "detach", "pid_file", "no_pivot"]),
    (fastckpt.CheckpointResult, "image_path", ["pid", "container_id", "files"]),
    (fastckpt.RestoreResult, "pid", ["image_path", "exit_status"]),
])
def test_records_have_real_signatures(cls, first, some):
    """(Was: help() showed them as `(*args, **kwargs)`.)"""
    sig = inspect.signature(cls)
    params = list(sig.parameters)
    assert params == list(cls.fields()), params
    assert params[0] == first and all(p in params for p in some), params
    assert "*args" not in str(sig) and "**kwargs" not in str(sig)
    assert str(sig) in pydoc.render_doc(cls, renderer=pydoc.plaintext)
    # defaults are the records' own
    for name in cls.fields():
        p = sig.parameters[name]
        if p.default is not inspect.Parameter.empty and name != "files":
            assert cls._defaults[name] is p.default


def test_signature_defaults_and_factories():
    sig = inspect.signature(fastckpt.CheckpointOptions)
    assert sig.parameters["leave_running"].default is False
    assert sig.parameters["leave_running"].annotation == "bool"
    assert "files: 'dict[str, int]' = dict()" in str(inspect.signature(fastckpt.CheckpointResult))
    assert "pid: 'int', " in str(inspect.signature(fastckpt.RestoreResult))  # required: no default


def test_signature_costs_the_command_nothing():
    """inspect is imported only when a signature is asked for (the command's start-up stays lean)."""
    code = "import sys, fastckpt; fastckpt.CheckpointOptions(); print('inspect' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}  # make test's coverage imports it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("obj", [
    fastckpt.CheckpointResult, fastckpt.RestoreResult, fastckpt.Session, fastckpt.Session.checkpoint,
    fastckpt.Session.restore, fastckpt.CheckpointOptions, fastckpt.RestoreOptions, fastckpt.checkpoint,
    fastckpt.restore, fastckpt.ProcessNotFound,
], ids=lambda o: o.__qualname__)
def test_public_names_have_docstrings(obj):
    assert obj.__doc__ and len(obj.__doc__.strip()) > 20, obj


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.integration
def test_missing_pid_is_process_not_found(tmp_path):
    """(Was: the base fastckpt.Error.)"""
    pid = _dead_pid()
    with pytest.raises(fastckpt.ProcessNotFound) as e:
        fastckpt.checkpoint(pid=pid, image_path=str(tmp_path / "img"))
    assert isinstance(e.value, fastckpt.Error) and isinstance(e.value, LookupError)
    assert str(e.value) == f"no running process with pid {pid}"
    assert e.value.errno == 3  # ESRCH
    assert not os.path.exists(tmp_path / "img")
    r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(pid), "--image-path", str(tmp_path / "img")),
               str(tmp_path))
    rs.assert_error(r, 1, f"no running process with pid {pid}")


@pytest.mark.integration
def test_image_path_that_is_a_file(tmp_path):
    """(Was: "cannot create image directory ...: File exists".)"""
    f = tmp_path / "afile"
    f.write_text("x")
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        with pytest.raises(fastckpt.ImageDirError) as e:
            fastckpt.checkpoint(pid=sleeper.pid, image_path=str(f))
        assert str(e.value) == f"image directory {f} is not a directory"
        assert "File exists" not in str(e.value)
        r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(sleeper.pid), "--image-path", str(f)),
                   str(tmp_path))
        rs.assert_error(r, 1, f"image directory {f} is not a directory")
        r = rs.run(rs.fastckpt_cmd("checkpoint", "--pid", str(sleeper.pid), "--image-path", str(tmp_path / "i"),
                                   "--work-path", str(f)), str(tmp_path))
        rs.assert_error(r, 1, f"work directory {f} is not a directory")
        assert f.read_text() == "x" and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_package_metadata_names_the_contracts_it_follows():
    """The installed distribution carries its project URLs (runc's checkpoint and restore pages, CRIU,
    podman's archives) and its declared dependencies."""
    from importlib import metadata

    md = metadata.metadata("fastckpt")
    urls = dict(u.split(", ", 1) for u in md.get_all("Project-URL") or [])
    assert any("runc-checkpoint.8.md" in u for u in urls.values()), urls
    assert any("runc-restore.8.md" in u for u in urls.values()), urls
    assert "https://criu.org/" in urls.values(), urls
    assert {r.split(">")[0].split("=")[0].strip() for r in metadata.requires("fastckpt") or []} >= {
        "protobuf", "cffi", "xxhash", "zstandard"}
