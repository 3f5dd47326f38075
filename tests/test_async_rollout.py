"""train.async_rollout: the next step's experience made during the update.

The unit tests drive driver.async_rollout.ExperienceAhead with the real DataStream and a
plain recording stand-in for ExperienceMaker (its real self needs engines; the launch
test below runs it). The launch test runs `conf=tiny` both ways and checks the weights
version each step's rollouts were written with, worked out by hand from the loop:
on-policy, step k samples with version k-1 (the push after step k-1); one step ahead,
step 1 samples with version 0 (made on the spot), step 2 with version 0 too (made during
step 1's update, before its push) and step k with version k-2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from conf import ConfigError, load_config
from driver import metrics as M
from driver.async_rollout import ExperienceAhead
from driver.data_stream import DataStream
from learner import checkpoint as C
from tests.conftest import REPO, TEST_CACHE

SAMPLES = [{"id": f"s{i}"} for i in range(12)]


class RecordingMaker:
    """Returns the ids of the batch it was given, and on which thread it ran."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def make(self, batch: list[dict]) -> list[str]:
        self.threads.append(threading.current_thread().name)
        return [s["id"] for s in batch]


def _stream() -> DataStream:
    return DataStream(SAMPLES, batch_size=3, seed=7, check=None)


def _steps(enabled: bool, steps: int) -> tuple[list[list[str]], RecordingMaker]:
    maker, seen = RecordingMaker(), []
    ahead = ExperienceAhead(maker, _stream(), enabled)
    for step in range(1, steps + 1):
        drawn = ahead.take()
        ahead.start_next(step < steps)
        ahead.wait()
        seen.append(drawn.experience)
    ahead.close()
    return seen, maker


def test_ahead_sees_the_same_batches_in_the_same_order():
    on_policy, sync_maker = _steps(False, 4)
    ahead, async_maker = _steps(True, 4)
    assert ahead == on_policy and len({tuple(b) for b in ahead}) == 4
    assert set(sync_maker.threads) == {"MainThread"}
    # the first step is made on the spot, the other three ahead, in the background
    assert async_maker.threads[0] == "MainThread"
    assert all(t.startswith("rollout-ahead") for t in async_maker.threads[1:])


def test_a_pending_batch_is_not_counted_in_the_checkpointed_state():
    stream = _stream()
    ahead = ExperienceAhead(RecordingMaker(), stream, True)
    ahead.take()
    done = stream.state()                  # one batch of 3 taken
    ahead.start_next(True)
    assert stream.state()["position"] == 6  # the stream has moved on ...
    assert ahead.stream_state() == done     # ... the checkpoint has not
    ahead.discard()                         # a learner restart: the batch is redrawn
    stream.load_state(done)
    second = _steps(False, 2)[0][1]
    assert ahead.take().experience == second
    ahead.close()


def test_no_background_work_when_off_or_at_the_last_step():
    stream = _stream()
    ahead = ExperienceAhead(RecordingMaker(), stream, False)
    ahead.take()
    ahead.start_next(True)
    assert stream.state()["position"] == 3 and ahead.stream_state()["position"] == 3
    on = ExperienceAhead(RecordingMaker(), _stream(), True)
    on.take()
    on.start_next(False)                    # the last step: nothing to make ahead
    assert on.stream_state()["position"] == 3
    on.close()


def test_conf_refuses_recomputed_old_logprobs_with_async_rollout():
    with pytest.raises(ConfigError, match="recompute_old_logprobs"):
        load_config("tiny", ["train.async_rollout=true", "learner.recompute_old_logprobs=true"])
    assert load_config("tiny", ["train.async_rollout=true"]).train.async_rollout is True


@pytest.mark.slow
def test_tiny_run_one_step_ahead(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "launch.py", "conf=tiny", f"run.output_dir={tmp_path}",
         "run.name=ahead", f"model.cache_dir={TEST_CACHE}", "ray.dashboard=false",
         "train.async_rollout=true", "train.max_steps=4", "checkpoint.every=2",
         "eval.max_samples=8", "eval.nothink_acc_every=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(x) for x in (tmp_path / "ahead" / "metrics.jsonl").read_text()
               .splitlines()]
    steps = [r for r in records if r["step"] > 0]
    assert [r[M.WEIGHTS_VERSION] for r in steps] == [0, 0, 1, 2]
    for r in steps:   # the model work is measured and the overhead follows from it
        model = r[M.TIMING_GEN_MODEL] + r[M.TIMING_PD_MODEL] + r[M.TIMING_UPDATE_MODEL]
        assert 0 < r[M.TIMING_GEN_MODEL] <= r[M.TIMING_GEN]
        assert 0 < r[M.TIMING_UPDATE_MODEL] <= r[M.TIMING_UPDATE]
        assert r[M.STEP_OVERHEAD] == pytest.approx(r[M.TIMING_STEP] / model)
    # launch.py's rule: step 1 and every eval.nothink_acc_every (2) steps, timed apart
    assert [r["step"] for r in steps if M.TIMING_NO_THINK in r] == [1, 2, 4]
    # The last checkpoint (step 4) holds the position after four batches of 4; with a
    # batch made ahead at step 2's save, that one held 8, not 12.
    _, state = C.newest_resumable(C.checkpoint_root(tmp_path / "ahead"))
    assert state["step"] == 4 and state["data"]["position"] == 16
    two = C.read_trainer_state(C.checkpoint_root(tmp_path / "ahead") / C.step_dir_name(2))
    assert two["data"]["position"] == 8
