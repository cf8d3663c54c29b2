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
    proc = cs.run_cli("check")
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
    proc = cs.run_cli("check", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)  # nothing but the JSON: criu's own stdout is muted
    assert info["version"] == criu_version()
    assert info["version_ok"] is True and info["check_ok"] is True
    assert set(info["features"]) >= {"mem_track", "lazy_pages", "pidfd_store"}
    assert all(isinstance(v, bool) for v in info["features"].values())
