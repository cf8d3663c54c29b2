"""The one fixture layer of fastckpt's tests and benchmarks.

* :mod:`.waiting` -- polling with generous deadlines (no timing assertions).
* :mod:`.cli` -- the one command runner (``fastckpt ...`` or any command, stdout and stderr in files)
  and the one error asserter (exit code, one ``fastckpt: ...`` line, no traceback).
* :mod:`.containers` -- the one container model (a runc container in a private ``--root``: its
  bundle, counter, cgroups, memory check) and the one tear-down (:func:`.containers.teardown`).
* :mod:`.plugin` -- the pytest plugin (hooks and fixtures), registered by the repository's
  top-level conftest.py for tests/ and benchmarks/ alike.

How it is found: pytest puts tests/ (and benchmarks/) on sys.path through the ``pythonpath`` ini
option (pyproject.toml); benchmark scripts run as ``python benchmarks/x.py`` import
benchmarks/benchlib.py, which adds tests/ when pytest has not.

Everything here touches only what the tests started: containers live in private runc roots with
uuid-based ids, processes are killed by the pids the tests hold, never by name.
"""
