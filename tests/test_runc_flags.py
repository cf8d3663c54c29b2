"""runc 1.1.5's remaining flags: global --debug, --log, --log-format, --criu; checkpoint --parent-path,
--pre-dump, --lazy-pages, --status-fd, --auto-dedup; restore --lazy-pages, --auto-dedup, --lsm-profile,
--lsm-mount-context. Bad values: one line, exit 2, the container running and thawed, nothing made.
A missing kernel feature: one line naming it, before anything is frozen.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

import restore_support as rs
from fastckpt import criu, externals, migration
from fastckpt.errors import UsageError
from fastckpt.options import CheckpointOptions, RestoreOptions



# --- without root -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    ({"parent_path": "/abs/parent"}, "--parent-path must be relative"),
    ({"lazy_pages": True, "status_fd": "x"}, "invalid --status-fd argument 'x'"),
    ({"lazy_pages": True, "status_fd": -5}, "invalid --status-fd argument"),
    ({"lazy_pages": True, "pre_dump": True}, "cannot be used together"),
])
def test_checkpoint_options_refused(kwargs, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace("'", "'")):
        CheckpointOptions(**kwargs)


def test_checkpoint_options_accepted():
    o = CheckpointOptions(parent_path="../parent", lazy_pages=True, status_fd="7", auto_dedup=True,
                          image_path="/x/img")
    assert o.status_fd == 7 and o.resolved_parent_path() == "/x/parent"
    assert CheckpointOptions(status_fd=-1).status_fd is None  # runc's default
    assert CheckpointOptions(status_fd="x").status_fd is None  # runc ignores it without --lazy-pages


@pytest.mark.parametrize("value", ["foo", "apparmor:", ":x", "smack:x"])
def test_lsm_profile_refused(value):
    with pytest.raises(UsageError, match="TYPE:NAME"):
        RestoreOptions(lsm_profile=value)


def test_lsm_and_console_options_accepted():
    o = RestoreOptions(lsm_profile="apparmor:unconfined", lsm_mount_context="system_u:object_r:foo_t:s0",
                       console_socket="/run/x.sock", lazy_pages=True, auto_dedup=True)
    assert o.lsm_profile == "apparmor:unconfined" and o.console_socket == "/run/x.sock"


def test_resolve_in_root(tmp_path):
    root = str(tmp_path)
    os.makedirs(f"{root}/real/conf")
    os.symlink("/real/conf", f"{root}/conf")  # absolute: inside the rootfs, not the host's /real
    os.symlink("../../real", f"{root}/real/up")  # climbs no higher than the rootfs
    assert externals.resolve_in_root(root, "/conf") == "/real/conf"
    assert externals.resolve_in_root(root, "/conf/x") == "/real/conf/x"
    assert externals.resolve_in_root(root, "/real/up/conf") == "/real/conf"
    assert externals.resolve_in_root(root, "/missing/dir") == "/missing/dir"
    os.symlink("loop", f"{root}/loop")
    with pytest.raises(Exception, match="symbolic links"):
        externals.resolve_in_root(root, "/loop")


def test_criu_config_file_as_runc_chooses_it():
    assert migration.criu_config_file(["bundle=/b", "org.criu.config=/etc/my.conf"]) == "/etc/my.conf"
    assert migration.criu_config_file(["bundle=/b", "org.criu.config="]) is None  # set but empty: none
    assert migration.criu_config_file(["bundle=/b"]) == "/etc/criu/runc.conf"  # runc's default


def test_lazy_config_file_keeps_the_containers_lines(tmp_path):
    base = tmp_path / "c.conf"
    base.write_text("log-file=x.log")
    path = migration.lazy_config_file(str(tmp_path), str(base))
    assert open(path).read() == "log-file=x.log\nlazy-pages\n"


def test_lazy_pages_probe_agrees_with_the_pipe_limit():
    """The probe tries CRIU's own pipe size: it passes exactly when that size is allowed to us."""
    import fcntl

    r, w = os.pipe()
    try:
        try:
            fcntl.fcntl(r, migration.F_SETPIPE_SZ, migration.criu_lazy_pipe_bytes())
            allowed = True
        except PermissionError:
            allowed = False
    finally:
        os.close(r)
        os.close(w)
    assert (migration.lazy_pages_problem() is None) == allowed
    assert migration.criu_lazy_pipe_bytes() > 1 << 20  # above the default pipe-max-size


def test_global_flags_parsed_before_the_command():
    from fastckpt import cli

    argv = ["--log", "restore", "--log-format", "json", "--criu", "checkpoint", "--debug", "check"]
    assert cli._requested(argv) == "check"
    assert cli._global(argv, "--criu") == "checkpoint"
    assert cli._global(["--criu=/x/criu", "check"], "--criu") == "/x/criu"
    assert cli._global(["check", "--criu", "x"], "--criu") is None


# --- real containers ----------------------------------------------------------------------------

@pytest.fixture
def env(runc_root, tmp_path):
    yield from rs.Env.scoped(runc_root, str(tmp_path))


def _still_running(env, ct, images: str | None = None) -> None:
    ct.assert_running()
    ct.counter.wait_advancing()
    if images:
        assert not os.path.exists(images), f"{images} was made"


def _features():
    return criu.check()


@pytest.mark.integration
@pytest.mark.parametrize("args, code, needles", [
    (["--parent-path", "/abs/parent-dir"], 2, ["--parent-path must be relative"]),
    (["--parent-path", "./parent-dir"], 2, ["invalid --parent-path", "parent-dir"]),
    (["--lazy-pages", "--status-fd", "abc"], 2, ["invalid --status-fd argument 'abc'"]),
    (["--lazy-pages", "--status-fd", "97"], 2, ["invalid --status-fd argument 97", "Bad file descriptor"]),
    (["--manage-cgroups-mode", "bogus"], 2, ["Invalid manage cgroups mode"]),
])
def test_bad_checkpoint_values_change_nothing(env, args, code, needles):
    ct = env.start()
    images = os.path.join(env.workdir, "img")
    r = env.fastckpt("checkpoint", "--image-path", images, *args, ct.id)
    rs.assert_error(r, code, *needles)
    _still_running(env, ct, images)


@pytest.mark.integration
@pytest.mark.parametrize("argv, needle", [
    (["--log-format", "xml"], 'unknown log-format "xml"'),
    (["--criu", "/nonexistent/criu"], "--criu '/nonexistent/criu': no such executable"),
    (["--log", "/nonexistent-dir/fastckpt.log"], "cannot open log file /nonexistent-dir/fastckpt.log"),
    (["--rootless", "maybe"], "invalid --rootless value 'maybe'"),
    (["--systemd-cgroup"], "--systemd-cgroup is not supported"),
])
def test_bad_global_values_change_nothing(env, argv, needle):
    ct = env.start()
    images = os.path.join(env.workdir, "img")
    r = rs.run(rs.fastckpt_cmd(*argv, "--root", env.root, "checkpoint", "--image-path", images, ct.id), env.workdir)
    rs.assert_error(r, 2, needle)
    _still_running(env, ct, images)


@pytest.mark.integration
def test_pre_dump_refused_before_freezing_without_soft_dirty(env):
    if _features()["features"]["mem_track"]:
        pytest.skip("this kernel has soft-dirty tracking: pre-dump works (tests/test_runc_checkpoint_bats.py)")
    ct = env.start()
    images = os.path.join(env.workdir, "parent-dir")
    r = env.fastckpt("checkpoint", "--pre-dump", "--image-path", images, ct.id)
    rs.assert_error(r, 1, "--pre-dump", "soft-dirty", "nothing was checkpointed")
    _still_running(env, ct, images)
    # a valid --parent-path needs the same tracking
    os.makedirs(images)
    r = env.fastckpt("checkpoint", "--parent-path", "../parent-dir", "--image-path",
                     os.path.join(env.workdir, "img"), ct.id)
    rs.assert_error(r, 1, "--parent-path", "soft-dirty")
    _still_running(env, ct, os.path.join(env.workdir, "img"))


@pytest.mark.integration
def test_lazy_pages_refused_before_freezing_where_crius_page_server_fails(env):
    info = _features()
    if info["features"]["lazy_pages"]:
        pytest.skip("lazy pages work here (tests/test_runc_checkpoint_bats.py runs them)")
    ct = env.start()
    images = os.path.join(env.workdir, "img")
    r = env.fastckpt("checkpoint", "--lazy-pages", "--page-server", "127.0.0.1:27277", "--image-path", images, ct.id)
    rs.assert_error(r, 1, "--lazy-pages")
    assert info["feature_notes"].get("lazy_pages", "userfaultfd") in r.stderr or "userfaultfd" in r.stderr
    _still_running(env, ct, images)
    out = rs.run(rs.fastckpt_cmd("check"), env.workdir)
    assert "feature lazy_pages: no (" in out.stdout, out.stdout


@pytest.mark.integration
def test_debug_log_json_and_criu_path(env):
    """--debug and --log FILE --log-format json: fastckpt's messages as JSON lines in FILE; --criu PATH runs it."""
    ct = env.start()
    stopped = ct.counter.value()
    log = os.path.join(env.workdir, "fastckpt.log")
    images = os.path.join(env.workdir, "img")
    criu = shutil.which("criu")
    r = rs.run(rs.fastckpt_cmd("--debug", "--log", log, "--log-format", "json", "--criu", criu, "--rootless", "auto",
                               "--root", env.root,
                               "checkpoint", "--auto-dedup", "--image-path", images, ct.id), env.workdir)
    assert r.returncode == 0, str(r)
    recs = [json.loads(line) for line in open(log)]
    assert recs and all(set(x) == {"level", "msg", "time"} for x in recs), recs
    assert any(x["level"] == "debug" and x["msg"] == f"criu: {criu}" for x in recs), recs
    assert any("checkpoint done in" in x["msg"] for x in recs), recs
    # an error goes to the log too (and its one line to stderr)
    r = rs.run(rs.fastckpt_cmd("--log", log, "--log-format", "json", "--root", env.root, "restore", "-d",
                               "--image-path", images, "--lsm-profile", "bad", ct.id), env.workdir)
    rs.assert_error(r, 2, "--lsm-profile")
    assert json.loads(open(log).read().splitlines()[-1])["level"] == "error"
    # text format, to stderr: runc's logrus lines
    bundle = ct.bundle
    pages = [os.path.join(images, n) for n in os.listdir(images) if n.startswith("pages-")]
    blocks = sum(os.stat(p).st_blocks for p in pages)
    r = env.restore(ct.id, images, bundle, "--auto-dedup")
    assert r.returncode == 0, str(r)
    ct.assert_running()
    ct.counter.assert_continued(stopped)
    # restore --auto-dedup punches the pages it restored out of the images, as CRIU does
    assert sum(os.stat(p).st_blocks for p in pages) < blocks


@pytest.mark.integration
def test_auto_dedup_asked_in_the_containers_criu_config_file(env):
    """auto-dedup in the container's CRIU configuration file (org.criu.config), not on the command line: the
    restore still punches the pages it restored out of the images (CRIU gets them writable, not through
    the read-only view without the host's clocks fastckpt gives it otherwise)."""
    conf = os.path.join(env.workdir, "criu-dedup.conf")
    with open(conf, "w") as f:
        f.write("auto-dedup\n")
    bundle = env.bundle()
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    cfg.setdefault("annotations", {})["org.criu.config"] = conf
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f)
    ct = env.start(bundle)
    images = os.path.join(env.workdir, "img")
    stopped = env.checkpoint(ct, images)
    pages = [os.path.join(images, n) for n in os.listdir(images) if n.startswith("pages-")]
    blocks = sum(os.stat(p).st_blocks for p in pages)
    r = env.restore(ct.id, images, bundle)
    assert r.returncode == 0, str(r)
    ct.assert_running()
    ct.counter.assert_continued(stopped)
    assert sum(os.stat(p).st_blocks for p in pages) < blocks, "CRIU's auto-dedup punched nothing"


@pytest.mark.integration
def test_debug_text_to_stderr(env):
    ct = env.start()
    r = rs.run(rs.fastckpt_cmd("--debug", "--root", env.root, "checkpoint", "--leave-running", "--image-path",
                               os.path.join(env.workdir, "img"), ct.id), env.workdir)
    assert r.returncode == 0, str(r)
    lines = r.stderr.splitlines()
    assert lines and all(l.startswith('time="') and " level=debug msg=" in l for l in lines), r.stderr


@pytest.mark.integration
@pytest.mark.parametrize("flag, value", [("--lsm-profile", "apparmor:unconfined"),
                                         ("--lsm-mount-context", "system_u:object_r:container_file_t:s0")])
def test_lsm_flags_reach_criu_as_with_runc(env, flag, value):
    """CRIU gets the LSM options: fastckpt's restore ends as runc's does with the same images (on a
    kernel without that LSM both fail, CRIU saying so, and nothing is left)."""
    ct = env.start()
    images = os.path.join(env.workdir, "img")
    env.checkpoint(ct, images)
    copy = os.path.join(env.workdir, "img-runc")
    shutil.copytree(images, copy, symlinks=True)
    r = env.restore(ct.id, images, ct.bundle, flag, value)
    runc_id = rs.new_id("runc")
    runc_bundle = env.copy_bundle(ct.bundle)  # a rootfs of its own (rs.copy_bundle says why)
    env.track(runc_id, runc_bundle)
    rc = rs.run_quiet(["runc", "--root", env.root, "restore", "-d", "--image-path", copy, "-b", runc_bundle, flag,
                       value, runc_id])
    if (r.returncode == 0) != (rc == 0):  # what runc's CRIU said, to tell why the two ended apart
        try:
            with open(os.path.join(copy, "restore.log"), errors="replace") as f:
                runc_log = "".join(f.readlines()[-15:])
        except OSError as e:
            runc_log = f"(no restore.log: {e.strerror})"
        pytest.fail(f"fastckpt: {r}; runc: exit {rc}; runc's CRIU log ends:\n{runc_log}")
    if r.returncode:
        lines = rs.assert_error(r, 1, "criu restore failed", criu_lines=True)
        if flag == "--lsm-profile" and not os.path.exists("/sys/kernel/security/apparmor"):
            assert "apparmor" in lines[0], lines
        rs.assert_nothing_left(ct.id, env.root)
    else:
        ct.assert_running()


@pytest.mark.integration
def test_real_lazy_probe_agrees_and_leaves_nothing(monkeypatch, tmp_path):
    """The per-boot probe migrates a tiny process lazily for real: on CRIU 4.2.1 it fails exactly when the
    page server's pipe cannot be sized (with CRIU's own error), it leaves no process or directory, and
    its answer is cached per key (a sentinel under the same key is returned without probing)."""
    import glob
    import subprocess

    criu = shutil.which("criu")
    version = subprocess.run([criu, "--version"], capture_output=True, text=True).stdout
    before = set(glob.glob("/tmp/fastckpt-lazyprobe-*"))
    problem = migration._run_lazy_probe(criu)
    if "4.2.1" in version:
        assert (problem is None) == (migration.lazy_pages_problem() is None), problem
        if problem:
            assert "splice" in problem, problem
    assert set(glob.glob("/tmp/fastckpt-lazyprobe-*")) == before
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "lazyprobe" not in ps and not any(l.startswith("sleep 1000") and "unshare" in l for l in ps.splitlines())
    cache = tmp_path / "probe"
    monkeypatch.setattr(migration, "PROBE_CACHE", str(cache))
    cache.write_text(json.dumps({"key": migration._probe_key(criu), "problem": "sentinel"}))
    assert migration.probe_lazy_migration(criu) == "sentinel"
    cache.write_text(json.dumps({"key": "another boot", "problem": "sentinel"}))
    assert migration.probe_lazy_migration(criu) != "sentinel"  # another key: probed again, and kept
    assert json.loads(cache.read_text())["key"] == migration._probe_key(criu)


@pytest.mark.integration
@pytest.mark.parametrize("where", ["CRIU_CONFIG_FILE", "HOME"])
def test_auto_dedup_asked_in_criu_s_own_config_file(env, where):
    """auto-dedup in a configuration file CRIU reads itself whoever runs it (CRIU_CONFIG_FILE, or
    $HOME/.criu/default.conf; /etc/criu/default.conf too, not changed here: the host's): the restore
    succeeds and punches the pages out of the images, as `criu restore` would (CRIU gets them writable,
    not through the read-only overlay view without the host's clocks)."""
    from fastckpt_testing.cli import fastckpt_cmd, run

    if where == "HOME":
        os.makedirs(os.path.join(env.workdir, "home", ".criu"))
        conf = os.path.join(env.workdir, "home", ".criu", "default.conf")
        extra_env = {"HOME": os.path.join(env.workdir, "home")}
    else:
        conf = os.path.join(env.workdir, "criu-env.conf")
        extra_env = {"CRIU_CONFIG_FILE": conf}
    ct = env.start()
    images = os.path.join(env.workdir, "img")
    stopped = env.checkpoint(ct, images)
    with open(conf, "w") as f:
        f.write("auto-dedup\n")
    pages = [os.path.join(images, n) for n in os.listdir(images) if n.startswith("pages-")]
    blocks = sum(os.stat(p).st_blocks for p in pages)
    bundle = ct.bundle
    env.track(ct.id, bundle)
    r = run(fastckpt_cmd("--root", env.root, "restore", "-d", "--image-path", images, "-b", bundle, ct.id),
            env.workdir, env=extra_env)
    assert r.returncode == 0, str(r)
    ct.assert_running()
    ct.counter.assert_continued(stopped)
    assert sum(os.stat(p).st_blocks for p in pages) < blocks, "CRIU's auto-dedup punched nothing"


def test_criu_own_config_files_are_those_criu_reads(tmp_path):
    home = tmp_path / "home"
    (home / ".criu").mkdir(parents=True)
    env = {"HOME": str(home), "CRIU_CONFIG_FILE": str(tmp_path / "env.conf")}
    host = ["/etc/criu/default.conf"] if os.path.exists("/etc/criu/default.conf") else []
    assert migration.criu_own_config_files(env) == host  # none of the two exists yet
    (home / ".criu" / "default.conf").write_text("auto-dedup\n")
    (tmp_path / "env.conf").write_text("")
    assert migration.criu_own_config_files(env) == host + [str(home / ".criu" / "default.conf"),
                                                           str(tmp_path / "env.conf")]
    assert migration.criu_own_config_files({}) == host
