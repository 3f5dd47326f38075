"""driver.run_dir: one launch per run directory, and no fresh start mixed into an old run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from driver.run_dir import RunDirError, RunLock, start_fresh
from tests.conftest import REPO


def test_a_second_lock_is_refused_with_the_holders_pid(tmp_path):
    first = RunLock(tmp_path / "run")
    # Another process tries the same directory: refused, naming this process.
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from driver.run_dir import RunLock\n"
         f"try:\n RunLock(__import__('pathlib').Path({str(tmp_path / 'run')!r}))\n"
         "except Exception as e:\n print(e); sys.exit(3)"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 3
    assert f"pid {__import__('os').getpid()}" in probe.stdout and "in use by" in probe.stdout
    first.release()
    RunLock(tmp_path / "run").release()     # free again once released


def test_a_fresh_start_is_refused_or_moves_the_old_run_aside_whole(tmp_path):
    run = tmp_path / "run"
    assert start_fresh(run, overwrite=False) is None            # nothing there yet
    (run / "checkpoints" / "step_000010").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError, match="run.overwrite=true"):
        start_fresh(run, overwrite=False)
    assert (run / "metrics.jsonl").is_file()                    # untouched
    aside = start_fresh(run, overwrite=True)
    assert not run.exists() and aside.name.startswith("run.replaced-")
    assert (aside / "checkpoints" / "step_000010").is_dir()
    assert (aside / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_launch_refuses_to_start_over_an_existing_run(tmp_path):
    run = tmp_path / "runs" / "old"
    (run / "checkpoints").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "launch.py", "conf=tiny", f"run.output_dir={tmp_path / 'runs'}",
         "run.name=old", "run.resume=false"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert "Traceback" not in proc.stderr
