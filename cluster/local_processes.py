"""The processes of a local cluster, recorded so that a killed driver leaves none behind.

A driver that starts a local cluster is the ancestor of all of its processes (GCS,
raylet, dashboard, agents, workers). When the driver ends normally Ray stops them; after
kill -9 of the driver the raylet and the GCS die with it, but Ray's dashboard and
runtime-env agents first try to report the raylet's death to the dead GCS and only exit
once that request times out (measured with ray 2.60: both alive 60 s after the kill, gone
by 90 s; the dashboard agent holds 127.0.0.1:52365 meanwhile, which a relaunch's own agent
needs).

So the driver records its cluster's processes - pid, start time, name - in a file of its
own (`record`, right after the cluster starts, and again once the actors run), and every
later start of a local cluster on this machine first ends the processes of records whose
driver is gone (`clean_stale`). A process is ended only if it is still the very process
recorded (same pid and start time: a reused pid is left alone) and belongs to this user;
a record of a driver that still runs is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

RECORDS_ENV = "REFINE_IQA_CLUSTER_RECORDS"   # another folder for the records (tests)


def records_dir() -> Path:
    """Where this user's records live: $REFINE_IQA_CLUSTER_RECORDS, else a folder of the
    system's temporary directory named after the user id."""
    chosen = os.environ.get(RECORDS_ENV)
    return Path(chosen) if chosen else (
        Path(tempfile.gettempdir()) / f"refine-iqa-{os.getuid()}" / "local-clusters")


def _identity(proc: Any) -> dict[str, Any]:
    return {"pid": proc.pid, "start": proc.create_time(), "name": proc.name()}


def _same(entry: dict[str, Any]) -> Any:
    """The psutil process `entry` recorded, if it still runs (not a zombie, not a new
    process under a reused pid), else None."""
    import psutil

    try:
        proc = psutil.Process(int(entry["pid"]))
        if abs(proc.create_time() - float(entry["start"])) > 1e-3:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def record(folder: Path | None = None) -> Path:
    """Write (or rewrite) this driver's record: itself and every process below it.
    Returns the record's path; `forget` removes it."""
    import psutil

    me = psutil.Process()
    processes = []
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):   # one that ended meanwhile
            processes.append(_identity(child))
    folder = folder or records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{me.pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"driver": _identity(me), "processes": processes}))
    os.replace(tmp, path)   # a killed driver leaves a whole record or the one before
    return path


def forget(folder: Path | None = None) -> None:
    """Remove this driver's record (its cluster was stopped the ordinary way)."""
    with contextlib.suppress(FileNotFoundError):
        ((folder or records_dir()) / f"{os.getpid()}.json").unlink()


def clean_stale(folder: Path | None = None) -> list[str]:
    """End the recorded processes of every driver that is gone, and drop its record;
    returns "name (pid)" of each process ended. Records of running drivers stay."""
    import psutil

    folder = folder or records_dir()
    ended: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            content = json.loads(path.read_text())
            driver, processes = content["driver"], list(content["processes"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)   # unreadable: nothing can be matched against it
            continue
        if _same(driver) is not None:
            continue   # its driver runs: its cluster is in use
        for entry in processes:
            proc = _same(entry)
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if proc is not None and proc.name() == entry.get("name"):
                    os.kill(proc.pid, signal.SIGKILL)
                    ended.append(f"{entry['name']} ({proc.pid})")
        path.unlink(missing_ok=True)
    return ended


def refresh(folder: Path | None = None) -> None:
    """Rewrite this driver's record, if it has one (it started a local cluster), to add
    the processes started since (actors, their engine processes)."""
    if ((folder or records_dir()) / f"{os.getpid()}.json").exists():
        record(folder)
