"""The driver's pure helpers: data stream, metrics sink (real wandb, offline), watches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from actors.cluster import ResourceError, check_resources, requested
from actors.data_stream import DataStream
from actors.experience_maker import group_stats
from actors.metrics_log import MetricsLogger, ThinkCollapseWatch, required_keys
from conf import load_config


def _samples(tmp_path, n, broken=()):
    out = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        if i in broken:
            path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        else:
            Image.new("RGB", (8, 8), (i, i, i)).save(path)
        out.append({"id": f"s{i}", "images": [str(path)]})
    return out


def test_stream_is_seeded_per_epoch_and_resumes_exactly(tmp_path):
    samples = _samples(tmp_path, 10)
    a = DataStream(samples, batch_size=3, seed=7)
    first = [[s["id"] for s in a.next_batch()[1]] for _ in range(5)]  # crosses an epoch
    # 10 samples, batches of 3: 3 per epoch, the tail of 1 dropped; batch 4 is epoch 1.
    assert a.epoch == 1 and a.steps_per_epoch == 3
    assert len({i for batch in first[:3] for i in batch}) == 9
    b = DataStream(samples, batch_size=3, seed=7)
    b.next_batch(), b.next_batch()
    state = json.loads(json.dumps(b.state()))      # survives the checkpoint's JSON
    c = DataStream(samples, batch_size=3, seed=7)
    c.load_state(state)
    assert [[s["id"] for s in c.next_batch()[1]] for _ in range(3)] == first[2:]
    other = DataStream(samples, batch_size=3, seed=8)
    assert [[s["id"] for s in other.next_batch()[1]] for _ in range(3)] != first[:3]
    with pytest.raises(ValueError, match="run.seed"):
        other.load_state(state)


def test_stream_skips_and_counts_unreadable_images(tmp_path):
    samples = _samples(tmp_path, 6, broken={1, 4})
    stream = DataStream(samples, batch_size=2, seed=0, shuffle=False)
    ids = [s["id"] for _ in range(2) for s in stream.next_batch()[1]]
    assert ids == ["s0", "s2", "s3", "s5"]
    assert set(stream.skipped) == {"s1", "s4"}
    all_broken = DataStream(_samples(tmp_path, 2, broken={0, 1}), batch_size=1, seed=0)
    with pytest.raises(ValueError, match="usable"):
        all_broken.next_batch()


def test_metrics_logger_writes_jsonl_and_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = MetricsLogger(tmp_path, {"a": 1}, use_wandb=True, project="refine-iqa-test")
    for step in (1, 2, 3):
        logger.log(step, {"reward/final_mean": step / 10, "actor/grad_norm": float("nan")})
    summary = dict(logger.wandb_run.summary)
    logger.close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["actor/grad_norm"] is None            # NaN is "not measured"
    assert summary["reward/final_mean"] == pytest.approx(0.3)  # wandb got the same keys
    # A resumed run (checkpoint at step 2) drops the lines it will redo.
    again = MetricsLogger(tmp_path, {}, use_wandb=False, project="x", resume_from_step=2)
    again.log(3, {"reward/final_mean": 0.5})
    again.close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["reward/final_mean"] == 0.5


def test_required_keys_differ_by_stage():
    assert "reward/pd_mean" in required_keys(2) and "reward/pd_mean" not in required_keys(1)
    assert "reward/iou_mean" in required_keys(1)


def test_think_collapse_watch_fires_once():
    watch = ThinkCollapseWatch(fraction=0.5, warmup=3)
    assert [watch.update(x) for x in (100, 110, 90)] == [None, None, None]  # early mean 100
    assert watch.update(60) is None
    assert "think collapse" in watch.update(40)
    assert watch.update(10) is None


def test_group_stats_on_hand_made_groups():
    final = np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    qualified = np.array([[False, False, False], [True, False, False]])
    stats = group_stats(final, qualified)
    assert stats == {"reward/group_all_tied_frac": 0.5, "reward/group_none_qualified_frac": 0.5}


def test_resource_check_names_the_keys():
    cfg = load_config("tiny")
    # tiny: 1 engine x 0.5 + 1 learner x 0.5 + scorer 0.25 CPUs.
    assert requested(cfg) == {"CPU": 1.25, "GPU": 0.0}
    check_resources(cfg, {"CPU": 2.0})
    with pytest.raises(ResourceError, match="rollout.num_engines"):
        check_resources(load_config("tiny", ["rollout.num_engines=8"]), {"CPU": 2.0})
    with pytest.raises(ResourceError, match="GPU"):
        check_resources(load_config("stage2"), {"CPU": 64.0})
