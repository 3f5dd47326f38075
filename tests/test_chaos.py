"""Every role can die and the run goes on: one tiny Stage-2 run (vLLM in multiprocess
mode, so that an engine core is a process of its own) in which the test kills, in turn,
a rollout engine, the engine core inside the restarted engine, the scoring actor, and
the learner together with the scoring actor; and a Stage-1 run whose single engine is killed (no peer holds its weights: the
driver replays them). Each run must finish every step, log every step once, and count
each recovery in events/*.

Only processes under the launched run's own process tree are killed (its local Ray
cluster is a child of the driver), never another Ray session's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from driver import metrics as M
from tests.conftest import REPO, TEST_CACHE

pytestmark = pytest.mark.slow


def _steps(path: Path) -> list[int]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return out


def _title(proc: psutil.Process) -> str:
    return " ".join(proc.cmdline())


def _kill(root: psutil.Process, title: str, under: str | None = None) -> int | None:
    """SIGKILL the first process under `root` whose title starts with `title` (and, with
    `under`, whose parent's title starts with `under`); None when there is none yet."""
    for proc in root.children(recursive=True):
        try:
            if _title(proc).startswith(title) and (
                    under is None or _title(proc.parent()).startswith(under)):
                os.kill(proc.pid, signal.SIGKILL)
                return proc.pid
        except psutil.Error:
            continue
    return None


def _run_with_kills(tmp_path: Path, args: list[str], kills: dict[int, list[tuple]],
                    timeout_s: float = 1500) -> Path:
    """Launch the run; once step s is logged, kill each process kills[s] = [(title,
    parent title or None), ...] names, as soon as it exists (a restarting actor may not,
    yet)."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # stderr to a file, not a pipe: nobody reads a pipe while the run goes on, and a full
    # one (64 KiB of logs) would block the run.
    with open(tmp_path / "stderr.log", "w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "launch.py", *args, f"run.output_dir={tmp_path}", "run.name=run",
             f"model.cache_dir={TEST_CACHE}", "ray.dashboard=false"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        root, done = psutil.Process(proc.pid), {}
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            seen = _steps(run / "metrics.jsonl")
            for step, targets in kills.items():
                for title, under in targets:
                    if not done.get((step, title)) and seen and max(seen) >= step:
                        done[step, title] = _kill(root, title, under)
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        stderr = log.read()
    assert proc.returncode == 0, stderr[-4000:]
    assert all(done.get((s, t)) for s in kills for t, _ in kills[s]), (done, stderr[-2000:])
    return run


def _validation_with_a_missing_image(tmp_path: Path) -> list[str]:
    """data.train_files / data.val_files overrides: one training photo's Stage-2 images as
    a validation file (split val, one sample's image missing), the other photos' as the
    training file. (Validation never reads the test photos: the run refuses that.)"""
    from driver.data_splits import source_of
    from synth.manifest import load_samples, write_manifest
    from synth.mini_dataset import build_mini_dataset

    samples = load_samples(build_mini_dataset(TEST_CACHE / "mini")["stage2_train"])
    held = min(source_of(s) for s in samples)
    val = [dict(s, split="val") for s in samples if source_of(s) == held]
    val[0]["images"] = [str(tmp_path / "gone.png")]
    write_manifest(tmp_path / "train.jsonl", [s for s in samples if source_of(s) != held])
    write_manifest(tmp_path / "val.jsonl", val)
    return [f"data.train_files={tmp_path / 'train.jsonl'}",
            f"data.val_files={tmp_path / 'val.jsonl'}"]


def test_stage2_survives_each_role_dying(tmp_path):
    """Also: one validation image is missing (before, the engine's FileNotFoundError at
    the first validation ended the run): it is left out and counted, validation goes on."""
    steps = 10
    run = _run_with_kills(tmp_path, [
        "conf=tiny", f"train.max_steps={steps}", "checkpoint.every=3",
        "rollout.multiprocessing=true", "eval.every=0", "eval.max_samples=3",
        *_validation_with_a_missing_image(tmp_path)],
        {2: [("ray::RolloutEngine", None)], 4: [("VLLM::EngineCore", "ray::RolloutEngine")],
         6: [("ray::ScoringActor", None)],
         # Both at once: the restarted scorer needs version 8, whose buckets died with
         # learner rank 0 (Ray's OwnerDiedError ended the run before: the learners had to
         # be replaced first, and are now, weight_sync.sync.LearnersGone).
         8: [("ray::Learner", None), ("ray::ScoringActor", None)]})
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # Every step once (the learner restart went back to step 6's checkpoint and redid 7-8),
    # with validation at step 0 and after the last.
    assert [r["step"] for r in records] == list(range(0, steps + 1))
    last = records[-1]
    assert last[M.LEARNER_RESTARTS] == 1
    # engine, engine core (its actor exits), scoring actor: three restarts, each replayed.
    assert last[M.RESTARTS] >= 3 and last[M.REPLAYS] >= 3
    for validated in (records[0], last):
        assert (validated[M.VAL_SAMPLES], validated[M.VAL_SKIPPED]) == (3, 1)


def test_stage1_single_engine_is_replayed_from_the_driver(tmp_path):
    steps = 5
    run = _run_with_kills(tmp_path, [
        "conf=tiny_stage1", f"train.max_steps={steps}", "checkpoint.every=5", "eval.every=0",
        "eval.max_samples=4"], {2: [("ray::RolloutEngine", None)]})
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(0, steps + 1))
    assert records[-1][M.RESTARTS] >= 1 and records[-1][M.REPLAYS] >= 1


def _driver(code: str, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                            **kwargs)


def _running(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{proc.name()} ({proc.pid})")
        except psutil.Error:
            continue
    return out


def test_a_killed_drivers_local_cluster_is_ended_by_the_next_start(tmp_path):
    """kill -9 of a driver left its local cluster's ray::DashboardAgent (on 127.0.0.1:
    52365) and ray::RuntimeEnvAgent running: they report the raylet's death to the dead
    GCS first and exit only when that request times out (measured: alive 60 s after the
    kill, gone by 90 s). The next start of a local cluster now ends every process the
    killed driver recorded. The processes checked are the killed driver's own tree, as
    this test lists it before the kill, not the record."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["REFINE_IQA_CLUSTER_RECORDS"] = str(tmp_path / "records")   # this test's own
    start = ("from conf import load_config\nfrom cluster.connect import connect\n"
             "connect(load_config('tiny', ['ray.num_cpus=1']))\nprint('ready', flush=True)\n")
    first = _driver(start + "import time\ntime.sleep(600)\n", env, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        assert first.stdout.readline().strip() == "ready"
        tree = psutil.Process(first.pid).children(recursive=True)
        names = {p.name() for p in tree}
        assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        second = _driver(start, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = second.communicate(timeout=180)
        assert second.returncode == 0 and "ready" in out, err[-2000:]
        while _running(tree) and time.monotonic() < killed + 30:
            time.sleep(0.5)
        assert _running(tree) == [], err[-2000:]
        assert "ended" in err and "ray::DashboardAgent" in err
        assert list((tmp_path / "records").glob("*.json")) == []   # both records gone
    finally:   # whatever the outcome, nothing this test started outlives it
        if first.poll() is None:
            first.kill()
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
