"""The evaluations end to end on the tiny model and the mini manifests, through the real
rollout engine and scoring actor (vLLM on CPU, in Ray), started once for the module.

The model is conf=tiny's (`--model tiny`): random weights warmed up on the answer FORMAT
only, so it writes well-formed answers part of the time and its scores mean nothing. The
tests check that the reports are written, that every number lies in its range, that
unreadable answers are counted (not filled in) and that the probability-based score,
which needs no readable answer in the no-think mode, exists for every image.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_CACHE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cfg():
    from conf import load_config

    return load_config("tiny", [f"model.cache_dir={TEST_CACHE}"])


@pytest.fixture(scope="module")
def model_dir(cfg):
    from evals.engines import resolve_eval_model

    return resolve_eval_model(cfg)   # "tiny": the model conf=tiny trains


@pytest.fixture(scope="module")
def mini():
    from synth.mini_dataset import build_mini_dataset

    return build_mini_dataset(TEST_CACHE)


@pytest.fixture(scope="module")
def engines(cfg, model_dir):
    import ray

    from evals.engines import EvalEngines

    # "local": a cluster of our own, even when another one was started with `ray start`.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    started = EvalEngines.start(cfg, model_dir, need_scorer=True, batch_size=8)
    yield started
    started.shutdown()
    ray.shutdown()


def _in_unit_range(value, low=-1.0, high=1.0):
    return value is None or (math.isfinite(value) and low - 1e-9 <= value <= high + 1e-9)


def test_scoring_eval_writes_reports_with_numbers_in_range(engines, mini, tmp_path):
    from evals.scoring_eval import evaluate_scoring, numeric_score

    out = tmp_path / "scoring"
    payload = evaluate_scoring(engines, [mini["stage2_test"]], out,
                               modes=("no_think", "think"), inferences=("numeric", "prob"))
    for name in ("results.json", "results.md", "predictions.jsonl"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["datasets"] == json.loads(
        json.dumps(payload["datasets"]))
    (dataset,) = payload["datasets"].values()
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    n = dataset["n"]
    assert n == len(records) == 11   # the mini stage-2 test split
    for mode in ("no_think", "think"):
        for inference in ("numeric", "prob"):
            r = dataset["results"][mode][inference]
            assert r["n_parsed"] + r["n_failed"] == n
            assert 0.0 <= r["failure_rate"] <= 1.0
            for key in ("srcc", "plcc", "plcc_logistic"):
                assert _in_unit_range(r[key]), (mode, inference, key, r[key])
            # Failures are exactly the records without a value: none was filled in.
            values = [rec[f"{mode}_{inference}"] for rec in records]
            assert sum(v is None for v in values) == r["n_failed"]
        # A numeric value is what the answer text says, nothing else.
        for rec in records:
            assert rec[f"{mode}_numeric"] == numeric_score(rec[f"{mode}_text"])
    # Think Eq. 8 is read after the model's own score prefix: missing prefix = failure.
    from actors.scoring_actor import cut_after_score_prefix

    for rec in records:
        has_prefix = cut_after_score_prefix(rec["think_text"]) is not None
        assert (rec["think_prob"] is not None) == has_prefix
    # No-think Eq. 8 is read after the fixed prefix: a score for every image, in [0.5, 4.5].
    prob = [rec["no_think_prob"] for rec in records]
    assert all(p is not None and 0.5 <= p <= 4.5 for p in prob)
    assert all(len(rec["no_think_digit_probs"]) == 5 for rec in records)
    assert dataset["results"]["no_think"]["prob"]["n_failed"] == 0
    assert (out / "scatter_mini-synthetic-mos_no_think_prob.png").is_file()
    md = (out / "results.md").read_text()
    assert "| no_think / prob |" in md and "| think / numeric |" in md


def test_perception_eval_tables(engines, mini, cfg, model_dir, tmp_path):
    from actors.prompting import PromptBuilder
    from evals.perception_eval import evaluate_perception

    builder = PromptBuilder(model_dir, cfg.model.min_pixels, cfg.model.max_pixels,
                            cfg.prompts)
    out = tmp_path / "perception"
    payload = evaluate_perception(engines, mini["stage1_test"], out, builder)
    tables = payload["tables"]
    lines = (Path(mini["stage1_test"]).read_text()).splitlines()
    n_choice = sum('"task": "choice"' in line for line in lines)
    assert tables["choice"]["all"]["n"] == n_choice
    assert tables["choice"]["all"]["n"] + tables["grounding"]["all"]["n"] == len(lines)
    for task in ("choice", "grounding"):
        t = tables[task]["all"]
        assert t["n"] == tables[task]["fr"]["n"] + tables[task]["nr"]["n"]
        assert 0 <= t["n_failed"] <= t["n"]
        for value in [t["easy"], t["hard"], t["overall"]] + [
                c["mean"] for c in t["per_class"].values()]:
            assert _in_unit_range(value, 0.0, 1.0)
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["parsed"] or r["value"] == 0.0 for r in records)
    assert "Description accuracy" in (out / "results.md").read_text()


def test_qbench_eval_on_the_selfmade_set(engines, mini, cfg, tmp_path):
    from evals.qbench import build_selfmade_set, evaluate_qbench, read_qbench

    items = read_qbench(build_selfmade_set(mini["stage2_test"], tmp_path / "set"))
    payload = evaluate_qbench(engines, items, tmp_path / "qbench", ("no_think",), cfg.prompts)
    r = payload["results"]["no_think"]
    assert r["n"] == len(items) and 0 <= r["n_failed"] <= r["n"]
    assert _in_unit_range(r["overall"], 0.0, 1.0)
    assert sum(g["n"] for g in r["type"].values()) == len(items)
    assert "Binary" in (tmp_path / "qbench" / "results.md").read_text()


def test_score_images_think_and_prob(engines, mini):
    from evals.score import find_images, score_images

    images = find_images(Path(mini["stage2_test"]).parent / "stage2")[:3]
    think = score_images(engines, images, "think", "numeric")
    assert [r["image"] for r in think] == [str(p) for p in images]
    assert all(r["score"] is None or math.isfinite(r["score"]) for r in think)
    assert all(isinstance(r["answer"], str) for r in think)
    prob = score_images(engines, images, "no_think", "prob")
    assert all(0.5 <= r["score"] <= 4.5 for r in prob)


def test_score_cli_json(mini, model_dir, tmp_path):
    """The command a user runs, in its own process (its own local Ray and engine)."""
    image = sorted((Path(mini["stage2_test"]).parent / "stage2").glob("*.png"))[0]
    # Its own local cluster: no RAY_ADDRESS, no dashboard (port 8265 may be taken).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "evals.score", str(image), "--model", model_dir,
         "--conf", "tiny", "--inference", "prob", "--json", "ray.dashboard=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # With --json the actors' logs stay off stdout: it is the JSON and nothing else (Ray's
    # own start-up line goes to stderr).
    records = json.loads(done.stdout)
    assert len(records) == 1 and records[0]["image"] == str(image.resolve())
    assert 0.5 <= records[0]["score"] <= 4.5
