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
import re
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
    from learner.checkpoint import resolve_model_path

    # "tiny": the model conf=tiny trains
    return resolve_model_path(cfg.model.path, cfg.model.cache_dir)


@pytest.fixture(scope="module")
def mini():
    from synth.mini_dataset import build_mini_dataset

    return build_mini_dataset(TEST_CACHE)


@pytest.fixture(scope="module")
def engines(ray_cluster, cfg, model_dir):
    from evals.engines import EvalEngines

    started = EvalEngines.start(cfg, model_dir, engines=True, scorer=True, batch_size=8)
    yield started
    started.shutdown()


def _in_unit_range(value, low=-1.0, high=1.0):
    return value is None or (math.isfinite(value) and low - 1e-9 <= value <= high + 1e-9)


# The answer syntax of conf/prompts.yaml, written out here rather than taken from rewards/,
# so that the checks below do not agree with the evaluation by construction.
_PLAIN_SCORE = re.compile(r"[ \t\r\n]*Score:[ \t\r\n]*([0-9]+(?:\.[0-9]+)?)[ \t\r\n]*")


def _answer_block(text):
    """The inside of the one "[answer]...[/answer]" block of `text`, else None."""
    if text.count("[answer]") != 1 or text.count("[/answer]") != 1:
        return None
    start, end = text.index("[answer]") + len("[answer]"), text.index("[/answer]")
    return text[start:end] if end >= start else None


def test_scoring_eval_writes_reports_with_numbers_in_range(engines, mini, tmp_path):
    from evals.scoring_eval import evaluate_scoring

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
    # the mini stage-2 test split: 2 held-out photos x 4 crops x (clean + 12 classes),
    # less the 2 saturation classes on the grey camera's 4 crops (tests/test_mini_dataset)
    assert n == len(records) == 96
    plain_answers = 0
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
        # A numeric value is what the answer says: a plain "Score: 3.7" block reads as
        # 3.7, an answer without a block or without "Score:" reads as nothing.
        for rec in records:
            block = _answer_block(rec[f"{mode}_text"])
            plain = None if block is None else _PLAIN_SCORE.fullmatch(block)
            if plain is not None:
                plain_answers += 1
                assert rec[f"{mode}_numeric"] == float(plain.group(1)), rec[f"{mode}_text"]
            elif block is None or "Score:" not in block:
                assert rec[f"{mode}_numeric"] is None, rec[f"{mode}_text"]
    assert plain_answers > 0, "no answer to check the numeric score on"
    # Think Eq. 8 is read after the score prefix inside the model's own answer block:
    # without one the image is a failure, with one it has a value.
    with_prefix = 0
    for rec in records:
        block = _answer_block(rec["think_text"])
        has_prefix = block is not None and "Score:" in block
        with_prefix += has_prefix
        assert (rec["think_prob"] is not None) == has_prefix, rec["think_text"]
    assert with_prefix > 0, "no think answer with a score prefix to read Eq. 8 after"
    # No-think Eq. 8 is read after the fixed prefix: a score for every image, in [0.5, 4.5].
    prob = [rec["no_think_prob"] for rec in records]
    assert all(p is not None and 0.5 <= p <= 4.5 for p in prob)
    assert all(len(rec["no_think_digit_probs"]) == 5 for rec in records)
    assert dataset["results"]["no_think"]["prob"]["n_failed"] == 0
    assert (out / "scatter_mini-synthetic-mos_no_think_prob.png").is_file()
    md = (out / "results.md").read_text()
    assert "| no_think / prob |" in md and "| think / numeric |" in md


def test_perception_eval_tables(engines, mini, cfg, model_dir, tmp_path):
    from evals.perception_eval import evaluate_perception
    from model_inputs.prompting import PromptBuilder

    builder = PromptBuilder(model_dir, cfg.model.min_pixels, cfg.model.max_pixels,
                            cfg.prompts)
    out = tmp_path / "perception"
    payload = evaluate_perception(engines, mini["stage1_test"], out, cfg.prompts)
    assert payload["split"] == "test"
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
    # Boxes: the sizes the engine reported give the box the prompt builder computes from
    # the image file itself.
    from synth.manifest import load_samples

    by_id = {s["id"]: s for s in load_samples(mini["stage1_test"])}
    grounding = [r for r in records if r["task"] == "grounding"]
    assert grounding
    for r in grounding:
        assert r["gt_box_model"] == pytest.approx(builder.gt_box_for_model(by_id[r["id"]]))
    # Per-part accuracy: each part compared by hand (case and spaces ignored, as the
    # reward does) on the answer text between the tags.
    choice = [r for r in records if r["task"] == "choice"]
    for k, part in enumerate(("object", "class", "severity")):
        right = 0
        for r in choice:
            body = r["text"].split("[answer]")[-1].split("[/answer]")[0] \
                if r["text"].count("[answer]") == 1 == r["text"].count("[/answer]") else None
            said = body.split("/") if body is not None else []
            gold = by_id[r["id"]]["answer"].split("/")
            if len(said) == 3:
                right += "".join(said[k].split()).lower() == "".join(gold[k].split()).lower()
        assert payload["parts"]["all"][part] == pytest.approx(right / len(choice))


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
