"""`make test` measures the CLI's processes too ([tool.coverage.run] in pyproject.toml, the hook
scripts/provision.sh puts in the venv): what it counts must come from them, and they must say nothing
more than they would unmeasured -- the tests assert their stderr line by line.

Each test runs a driver process that starts coverage with the project's own configuration and a data file
in the test's temporary directory (as pytest-cov does in `make test`), runs the CLI under it, then combines
what the processes wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = os.path.join(ROOT, "pyproject.toml")
LAUNCHER = os.path.join(os.path.dirname(sys.executable), "fastckpt")

# argv: data file, then a JSON list of commands (argv lists); prints one JSON object: each command's exit
# status and stderr, and the lines measured per fastckpt file after the combine
DRIVER = r"""
import json, os, subprocess, sys
import coverage
data_file, commands = sys.argv[1], json.loads(sys.argv[2])
cov = coverage.Coverage(config_file=%r)
cov.start()
results = []
for cmd in commands:
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd="/")
    results.append({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr})
cov.stop()
cov.save()
cov.combine()
data = cov.get_data()
lines = {os.path.basename(f): len(data.lines(f) or ()) for f in data.measured_files() if data.lines(f)}
print(json.dumps({"results": results, "lines": lines}))
""" % PYPROJECT


def _drive(tmp_path, commands):
    """Run COMMANDS under the project's coverage configuration, data in TMP_PATH/data/."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}  # not the outer run's
    env["COVERAGE_FILE"] = str(data_dir / ".coverage")
    r = subprocess.run([sys.executable, "-c", DRIVER, env["COVERAGE_FILE"], json.dumps(commands)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return out["results"], out["lines"], sorted(os.listdir(data_dir))


def test_the_cli_is_measured_and_says_only_its_own_line(tmp_path):
    """A failing command (one line on stderr, exit 1) as `python -m fastckpt` and through the launcher,
    the launcher again in a network and mount namespace of its own: each is measured -- its data written
    at os._exit, where the CLI ends -- and its stderr is the CLI's line alone."""
    missing = str(tmp_path / "no-such-images")
    args = ["--root", str(tmp_path / "root"), "restore", "--image-path", missing, "nope"]
    commands = [[sys.executable, "-m", "fastckpt", *args], [LAUNCHER, *args],
                ["unshare", "--net", "--mount", "--propagation", "private", LAUNCHER, *args]]
    results, lines, files = _drive(tmp_path, commands)
    for cmd, r in zip(commands, results):
        err = r["stderr"].splitlines()
        assert r["rc"] == 1 and len(err) == 1 and err[0].startswith("fastckpt: ") and missing in err[0], (cmd, r)
    assert lines.get("cli.py", 0) > 50 and lines.get("restorer.py", 0) > 0, lines
    assert len(files) == 1, files  # the combine took (and removed) every process's file


def test_a_process_that_cannot_write_the_data_stays_unmeasured_and_silent(tmp_path):
    """The data directory read-only to the process (a mount namespace with a read-only bind; in make test:
    the tests' uid 65534 in a root-owned checkout): coverage would end such a process with a traceback
    (DataError: Couldn't use data file); the hook has it not measured instead. The process ends normally
    (atexit) and through os._exit (the CLI)."""
    site = sysconfig.get_paths()["purelib"]
    assert os.path.exists(os.path.join(site, "a0_fastckpt_coverage.pth")), \
        f"no coverage hook in {site}: the venv was not made by scripts/provision.sh (make deps)"
    data_dir = str(tmp_path / "data")
    ro = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
          'mount --bind -o ro "$0" "$0" && exec "$@"', data_dir]
    commands = [[*ro, sys.executable, "-c", "import fastckpt.cli; print('done')"],
                [*ro, sys.executable, "-m", "fastckpt", "--version"],
                [sys.executable, "-c", "import fastckpt.options; print('done')"]]  # writable: measured
    results, lines, files = _drive(tmp_path, commands)
    assert results[0] == {"rc": 0, "stdout": "done\n", "stderr": ""}, results[0]
    assert results[1]["rc"] == 0 and results[1]["stderr"] == "", results[1]
    assert results[2] == {"rc": 0, "stdout": "done\n", "stderr": ""}, results[2]
    assert "cli.py" not in lines and lines.get("options.py", 0) > 0, lines
    assert len(files) == 1, files


def test_a_signal_while_coverage_saves_at_os_exit_changes_nothing(tmp_path):
    """The CLI ends with os._exit, which a signal cannot interrupt; measured, os._exit first saves the data
    (Python code, ~10 ms and more): SIGINTs sent then must not turn the exit into a KeyboardInterrupt's
    traceback and status -2 (seen in make test: test_robust_early_signal). Here SIGINTs come every 0.5 ms
    from 2 ms after the process called os._exit(3) on."""
    code = ("import os, signal, threading, time\n"
            "import fastckpt.cli\n"
            "exiting = threading.Event()\n"
            "def flood():\n"
            "    exiting.wait()\n"
            "    time.sleep(0.002)\n"
            "    while True:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        time.sleep(0.0005)\n"
            "threading.Thread(target=flood, daemon=True).start()\n"
            "exiting.set()\n"
            "os._exit(3)\n")
    results, lines, _ = _drive(tmp_path, [[sys.executable, "-c", code] for _ in range(5)])
    for r in results:
        assert r == {"rc": 3, "stdout": "", "stderr": ""}, r
    assert lines.get("cli.py", 0) > 0, lines  # measured: the data was saved
