"""driver.metrics (the one catalogue of names) and driver.metrics_sink (metrics.jsonl,
real wandb in offline mode, the think-collapse watch)."""

from __future__ import annotations

import ast
import json
import time
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


def wandb_segments(run_dir: Path, wait_s: float = 30.0) -> list[dict]:
    """What wandb wrote offline under run_dir, one entry per run segment (each wandb.init),
    oldest first: {"id", "start", "branch": (run, step) of a rewind or None, "history":
    {step: {key: value}}, "exit": whether it was finished}, once every segment is (within
    `wait_s`). wandb has no public reader of its offline file; this one follows its
    format (a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of records,
    each with a 7-byte header - checksum, length, type: 1 whole, 2 first, 3 middle,
    4 last) and decodes the records with wandb's own protobuf definitions."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    def records(data: bytes):
        pos, block, parts = 7, 32768, b""
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if length == kind == 0:
                pos += left
                continue
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            parts = chunk if kind in (1, 2) else parts + chunk
            if kind in (1, 4):
                yield parts

    out = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        segment = {"id": None, "start": 0, "branch": None, "history": {}, "exit": False}
        for raw in records(path.read_bytes()):
            rec = pb.Record()
            rec.ParseFromString(raw)
            segment["exit"] |= rec.WhichOneof("record_type") == "exit"
            if rec.WhichOneof("record_type") == "run":
                segment["id"], segment["start"] = rec.run.run_id, rec.run.start_time.ToNanoseconds()
                if rec.run.branch_point.run:
                    segment["branch"] = (rec.run.branch_point.run, rec.run.branch_point.value)
            elif rec.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in rec.history.item}
                segment["history"][int(row["_step"])] = row
        out.append(segment)
    if not all(segment["exit"] for segment in out) and wait_s > 0:
        time.sleep(0.5)   # wandb's service may still be writing after finish() returned
        return wandb_segments(run_dir, wait_s - 0.5)
    return sorted(out, key=lambda segment: segment["start"])


def test_a_rewind_rewinds_wandb_so_redone_steps_replace_the_first_copies(tmp_path,
                                                                          monkeypatch):
    """A learner restart went back to step 6's checkpoint after step 8 had been logged:
    metrics.jsonl dropped 7-8 and got the redone ones, but wandb dropped the redone steps
    (its steps only go forward) and kept its first copy. Now the wandb run is rewound to
    step 6 (wandb.init resume_from: the offline record carries the branch point, which
    W&B applies to the run's history when it is synced) and gets the redone 7-8; with no
    checkpoint the wandb run starts over under a new id."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    mean = M.SCORE.name("mean")
    logger = MetricsLogger(tmp_path, {"a": 1}, backends=["wandb"], project="refine-iqa-test")
    first_id = logger.wandb_run.id
    for step in range(0, 9):
        logger.log(step, {mean: float(step)})
    logger.rewind(6)
    for step in (7, 8):
        logger.log(step, {mean: 100.0 + step})
    logger.rewind(-1)
    logger.log(0, {mean: 50.0})
    logger.close()
    segments = wandb_segments(tmp_path)
    assert [s["id"] for s in segments[:2]] == [first_id, first_id]
    assert sorted(segments[0]["history"]) == list(range(0, 9))
    assert segments[1]["branch"] == (first_id, 6.0)
    assert {k: v[mean] for k, v in segments[1]["history"].items()} == {7: 107.0, 8: 108.0}
    assert segments[2]["id"] != first_id and segments[2]["branch"] is None
    assert {k: v[mean] for k, v in segments[2]["history"].items()} == {0: 50.0}
    assert (tmp_path / "wandb_id.txt").read_text() == segments[2]["id"]


def test_a_refused_wandb_rewind_resumes_forward_with_a_warning(tmp_path, monkeypatch,
                                                               caplog):
    """A W&B server without run rewind (a preview feature) refuses resume_from. This
    machine has no W&B server, so the refusal is simulated: wandb.init raises when given
    resume_from. The run goes on, resumed forward under the same id, and says so."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    real = wandb.init

    def init(*args, **kwargs):
        if "resume_from" in kwargs:
            raise RuntimeError("rewind is not enabled for this entity")
        return real(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    mean = M.SCORE.name("mean")
    logger = MetricsLogger(tmp_path, {}, backends=["wandb"], project="refine-iqa-test")
    run_id = logger.wandb_run.id
    for step in range(0, 4):
        logger.log(step, {mean: float(step)})
    logger.rewind(1)
    logger.log(2, {mean: 20.0})
    logger.close()
    assert "wandb refused to rewind run" in caplog.text and "first copy" in caplog.text
    segments = wandb_segments(tmp_path)
    assert [s["id"] for s in segments] == [run_id, run_id] and segments[1]["branch"] is None


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
