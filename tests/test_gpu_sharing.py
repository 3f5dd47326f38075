"""placement.colocate: rollout and training on the same GPUs.

The layout (one bundle per learner rank, the vLLM actors beside the ranks, a share of each
GPU) and its refusals are worked by hand from conf; the order of sleep, update, wake and
push on real vLLM engines is in tests/test_rollout_engine.py; here a whole colocated
Stage-1 run goes through it on CPU, with the real engine, learner and Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.resources import PlacementError, check_fits, layout, requested
from conf import load_config
from conf.loader import ConfigError
from tests.conftest import REPO, TEST_CACHE


def test_colocated_layout_by_hand():
    # conf tiny: learners 0.5 CPU each, one engine 0.5 CPU, a scorer 0.25 CPU, no GPUs.
    # With two ranks: bundle 0 = rank 0 + the engine (0.5 + 0.5), bundle 1 = rank 1 + the
    # scorer (0.5 + 0.25).
    cfg = load_config("tiny", ["placement.colocate=true", "learner.num_learners=2"])
    learners, rollout = layout(cfg)
    assert (learners.strategy, learners.shares, learners.slots) == (
        "PACK", [{"CPU": 1.0, "GPU": 0.0}, {"CPU": 0.75, "GPU": 0.0}], [0, 1])
    assert (rollout.group, rollout.shares, rollout.slots, rollout.scorer_slot) == (
        "learners", [], [0], 1)
    assert learners.gpu_share == rollout.gpu_share == 0.0   # no GPU: Ray asks for none
    assert requested(cfg) == {"CPU": 1.75, "GPU": 0.0}
    # On GPUs: one GPU per bundle, every actor asks half of it.
    gpus = load_config("tiny", ["placement.colocate=true", "learner.num_learners=2",
                                "learner.num_gpus=1", "rollout.num_gpus_per_engine=1",
                                "scoring.num_gpus=1"])
    learners, rollout = layout(gpus)
    assert [b["GPU"] for b in learners.bundles] == [1.0, 1.0]
    assert learners.gpu_share == rollout.gpu_share == 0.5
    assert requested(gpus)["GPU"] == 2.0   # against 3 for the same roles apart
    # Packed, both bundles fit one node with two GPUs; spread apart they would not.
    check_fits(layout(gpus), [{"CPU": 2.0, "GPU": 2.0}])
    with pytest.raises(PlacementError):
        check_fits(layout(load_config("tiny", [
            "learner.num_learners=2", "learner.num_gpus=1", "rollout.num_gpus_per_engine=1",
            "scoring.num_gpus=1"])), [{"CPU": 2.0, "GPU": 2.0}])
    # Evaluations start no learners: nothing to share, the usual layout.
    assert [r.name for r in layout(cfg, learners=False)] == ["rollout"]
    assert layout(cfg, learners=False)[0].group == ""


@pytest.mark.parametrize("overrides, says", [
    ([], "2 vLLM actors (rollout.num_engines + the scoring actor) need as many learner"),
    (["learner.num_learners=2", "learner.num_gpus=1"], "every role takes 1 GPU or none"),
    (["learner.num_learners=2", "rollout.tensor_parallel_size=2"], "tensor_parallel_size"),
    (["learner.num_learners=2", "placement.learner_nodes=2"], "must stay 1"),
    (["learner.num_learners=2", "learner.num_gpus=1", "rollout.num_gpus_per_engine=1",
      "scoring.num_gpus=1", "rollout.gpu_memory_utilization=0.85"], "at most 0.7"),
    (["learner.num_learners=2", "learner.num_gpus=1", "rollout.num_gpus_per_engine=1",
      "scoring.num_gpus=1", "weights.transport=collective"], "NCCL refuses two ranks"),
])
def test_what_cannot_be_colocated_is_refused_with_the_keys(overrides, says):
    cfg = load_config("tiny", ["placement.colocate=true", *overrides])
    with pytest.raises(PlacementError, match="placement.colocate=true cannot share") as refused:
        layout(cfg)
    assert says in str(refused.value)


def test_colocated_memory_by_hand():
    from cluster.memory import GIB, estimate

    # 1e9 parameters, Stage-2 (bf16, 4 ranks, ZeRO-3 with offload): a rank keeps its
    # gradient shard 2e9 / 4 bytes on the GPU (the rest is on the host and stays there);
    # the woken vLLM weights add 2e9 at the push.
    cfg = load_config("stage2", ["placement.colocate=true"])
    gpu = {m.role: m for m in estimate(cfg, 10**9)}["colocated GPU"]
    assert (gpu.count, gpu.gpu_gib) == (4, pytest.approx(2.5e9 / GIB))
    assert "0.85 of the GPU + 0.5 GiB" in gpu.note   # 0.5e9 bytes = 0.47 GiB, shown 0.5
    # Without offload DeepSpeed moves the rank's states out while vLLM generates: 0 stay;
    # at the push the whole rank is back: 0.5 + 0.5 + 3 (1e9 units) + 2 of vLLM weights.
    kept = load_config("stage2", ["placement.colocate=true", "learner.offload=false"])
    gpu = {m.role: m for m in estimate(kept, 10**9)}["colocated GPU"]
    assert gpu.gpu_gib == pytest.approx(6e9 / GIB) and "GPU + 0.0 GiB" in gpu.note
    assert "colocated GPU" not in {m.role for m in estimate(load_config("stage2"), 10**9)}


def test_nccl_never_puts_two_members_of_the_weights_group_on_one_gpu():
    from weight_sync.transport import collective_backend

    whole = ["weights.transport=collective", "learner.num_gpus=1",
             "rollout.num_gpus_per_engine=1", "scoring.num_gpus=1"]
    assert collective_backend(load_config("tiny", whole)) == "nccl"
    # A fraction may share its GPU with another member: auto falls back to gloo ...
    half = [*whole, "scoring.num_gpus=0.5"]
    assert collective_backend(load_config("tiny", half)) == "gloo"
    # ... and an explicit nccl is refused before the run, naming the key.
    with pytest.raises(ConfigError, match="scoring.num_gpus=0.5"):
        load_config("tiny", [*half, "weights.backend=nccl"])
    # Stage-1 starts no scorer: its GPUs do not count.
    assert collective_backend(load_config("tiny_stage1", half)) == "nccl"


def test_async_rollout_and_colocation_exclude_each_other():
    with pytest.raises(ConfigError, match="set one of them to false"):
        load_config("tiny", ["placement.colocate=true", "train.async_rollout=true",
                             "learner.recompute_old_logprobs=false"])


@pytest.mark.slow
def test_a_colocated_stage1_run_on_cpu(tmp_path):
    """Two steps, a checkpoint and the export through driver.gpu_sharing's order with the
    real engine, learner and Ray; the plan of --dry-run shows the shared bundle."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [sys.executable, "launch.py", "conf=tiny_stage1", "placement.colocate=true",
            "train.max_steps=2", "checkpoint.every=2", "eval.max_samples=2",
            f"run.output_dir={tmp_path}", "run.name=run", f"model.cache_dir={TEST_CACHE}",
            "ray.dashboard=false"]
    plan = subprocess.run([*args, "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "role learners: 1 bundle(s)" in plan.stdout
    assert "role rollout: beside the learners; engine i in bundle [0]" in plan.stdout
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    # vLLM's CPU worker says so when it is asked to sleep: the run did put it to sleep.
    assert "sleep mode is not supported on CPU" in run.stdout + run.stderr
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    assert (tmp_path / "run" / "export" / "config.json").is_file()
