"""EvalEngines' scheduling without a model: answers and digit distributions come back in
input order whatever the batching, the rollout engines and the scoring actor work at the
same time (each with its next batch queued), think digits read their own batch's answers,
also after weights were pushed. Fakes stand in for the actors."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from actors.scoring_actor import SCORER_NAME
from evals.engines import EvalEngines

CALL_S = 0.1   # each fake call takes this long, so that overlapping calls do overlap


class Calls:
    """Every fake call's (kind, first sample id, start, end), and how many ran at once."""

    def __init__(self, together: int = 0) -> None:
        self.log: list[tuple[str, str, float, float]] = []
        self.running = self.most = 0
        self.lock = threading.Lock()
        # the first `together` calls wait for each other: they must all be in flight at once
        self.barrier = threading.Barrier(together, timeout=30) if together else None

    def run(self, kind: str, samples: list[dict]) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            wait = self.barrier is not None and self.most <= self.barrier.parties
        if wait:
            self.barrier.wait()   # BrokenBarrierError: they were not in flight together
        start = time.monotonic()
        time.sleep(CALL_S)
        with self.lock:
            self.running -= 1
            self.log.append((kind, samples[0]["id"], start, time.monotonic()))


def number(sample: dict) -> int:
    """i of sample "s<i>" (or of an image path ".../s<i>.png")."""
    return int(re.sub(r"\D", "", Path(sample["id"]).stem))


class FakeGroup:
    """EngineGroup.generate: the answer to sample "s<i>" is "a<i>", token ids [i, i]."""

    def __init__(self, calls: Calls, fail_on: str | None = None) -> None:
        self.calls, self.fail_on = calls, fail_on

    def generate(self, samples, mode, n, sampling):
        self.calls.run("answers", samples)
        if any(s["id"] == self.fail_on for s in samples):
            raise RuntimeError(f"engine failed on {self.fail_on}")
        return [SimpleNamespace(rollouts=[SimpleNamespace(
            text=f"a{number(s)}", finish_reason="stop", token_ids=[number(s)] * 2)],
            original_size=(8, 8), input_size=(4, 4)) for s in samples]


class FakeSync:
    """WeightSync.call on the scorer: digit p("0") is the sample's number (no_think) or
    the sum of the answer's token ids (think) / 100."""

    def __init__(self, calls: Calls, version: int) -> None:
        self.calls, self.version = calls, version
        self.receivers = {SCORER_NAME: "scorer"}

    def call(self, name, method, samples, mode, ids, digits_before):
        assert (name, method) == (SCORER_NAME, "digit_distribution")
        self.calls.run("digits", samples)
        values = ([number(s) for s in samples] if mode == "no_think"
                  else [sum(i) for i in ids])
        return SimpleNamespace(probs=[[v / 100] + [0.0] * 9 for v in values])


def engines(calls: Calls, version: int = 0, batch_size: int = 2, **group) -> EvalEngines:
    return EvalEngines(FakeGroup(calls, **group), "scorer", sampling={},
                       batch_size=batch_size, sync=FakeSync(calls, version), progress=False)


SAMPLES = [{"id": f"s{i}"} for i in range(7)]


@pytest.mark.parametrize("version", [0, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 16])
def test_results_in_input_order(version, batch_size):
    calls = Calls()
    e = engines(calls, version, batch_size)
    answers = e.generate(SAMPLES, "think")
    assert [g.text for g in answers] == [f"a{i}" for i in range(7)]
    assert [g.token_ids for g in answers] == [[i, i] for i in range(7)]
    assert answers[0].original_size == (8, 8) and answers[0].input_size == (4, 4)
    assert [d[0] for d in e.digit_probs(SAMPLES, "no_think")] == [i / 100 for i in range(7)]
    ids = [[i, 1] for i in range(7)]
    assert [d[0] for d in e.digit_probs(SAMPLES, "think", ids)] == [
        (i + 1) / 100 for i in range(7)]


def test_think_digits_read_their_own_answers_while_the_engines_write_the_next():
    calls = Calls()
    got = dict(engines(calls).stream(SAMPLES, "think"))
    assert [d[0] for d in got["digits"]] == [2 * i / 100 for i in range(7)]
    answers = {first: (start, end) for kind, first, start, end in calls.log
               if kind == "answers"}
    for kind, first, start, _ in calls.log:
        if kind == "digits":   # asked for only once this batch's answers were back
            assert start >= answers[first][1]
    # the scorer worked while the engines wrote later batches
    assert any(kind == "digits" and start < max(end for _, end in answers.values())
               for kind, _, start, _ in calls.log)


def test_no_think_answers_and_digits_run_at_once_two_calls_each():
    calls = Calls(together=4)   # two batches in flight on each side
    kinds = [kind for kind, _ in engines(calls).stream(SAMPLES, "no_think")]
    assert sorted(kinds) == ["answers", "digits"]
    assert calls.most == 4


def test_calls_overlap_after_weights_were_pushed_too():
    # (WeightSync.bring_current is thread-safe: tests/test_weight_sync.py)
    calls = Calls(together=4)
    kinds = [kind for kind, _ in engines(calls, version=2).stream(SAMPLES, "no_think")]
    assert sorted(kinds) == ["answers", "digits"]
    assert calls.most == 4


def test_an_engine_error_surfaces_and_nothing_is_made_up():
    calls = Calls()
    with pytest.raises(RuntimeError, match="engine failed on s3"):
        dict(engines(calls, fail_on="s3").stream(SAMPLES, "think"))


def test_no_samples_no_calls():
    calls = Calls()
    assert dict(engines(calls).stream([], "no_think")) == {"answers": [], "digits": []}
    assert calls.log == []


def test_missing_actors_and_ids_are_refused():
    e = EvalEngines(None, None, sampling={})
    with pytest.raises(RuntimeError, match="rollout engines"):
        e.generate(SAMPLES, "think")
    with pytest.raises(RuntimeError, match="scoring actor"):
        e.digit_probs(SAMPLES, "no_think")
    with pytest.raises(ValueError, match="token ids"):
        engines(Calls()).digit_probs(SAMPLES, "think", [[1]])


def test_score_images_think_prob_reads_each_images_own_answer():
    from evals.score import score_images

    images = [Path(f"/photos/s{i}.png") for i in range(5)]
    records = score_images(engines(Calls()), images, "think", "prob")
    assert [r["image"] for r in records] == [str(p) for p in images]
    assert [r["answer"] for r in records] == [f"a{i}" for i in range(5)]
    # p("0") = 2i / 100, nothing on 1..4: Eq. 8 gives 0.5, or no score without any mass
    assert [r["score"] for r in records] == [None, 0.5, 0.5, 0.5, 0.5]
