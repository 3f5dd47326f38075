"""scripts/gpu_smoke.py (`make gpu-smoke`) where it cannot run: this machine has no CUDA
GPU, so it must stop after its first row with one line saying so, and start no run. Its GPU rows are meant for a CUDA machine; `--cpu` runs the same harness with
the CPU settings (a manual check, minutes: not a CI test)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

torch = pytest.importorskip("torch")


def _smoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/gpu_smoke.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_help():
    done = _smoke("--help")
    assert done.returncode == 0 and "--cpu" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the smoke would run")
def test_without_a_gpu_it_stops_at_the_environment_row(tmp_path):
    done = _smoke("--out", str(tmp_path))
    assert done.returncode == 1
    assert "no CUDA GPU visible" in done.stdout and "Traceback" not in done.stderr
    assert "gpu-smoke stops here" in done.stderr and "--cpu" in done.stderr
    assert not (tmp_path / "gpu_smoke.json").exists()
    assert not (tmp_path / "stage2").exists()   # no run was started
