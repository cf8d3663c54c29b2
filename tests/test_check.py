"""Integration: `fastckpt check` reports the real CRIU."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

import ckpt_support as cs

pytestmark = pytest.mark.integration


def criu_version() -> str:
    out = subprocess.run(["criu", "--version"], capture_output=True, text=True, check=True).stdout
    return re.search(r"Version:\s*(\S+)", out).group(1)


def test_check():
    proc = cs.fastckpt("check")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    version = criu_version()
    assert re.search(rf"^version: {re.escape(version)}$", out, re.M), out
    assert "criu check: ok" in out
    features = {n: v for n, v, _ in re.findall(r"^feature (\w+): (yes|no)(?: \((.*)\))?$", out, re.M)}
    assert set(features) >= {"mem_track", "lazy_pages", "pidfd_store"}, out
    # a missing feature says what it costs (this kernel has no soft-dirty tracking)
    for name, line in re.findall(r"^feature (\w+): no(.*)$", out, re.M):
        assert "unavailable" in line, out


def test_check_json():
    proc = cs.fastckpt("check", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)  # nothing but the JSON: criu's own stdout is muted
    assert info["version"] == criu_version()
    assert info["version_ok"] is True and info["check_ok"] is True
    assert set(info["features"]) >= {"mem_track", "lazy_pages", "pidfd_store"}
    assert all(isinstance(v, bool) for v in info["features"].values())


def test_check_reports_the_cgroup_layout():
    """The layout the suite runs in (hybrid as the host is, unified in make test's cgroup2 namespace)."""
    proc = cs.fastckpt("check")
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"^cgroup layout: {cs.LAYOUT} \(controllers: .+\)$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^container checkpoint/restore: yes \(frozen through (cgroup\.freeze|the v1 freezer)",
                     proc.stdout, re.M), proc.stdout
    info = json.loads(cs.fastckpt("check", "--json").stdout)["cgroups"]
    assert info["layout"] == cs.LAYOUT and info["containers"] is True, info
    if cs.UNIFIED:
        assert "hugetlb" in info["controllers"] and "BPF" in info["how"]
    else:
        assert {"freezer", "devices"} <= set(info["controllers"])
