"""driver.cadence (every N steps), driver.validation (its cadence, held-out subset, the best
checkpoint) and driver.rollout_log
(rows, cut back on resume, wandb Table offline). The validation numbers themselves come
from the evals code (tests/test_evals_e2e.py) and a real run (tests/test_recipe_e2e.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from conf import load_config
from driver import metrics as M
from driver.cadence import due
from driver.rollout_log import RolloutLog, rollout_records
from driver.validation import BestCheckpoint, Validator, held_out_subset


def test_held_out_subset_is_fixed_by_the_seed():
    samples = [{"id": str(i)} for i in range(50)]
    a = held_out_subset(samples, 10, seed=3)
    assert len(a) == 10 and a == held_out_subset(samples, 10, seed=3)
    assert a != held_out_subset(samples, 10, seed=4)
    assert [s["id"] for s in a] == sorted((s["id"] for s in a), key=int)   # data order kept
    assert held_out_subset(samples, None, 3) == samples
    assert held_out_subset(samples, 80, 3) == samples


def test_every_n_steps_is_one_rule():
    # Worked by hand: multiples of `every` from 1 on, plus the steps always asked for.
    assert [s for s in range(0, 31) if due(s, 10, always=(0, 30))] == [0, 10, 20, 30]
    assert [s for s in range(0, 26) if due(s, 10, always=(0, 25))] == [0, 10, 20, 25]
    assert [s for s in range(0, 31) if due(s, 0, always=(30,))] == [30]   # 0: only those
    assert [s for s in range(1, 13) if due(s, 5, always=(1,))] == [1, 5, 10]
    # checkpoints: every 10 and the last step; checkpoint.every=0 saves only the last
    assert [s for s in range(1, 31) if due(s, 10, always=(30,))] == [10, 20, 30]
    assert due(7, 0, always=(7,)) and not due(6, 0, always=(7,))
    assert not any(due(s, 0) for s in range(0, 31))


def _validator(every: int, samples: list[dict]) -> Validator:
    # No actor is needed to build one: it wraps the engines it is handed.
    cfg = load_config("tiny", [f"eval.every={every}"])
    return Validator(cfg, engines=None, scorer=None, sync=None, samples=samples)


def test_validation_is_due_before_the_first_every_n_and_after_the_last():
    v = _validator(10, [{"id": "x"}])
    assert [s for s in range(0, 31) if v.due(s, 30)] == [0, 10, 20, 30]
    assert [s for s in range(0, 26) if v.due(s, 25)] == [0, 10, 20, 25]
    assert [s for s in range(0, 31) if _validator(0, [{"id": "x"}]).due(s, 30)] == [0, 30]
    assert not any(_validator(10, []).due(s, 30) for s in range(31))


class FakeLearners:
    """Stands in for LearnerGroup.export_hf (the real export is in the DeepSpeed tests):
    writes a marker with the meta, as learner.checkpoint.finalize does."""

    def __init__(self):
        self.exports = []

    def export_hf(self, out_dir, meta=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "COMPLETE").write_text(json.dumps({"export": True, **meta}))
        self.exports.append(meta["step"])
        return out_dir


def test_best_checkpoint_keeps_the_best_step_and_survives_a_restart(tmp_path):
    learners = FakeLearners()
    best = BestCheckpoint(tmp_path, M.VAL_SCORING[("think", "srcc")])
    for step, value in [(0, 0.1), (10, 0.5), (20, 0.3), (30, float("nan")), (40, 0.5)]:
        best.update(step, {best.metric: value}, learners)
    assert learners.exports == [0, 10]   # 0.3, NaN and a tie do not replace step 10
    assert (best.step, best.value) == (10, 0.5)
    again = BestCheckpoint(tmp_path, best.metric)        # a resumed run reads it back
    assert (again.step, again.value) == (10, 0.5)
    assert not again.update(50, {best.metric: 0.45}, learners)
    other = BestCheckpoint(tmp_path, M.VAL_ACC_MEAN)     # another metric starts afresh
    assert other.step is None and other.update(1, {M.VAL_ACC_MEAN: 0.2}, learners)


def _experience():
    texts = [["[think]a[/think][answer]Score:3.1[/answer]", "x"], ["y", "z"]]
    return SimpleNamespace(texts=texts, per_rollout={
        "format": np.array([[1.0, 0.0], [0.0, 0.0]]), "pd": np.array([[0.2, np.nan], [0, 0]]),
        "advantage": np.array([[1.5, -0.5], [0.0, 0.0]])})


SAMPLES = [{"id": "a", "images": ["/r/a.png", "/d/a.png"], "mos": 3.0},
           {"id": "b", "images": ["/d/b.png"], "mos": 1.0}]


def test_rollout_rows_hold_text_rewards_and_advantage():
    rows = rollout_records(7, "think", SAMPLES, _experience(), groups=1)
    assert [(r["sample_id"], r["rollout"]) for r in rows] == [("a", 0), ("a", 1)]
    assert rows[0]["image"] == "/d/a.png" and rows[0]["gt_mos"] == 3.0   # the judged image
    assert rows[0]["text"].startswith("[think]a") and rows[0]["advantage"] == 1.5
    assert rows[1]["pd"] is None                                          # NaN: not scored
    assert json.loads(json.dumps(rows)) == rows


def test_rollout_log_cuts_back_on_resume_and_feeds_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb

    run = wandb.init(project="refine-iqa-test", dir=str(tmp_path))
    log = RolloutLog(tmp_path, groups_per_step=2, wandb_run=lambda: run)
    for step in (1, 2, 3):
        assert log.log(step, "think", SAMPLES, _experience()) == 4
        run.log({M.SCORE.name("mean"): 0.5}, step=step)   # the metrics commit the step
    table = dict(run.summary).get("rollouts/samples")
    run.finish()
    assert table is not None and table["nrows"] == 4
    resumed = RolloutLog(tmp_path, groups_per_step=2)
    resumed.rewind(2)
    steps = [json.loads(x)["step"] for x in resumed.path.read_text().splitlines()]
    assert steps == [1] * 4 + [2] * 4
    assert not (tmp_path / "rollouts.jsonl.tmp").exists()
    # No groups asked for: nothing written.
    assert RolloutLog(tmp_path, 0).log(4, "think", SAMPLES, _experience()) == 0
    assert len(resumed.path.read_text().splitlines()) == 8
