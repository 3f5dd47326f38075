"""driver.metrics (the one catalogue of names) and driver.metrics_sink (metrics.jsonl,
real wandb in offline mode, the think-collapse watch)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from driver import metrics as M
from driver.metrics_sink import MetricsLogger, ThinkCollapseWatch
from tests.conftest import REPO


def test_logger_writes_jsonl_and_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    mean = M.SCORE.name("mean")
    logger = MetricsLogger(tmp_path, {"a": 1}, backends=["wandb"], project="refine-iqa-test")
    for step in (1, 2, 3):
        logger.log(step, {mean: step / 10, M.GRAD_NORM: float("nan")})
    summary = dict(logger.wandb_run.summary)
    logger.close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r[M.STEP] for r in records] == [1, 2, 3]
    assert records[-1][M.GRAD_NORM] is None               # NaN is "not measured"
    assert summary[mean] == pytest.approx(0.3)            # wandb got the same keys
    # A resumed run (checkpoint at step 2) drops the lines it will redo, and no temporary
    # file is left behind by the atomic rewrite.
    again = MetricsLogger(tmp_path, {})
    again.rewind(2)
    again.log(3, {mean: 0.5})
    again.close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r[M.STEP] for r in records] == [1, 2, 3] and records[-1][mean] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


def test_tensorboard_gets_the_same_names_and_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mean = M.SCORE.name("mean")
    logger = MetricsLogger(tmp_path, {}, backends=["tensorboard"])
    for step in (1, 2, 3):
        logger.log(step, {mean: step / 10, M.GRAD_NORM: 2.0 * step, M.LR: float("nan")})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    # NaN is "not measured" (null in metrics.jsonl) and is not written as a point either.
    assert sorted(events.Tags()["scalars"]) == sorted([mean, M.GRAD_NORM])
    assert [(e.step, round(e.value, 6)) for e in events.Scalars(mean)] == [
        (1, 0.1), (2, 0.2), (3, 0.3)]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r[M.GRAD_NORM] for r in records] == [e.value for e in events.Scalars(M.GRAD_NORM)]


def test_logger_refuses_an_undeclared_name(tmp_path):
    logger = MetricsLogger(tmp_path, {})
    with pytest.raises(KeyError, match="not declared in driver/metrics.py"):
        logger.log(1, {"reward/final_mean": 1.0})   # the name before the catalogue
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_family_statistics_on_hand_values():
    # [1, 2, 4]: mean 7/3, population std sqrt(((4/3)^2 + (1/3)^2 + (5/3)^2) / 3).
    out = M.SCORE([1.0, 2.0, 4.0])
    assert out == pytest.approx({"critic/score/mean": 7 / 3, "critic/score/max": 4.0,
                                 "critic/score/min": 1.0,
                                 "critic/score/std": (42 / 27) ** 0.5})
    with pytest.raises(ValueError, match="no values"):
        M.ADVANTAGES([])
    with pytest.raises(KeyError, match="has no 'std'"):
        M.ADVANTAGES.name("std")


def test_throughput_is_verls_definition():
    # verl: perf/throughput = total tokens / (step seconds x GPUs); 1 on a CPU-only run.
    assert M.throughput(1200, 2.0, 4)[M.THROUGHPUT] == 150.0
    assert M.throughput(1200, 2.0, 0)[M.THROUGHPUT] == 600.0


def test_stage_keys_follow_when_each_is_written():
    # Named by hand from what each stage computes: PD and the answer reward exist only in
    # Stage-2, the choice and IoU rewards only in Stage-1, validation and the no-think
    # accuracy only on their cadence; the score, timings and events in every step.
    one, two = set(M.required_keys(1)), set(M.required_keys(2))
    for name in ("critic/score/mean", "timing_s/step", "events/learner_restarts",
                 "perf/throughput", "actor/pg_loss", "weights/version"):
        assert name in one and name in two
    for name in ("reward/pd/mean", "reward/answer/mean", "timing_s/pd_score",
                 "think_length/mean"):
        assert name in two and name not in one
    for name in ("reward/choice/mean", "reward/iou/mean"):
        assert name in one and name not in two
    for name in ("val/srcc", "val/acc_mean", "eval/no_think_answer_acc", "actor/kl_loss",
                 "timing_s/testing"):
        assert name not in one | two


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_module_spells_a_metric_name_out():
    # Names with a "/" are unmistakable; the producers must import them from the catalogue
    # so that a rename cannot leave a stale copy behind. Tests and the catalogue itself
    # are exempt. Prefixes of families count too (e.g. "critic/score").
    names = {n for n in M.CATALOGUE if "/" in n}
    names |= {n.rsplit("/", 1)[0] for n in names if n.count("/") == 2}
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in (".venv", "tests", ".cache", "outputs") or rel == Path(
                "driver/metrics.py"):
            continue
        offenders += [f"{rel}:{line}: {value!r}" for line, value in _string_constants(path)
                      if value in names]
    assert offenders == []


def test_think_collapse_watch_fires_once():
    watch = ThinkCollapseWatch(fraction=0.5, warmup=3)
    assert [watch.update(x) for x in (100, 110, 90)] == [None, None, None]  # early mean 100
    assert watch.update(60) is None
    assert "think collapse" in watch.update(40)
    assert watch.update(10) is None
