"""End to end on a real Ray cluster: `ray job submit -- python launch.py conf=tiny`.

A Ray head on 127.0.0.1 (token authentication left on), the job submitted with
`--working-dir .`, real vLLM engines, the scoring actor and a DeepSpeed learner on the tiny
model. The test:
1. submits a Stage-2 job, watches the dashboard's HTTP API list the named actors, and
   stops the job (`ray job stop`) once a checkpoint exists;
2. resubmits the same command: it resumes from the newest checkpoint; mid-run the test
   kills the rollout engine's process; Ray restarts it, the step is retried, and the job
   SUCCEEDS;
3. checks metrics.jsonl (every step once, every required key), the checkpoint and the
   exported model (it loads in transformers).
The two stages one after the other, on manifests built from files in the datasets' own
formats, are tests/test_recipe_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from driver import metrics as M
from tests.conftest import REPO, TEST_CACHE

pytestmark = pytest.mark.slow
VENV_BIN = str(Path(sys.executable).parent)
# Enough steps after the resume for the engine kill to land before the last generate (the
# restart is only noticed, and counted, by a later generate).
STEPS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


def _token() -> str:
    return (Path.home() / ".ray" / "auth_token").read_text().strip()


class Head:
    """A `ray start --head --block` process; terminating it stops the cluster."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.dash = _free_port(), _free_port()
        self.log = (tmp / "ray-head.log").open("w")
        # Every listener on a free port: another Ray on this machine (a developer's, or a
        # test's local cluster) must not make the job agent fail to bind.
        ports = {flag: str(_free_port()) for flag in (
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
            "--metrics-export-port", "--runtime-env-agent-port", "--ray-client-server-port",
            "--node-manager-port", "--object-manager-port")}
        self.proc = subprocess.Popen(
            [f"{VENV_BIN}/ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(self.port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
             str(self.dash), "--num-cpus", "4", "--disable-usage-stats",
             *[x for pair in ports.items() for x in pair]],
            env=_env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.dash}"
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                self.api("/api/version")
                return
            except Exception:
                time.sleep(2)
        raise RuntimeError(f"the Ray head did not answer on {self.url}")

    def api(self, path: str) -> dict:
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {_token()}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def actors(self) -> list[dict]:
        data = self.api("/api/v0/actors?limit=1000")["data"]["result"]
        return data.get("result", data) if isinstance(data, dict) else data

    def job(self, verb: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # --address must precede "--", after which everything is the job's entrypoint.
        for _ in range(30):
            proc = subprocess.run([f"{VENV_BIN}/ray", "job", verb, "--address", self.url, *args],
                                  env=_env(), cwd=REPO, capture_output=True, text=True,
                                  timeout=300)
            # Right after `ray start` the head's job agent may not be up yet.
            if "No available agent" not in proc.stderr:
                break
            time.sleep(3)
        if check and proc.returncode != 0:
            raise AssertionError(f"ray job {verb} failed:\n{proc.stdout[-2000:]}\n"
                                 f"{proc.stderr[-4000:]}")
        return proc

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        # A killed head leaves Ray's "current cluster" file behind; remove ours only.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    h = Head(tmp_path_factory.mktemp("ray"))
    yield h
    h.stop()


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_status(head: Head, job_id: str, wanted: set[str], timeout: float,
                 on_poll=None) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = head.api(f"/api/jobs/{job_id}")["status"]
        if status in wanted:
            return status
        if on_poll:
            on_poll()
        time.sleep(2)
    logs = head.job("logs", job_id, check=False).stdout[-4000:]
    raise AssertionError(f"job {job_id} still not in {wanted} after {timeout}s:\n{logs}")


def test_job_submit_stop_resume_and_engine_kill(head, tmp_path):
    out = tmp_path / "outputs"
    command = ["python", "launch.py", "conf=tiny", f"train.max_steps={STEPS}",
               "checkpoint.every=2", f"run.output_dir={out}", "run.name=e2e",
               f"model.cache_dir={TEST_CACHE}", "ray.dashboard=false"]
    run = out / "e2e"

    # 1. submit, watch the named actors, stop the job once the step-2 checkpoint exists.
    first = head.job("submit", "--no-wait", "--working-dir", ".", "--submission-id",
                     "e2e-first", "--", *command)
    assert first.returncode == 0, first.stderr
    seen: set[str] = set()

    def watch_actors():
        seen.update(a.get("name") or "" for a in head.actors() if a.get("state") == "ALIVE")

    deadline = time.time() + 900
    while time.time() < deadline and not list((run / "checkpoints").glob("step_*")):
        assert head.api("/api/jobs/e2e-first")["status"] in ("PENDING", "RUNNING"), \
            head.job("logs", "e2e-first", check=False).stdout[-4000:]
        watch_actors()
        time.sleep(2)
    assert {"rollout-engine-0", "scoring-actor", "learner-0"} <= seen, seen
    head.job("stop", "e2e-first")
    assert _wait_status(head, "e2e-first", {"STOPPED", "FAILED"}, 120) == "STOPPED"
    stopped_at = max(r["step"] for r in _metrics(run))
    assert stopped_at < STEPS

    # 2. the same command again resumes; the rollout engine is killed once mid-run.
    second = head.job("submit", "--no-wait", "--working-dir", ".", "--submission-id",
                      "e2e-second", "--", *command)
    assert second.returncode == 0, second.stderr
    killed: list[int] = []

    def kill_engine_once():
        steps = [r["step"] for r in _metrics(run)]
        # After a step of the resumed run, and with steps left to use the engine again
        # (a kill after the last step's generation would leave nothing to recover).
        if killed or not steps or not stopped_at < max(steps) < STEPS - 2:
            return
        for actor in head.actors():
            if actor.get("name") == "rollout-engine-0" and actor.get("state") == "ALIVE":
                os.kill(int(actor["pid"]), signal.SIGKILL)
                killed.append(int(actor["pid"]))

    status = _wait_status(head, "e2e-second", {"SUCCEEDED", "FAILED", "STOPPED"}, 1200,
                          on_poll=kill_engine_once)
    logs = head.job("logs", "e2e-second").stdout
    assert status == "SUCCEEDED", logs[-4000:]
    assert "resumed from step" in logs
    assert killed, "the engine was never killed: the run ended before a step after resume"

    # 3. what the run left behind.
    lines = _metrics(run)
    # Validation before the first step (step 0) and after the last (tiny: eval.every 10).
    assert [r["step"] for r in lines] == list(range(0, STEPS + 1))
    assert [r["step"] for r in lines if M.VAL_SCORING[("think", "srcc")] in r] == [0, STEPS]
    records = lines[1:]
    for record in records:
        missing = [k for k in M.required_keys(2) if record.get(k) is None]
        assert not missing, (record["step"], missing)
    rollout_steps = [json.loads(x)["step"] for x in (run / "rollouts.jsonl").read_text()
                     .splitlines()]
    assert sorted(set(rollout_steps)) == list(range(1, STEPS + 1))
    assert len(rollout_steps) == STEPS * 2 * 8     # rollouts_per_step 2 groups of G = 8
    assert records[-1][M.RESTARTS] >= 1 and records[-1][M.REPLAYS] >= 1
    # Step s generates with the weights published after step s - 1 (resume included).
    assert [r[M.WEIGHTS_VERSION] for r in records] == list(range(STEPS))
    assert (run / "config.yaml").is_file() and (run / "plots" / "rewards.png").is_file()
    assert (run / "checkpoints" / f"step_{STEPS:06d}").is_dir()

    # The export is the last checkpoint's weights, and training moved them away from the
    # model the run started from.
    from safetensors.torch import load_file

    from learner.checkpoint import resolve_model_path

    export = load_file(run / "export" / "model.safetensors")
    last = load_file(run / "checkpoints" / f"step_{STEPS:06d}" / "hf" / "model.safetensors")
    start = load_file(Path(resolve_model_path("tiny", TEST_CACHE)) / "model.safetensors")
    assert export.keys() == last.keys() == start.keys()
    assert all(export[k].equal(last[k]) for k in export)
    assert not all(export[k].equal(start[k]) for k in export)
