"""scripts/build_cpu_adam.py: the toolchain check before DeepSpeed's CPU Adam build names
every missing tool with what to install, exits non-zero without a traceback, and passes on
a machine that has the tools. The build itself (minutes of g++) is not run here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_cpu_adam.py"
_spec = importlib.util.spec_from_file_location("build_cpu_adam", SCRIPT)
assert _spec is not None and _spec.loader is not None
build_cpu_adam = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_cpu_adam)


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # sys.executable is this environment's python by absolute path, so an empty PATH
    # still starts it (and still leaves pip's ninja in its bin folder findable).
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def no_toolchain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Stands in for a machine without the tools: nothing on PATH, an environment bin
    folder without ninja, and a Python.h that does not exist."""
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(build_cpu_adam.shutil, "which", lambda _name: None)
    monkeypatch.setattr(build_cpu_adam, "venv_bin", lambda: tmp_path)
    monkeypatch.setattr(build_cpu_adam, "python_header", lambda: tmp_path / "Python.h")


def test_check_names_each_missing_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_toolchain(monkeypatch, tmp_path)
    missing = build_cpu_adam.missing_tools()
    assert len(missing) == 3
    compiler, ninja, headers = missing
    assert "C++ compiler" in compiler and "apt-get install g++" in compiler
    assert "ninja" in ninja and "pip install ninja" in ninja
    assert str(tmp_path / "Python.h") in headers and "python3-dev" in headers


def test_pip_ninja_in_the_environment_counts(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    no_toolchain(monkeypatch, tmp_path)
    ninja = tmp_path / "ninja"
    ninja.write_text("#!/bin/sh\n")
    ninja.chmod(0o755)
    assert build_cpu_adam.find_ninja() == str(ninja)
    assert not any(line.startswith("no ninja") for line in build_cpu_adam.missing_tools())


def test_missing_compiler_exits_nonzero_without_traceback() -> None:
    # An empty PATH hides the compiler (and any system ninja) from the real command.
    for args in ((), ("--check",)):
        result = run_script(*args, env={"PATH": ""})
        assert result.returncode == 1, result.stderr
        assert "no C++ compiler" in result.stderr and "apt-get install g++" in result.stderr
        assert "Traceback" not in result.stderr
        assert "building" not in result.stdout


def test_help() -> None:
    result = run_script("--help")
    assert result.returncode == 0
    assert "--check" in result.stdout and "CPU Adam" in result.stdout


@pytest.mark.skipif(bool(build_cpu_adam.missing_tools()),
                    reason="this machine lacks part of the toolchain")
def test_check_passes_with_the_toolchain() -> None:
    result = run_script("--check")
    assert result.returncode == 0, result.stderr
    assert "toolchain OK" in result.stdout
