"""Claiming a run directory: one launch at a time, and a fresh start never mixed into an
old run.

- `RunLock`: an exclusive `flock` on `<run>/.lock`, held for the life of the process; a
  second launch on the same directory is refused with the first one's process id and host
  (the kernel drops the lock when that process dies, however it dies).
- `start_fresh`: `run.resume=false` in a directory that already holds a run (checkpoints or
  metrics) is refused unless `run.overwrite=true`; then the old run is moved aside whole,
  to `<run>.replaced-<time>`, never deleted and never mixed with the new one.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"
RUN_MARKERS = ("checkpoints", "metrics.jsonl", "export")


class RunDirError(RuntimeError):
    """The run directory is in use or holds a run that must not be overwritten."""


class RunLock:
    """An exclusive lock on a run directory (module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise RunDirError(f"{run_dir} is in use by {holder}: wait for it to finish, stop "
                              "it, or give this run another run.name") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._handle.flush()

    def release(self) -> None:
        """Give the directory up (the process's exit does the same)."""
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` already holds a run's checkpoints, metrics or export."""
    return any((Path(run_dir) / name).exists() for name in RUN_MARKERS)


def start_fresh(run_dir: Path, overwrite: bool) -> Path | None:
    """For run.resume=false: refuse to start over an existing run unless `overwrite`, and
    then move it aside whole; returns where it went (None when there was nothing)."""
    run_dir = Path(run_dir)
    if not holds_a_run(run_dir):
        return None
    if not overwrite:
        raise RunDirError(f"{run_dir} already holds a run and run.resume=false would start "
                          "over it: give the new run another run.name, continue the old one "
                          "with run.resume=true, or set run.overwrite=true to move the old "
                          "run aside first")
    aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(run_dir, aside)
    return aside
