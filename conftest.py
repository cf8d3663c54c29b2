"""pytest's entry for tests/ and benchmarks/ alike: the shared fixture layer's plugin.

tests/fastckpt_testing is importable through pyproject.toml's ``pythonpath`` option.
"""
pytest_plugins = ["fastckpt_testing.plugin"]
