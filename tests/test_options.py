"""Unit tests of the options model (no root, no CRIU run)."""
from __future__ import annotations

import os

import pytest

from fastckpt import CgroupMode, CheckpointOptions, Namespace, NetworkLock, PageServer, UsageError
from fastckpt.options import (DEFAULT_NETWORK_LOCK, NETNS_HOST, NETNS_OWN, NETNS_OWN_LO, auto_network_lock, parse_cgroup_mode, parse_empty_ns,
                              parse_network_lock)


# --- --page-server ADDRESS:PORT ---------------------------------------------------

@pytest.mark.parametrize("text, address, port", [
    ("127.0.0.1:1234", "127.0.0.1", 1234),
    ("host.example:1", "host.example", 1),
    ("h:65535", "h", 65535),
])
def test_page_server_parse_valid(text, address, port):
    ps = PageServer.parse(text)
    assert (ps.address, ps.port) == (address, port)
    assert str(ps) == text


@pytest.mark.parametrize("text", ["foo", "a:b:c", "", "::1", "1.2.3.4"])
def test_page_server_parse_needs_address_and_port(text):
    with pytest.raises(UsageError, match="Use --page-server ADDRESS:PORT to specify page server"):
        PageServer.parse(text)


def test_page_server_parse_needs_an_address():
    with pytest.raises(UsageError, match="Use --page-server ADDRESS:PORT to specify page server") as ei:
        PageServer.parse(":1234")
    assert "no address" in str(ei.value)


@pytest.mark.parametrize("text", ["host:abc", "host:", "host:12x", "host:-"])
def test_page_server_parse_invalid_port(text):
    with pytest.raises(UsageError, match="Invalid port number") as ei:
        PageServer.parse(text)
    assert text in str(ei.value)  # the message shows what was given


@pytest.mark.parametrize("text", ["host:0", "host:65536", "host:70000"])
def test_page_server_port_range(text):
    with pytest.raises(UsageError, match=r"Invalid port number .*1-65535"):
        PageServer.parse(text)


@pytest.mark.parametrize("port", [0, 65536, -5])
def test_page_server_constructor_checks_range(port):
    with pytest.raises(UsageError, match="Invalid port number"):
        PageServer("h", port)


@pytest.mark.parametrize("text", ["host:1_000", "host: 80", "host:-1", "host:+80"])
def test_page_server_port_is_plain_digits(text):
    with pytest.raises(UsageError, match="Invalid port number"):
        PageServer.parse(text)


def test_usage_error_is_value_error_and_oserror():
    with pytest.raises(ValueError):
        PageServer.parse("foo")
    with pytest.raises(OSError) as ei:
        PageServer.parse("foo")
    assert ei.value.errno == 22  # EINVAL


# --- --manage-cgroups-mode ---------------------------------------------------------

@pytest.mark.parametrize("name, mode", [
    ("soft", CgroupMode.SOFT), ("full", CgroupMode.FULL), ("strict", CgroupMode.STRICT),
    ("ignore", CgroupMode.IGNORE),
])
def test_cgroup_modes(name, mode):
    assert parse_cgroup_mode(name) is mode
    assert CheckpointOptions(manage_cgroups_mode=name).manage_cgroups_mode is mode


def test_cgroup_mode_default_is_none():
    assert parse_cgroup_mode(None) is None
    assert parse_cgroup_mode("") is None
    assert CheckpointOptions().manage_cgroups_mode is None


def test_cgroup_mode_accepts_enum_and_int():
    assert parse_cgroup_mode(CgroupMode.FULL) is CgroupMode.FULL
    assert parse_cgroup_mode(int(CgroupMode.STRICT)) is CgroupMode.STRICT


@pytest.mark.parametrize("value", ["bogus", "SOFT", "props", " soft"])
def test_cgroup_mode_invalid(value):
    with pytest.raises(UsageError, match="Invalid manage cgroups mode") as ei:
        CheckpointOptions(manage_cgroups_mode=value)
    msg = str(ei.value)
    assert repr(value) in msg
    for name in ("soft", "full", "strict", "ignore"):
        assert name in msg  # the message lists the valid modes


def test_cgroup_mode_invalid_int():
    with pytest.raises(UsageError, match="Invalid manage cgroups mode"):
        parse_cgroup_mode(12345)


# --- --empty-ns ---------------------------------------------------------------------

def test_empty_ns_network():
    assert parse_empty_ns(["network"]) == Namespace.NEWNET
    assert parse_empty_ns("network") == Namespace.NEWNET
    assert parse_empty_ns(["network", "network"]) == Namespace.NEWNET
    assert CheckpointOptions(empty_ns=["network"]).empty_ns == Namespace.NEWNET
    assert parse_empty_ns(int(Namespace.NEWNET)) == Namespace.NEWNET


def test_empty_ns_default_is_empty():
    assert parse_empty_ns(None) == 0
    assert parse_empty_ns([]) == 0
    assert CheckpointOptions().empty_ns == 0


@pytest.mark.parametrize("value", [["pid"], ["mount"], ["network", "ipc"], "user", ["net"]])
def test_empty_ns_unsupported_names(value):
    with pytest.raises(UsageError, match=r"is not supported by --empty-ns \(supported: network\)"):
        CheckpointOptions(empty_ns=value)


@pytest.mark.parametrize("mask", [Namespace.NEWPID, Namespace.NEWNET | Namespace.NEWNS])
def test_empty_ns_unsupported_masks(mask):
    with pytest.raises(UsageError, match="only network"):
        parse_empty_ns(int(mask))


# --- --network-lock -------------------------------------------------------------------

@pytest.mark.parametrize("name, lock", [
    ("iptables", NetworkLock.IPTABLES), ("nftables", NetworkLock.NFTABLES), ("skip", NetworkLock.SKIP),
])
def test_network_lock(name, lock):
    assert parse_network_lock(name) is lock
    assert CheckpointOptions(network_lock=name).network_lock is lock
    assert parse_network_lock(lock) is lock


def test_network_lock_auto():
    assert parse_network_lock("auto") is None
    assert CheckpointOptions(network_lock="auto").network_lock is None
    # what "auto" picks for the dump
    none, net = Namespace(0), Namespace.NEWNET
    assert auto_network_lock(NETNS_OWN, none, False) is NetworkLock.NFTABLES
    assert auto_network_lock(NETNS_OWN, none, True) is NetworkLock.NFTABLES
    assert auto_network_lock(NETNS_HOST, none, False) is None  # CRIU's default on the host's netns
    assert auto_network_lock(NETNS_HOST, none, True) is None
    assert auto_network_lock(NETNS_OWN, net, False) is NetworkLock.SKIP
    assert auto_network_lock(NETNS_HOST, net, False) is NetworkLock.SKIP
    # loopback only and no established connection to carry: nothing to lock
    assert auto_network_lock(NETNS_OWN_LO, none, False) is NetworkLock.SKIP
    assert auto_network_lock(NETNS_OWN_LO, none, True) is NetworkLock.NFTABLES
    # a restore of a checkpoint made with a lock takes its rules out again with a lock
    assert auto_network_lock(NETNS_OWN_LO, none, False, dumped_with="nftables") is NetworkLock.NFTABLES
    assert auto_network_lock(NETNS_OWN_LO, none, False, dumped_with=None) is NetworkLock.NFTABLES
    assert auto_network_lock(NETNS_OWN_LO, none, False, dumped_with="skip") is NetworkLock.SKIP


def test_network_lock_default():
    # None leaves CRIU's own default; "" (the CLI without --network-lock) means fastckpt's default
    assert parse_network_lock(None) is None
    assert parse_network_lock("") is DEFAULT_NETWORK_LOCK
    assert CheckpointOptions().network_lock is DEFAULT_NETWORK_LOCK
    assert CheckpointOptions(network_lock="").network_lock is DEFAULT_NETWORK_LOCK
    assert CheckpointOptions(network_lock=None).network_lock is None


@pytest.mark.parametrize("value", ["x", "IPTABLES", "nft"])
def test_network_lock_invalid(value):
    with pytest.raises(UsageError, match="Invalid network lock method") as ei:
        CheckpointOptions(network_lock=value)
    assert "iptables, nftables, skip" in str(ei.value)


def test_network_lock_invalid_int_is_usage_error():
    with pytest.raises(UsageError):
        parse_network_lock(12345)


# --- CheckpointOptions as a whole -------------------------------------------------------

def test_defaults():
    o = CheckpointOptions()
    assert (o.leave_running, o.tcp_established, o.ext_unix_sk, o.shell_job, o.file_locks) == (False,) * 5
    assert o.page_server is None and o.image_path is None and o.work_path is None
    assert o.log_level == 4


def test_page_server_forms():
    assert CheckpointOptions(page_server="h:1").page_server == PageServer("h", 1)
    assert CheckpointOptions(page_server=("h", 2)).page_server == PageServer("h", 2)
    assert CheckpointOptions(page_server=PageServer("h", 3)).page_server == PageServer("h", 3)
    assert CheckpointOptions(page_server="").page_server is None
    with pytest.raises(UsageError, match="Use --page-server ADDRESS:PORT"):
        CheckpointOptions(page_server="foo")
    with pytest.raises(UsageError, match="Invalid port number"):
        CheckpointOptions(page_server=("h", 0))


def test_options_are_frozen_and_replace_revalidates():
    o = CheckpointOptions(manage_cgroups_mode="full", page_server="h:1", empty_ns=["network"])
    with pytest.raises(AttributeError):  # frozen
        o.leave_running = True
    o2 = o.replace(leave_running=True)
    assert o2.leave_running and not o.leave_running
    assert (o2.manage_cgroups_mode, o2.page_server, o2.empty_ns) == (CgroupMode.FULL, PageServer("h", 1),
                                                                      Namespace.NEWNET)
    with pytest.raises(UsageError):
        o.replace(manage_cgroups_mode="bogus")


def test_paths_default_to_cwd_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    o = CheckpointOptions()
    assert o.resolved_image_path() == os.path.join(str(tmp_path), "checkpoint")
    assert o.resolved_work_path() == o.resolved_image_path()
    o = CheckpointOptions(image_path="", work_path="")
    assert o.image_path is None and o.work_path is None


def test_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    o = CheckpointOptions(image_path="img", work_path=tmp_path / "work")
    assert o.image_path == "img"  # pathlib is accepted
    assert o.resolved_image_path() == str(tmp_path / "img")
    assert o.resolved_work_path() == str(tmp_path / "work")


@pytest.mark.parametrize("field", ["image_path", "work_path"])
def test_paths_reject_nul(field):
    with pytest.raises(UsageError, match="NUL"):
        CheckpointOptions(**{field: "/tmp/a\0b"})


@pytest.mark.parametrize("level", [-1, 5])
def test_log_level_range(level):
    with pytest.raises(UsageError, match="Invalid log level"):
        CheckpointOptions(log_level=level)
