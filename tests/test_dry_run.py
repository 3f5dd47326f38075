"""The checks a run makes before it starts an actor, and `launch.py --dry-run`.

Memory figures are worked by hand from the formulas of cluster/memory.py beside each
assertion; the prompt lengths' own check against the processor is in
tests/test_prompting.py, the data checks' in tests/test_driver_training_data.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster.memory import GIB, estimate, num_parameters
from conf import load_config
from tests.conftest import REPO


def test_memory_estimate_of_stage2_by_hand():
    # The ZeRO paper's accounting of model states (Rajbhandari et al. 2020, Sec. 3.1):
    # 2 bytes of bf16 parameters, 2 of gradients and K = 12 of fp32 AdamW state (master
    # weights, two moments) per parameter, each split over the N ranks by ZeRO-3. (DeepSpeed's
    # estimate_zero3_model_states_mem_needs adds buffers on top; this counts states only.)
    # 1e9 parameters, Stage-2 (bf16 everywhere, 4 ranks, ZeRO-3 with offload on GPUs):
    # a rank keeps its gradient shard 2e9/4 bytes on the GPU; the AdamW state 12e9/4 and
    # the parameter shard 2e9/4 live on the host. An engine holds the 2e9 bytes of weights;
    # the object store keeps two pushes of 2e9.
    by_role = {m.role: m for m in estimate(load_config("stage2"), 10**9)}
    rank = by_role["learner rank"]
    assert (rank.count, rank.gpu_gib, rank.host_gib) == (4, pytest.approx(0.5e9 / GIB),
                                                        pytest.approx(3.5e9 / GIB))
    assert by_role["rollout engine"].count == 3
    assert by_role["rollout engine"].gpu_gib == pytest.approx(2e9 / GIB)
    assert by_role["scoring actor"].count == 1
    assert by_role["object store, per node"].host_gib == pytest.approx(4e9 / GIB)
    # Without offload the state stays on the GPU: 0.5 + 0.5 + 3 (1e9 units) per rank.
    kept = {m.role: m for m in estimate(load_config("stage2", ["learner.offload=false"]),
                                        10**9)}["learner rank"]
    assert (kept.gpu_gib, kept.host_gib) == (pytest.approx(4e9 / GIB), 0.0)
    # Stage-1 starts no scorer; the collective transport keeps nothing in the object store.
    roles = {m.role for m in estimate(load_config("stage1", ["weights.transport=collective"]),
                                      10**9)}
    assert roles == {"rollout engine", "learner rank"}


def test_parameters_are_read_from_the_headers(tiny_model_dir):
    # Independent count: load every tensor and add up their sizes.
    from safetensors.torch import load_file

    files = sorted(tiny_model_dir.glob("*.safetensors"))
    expected = sum(t.numel() for f in files for t in load_file(str(f)).values())
    assert num_parameters(tiny_model_dir) == expected > 0
    assert num_parameters(tiny_model_dir / "no-such-dir") is None


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args, "ray.dashboard=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    proc = _launch("tiny", "--dry-run", f"run.output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    # The mini set's 13 training photos: 10 % carved for validation rounds to 1 photo.
    # 40 steps of 4 images: conf/tiny.yaml's max_steps and batch_size; 96 test images: two
    # photos x 4 crops x 13 versions - 4 x 2 saturation classes of the grey photo
    # (tests/test_mini_dataset.py).
    assert "# steps: 40, 4 images per step; usable samples: " in out
    assert "validation, 96 test (0, 0 and 0 would be skipped" in out
    assert "# role learners: 1 node(s)" in out and "# role rollout: 1 node(s)" in out
    assert "memory, ESTIMATED from" in out and "longest prompt:" in out
    assert "dry run: ready; no actor was started" in out
    assert not any(tmp_path.iterdir())   # the run directory is left alone


@pytest.mark.slow
def test_prompts_longer_than_the_context_are_refused_before_the_run(tmp_path):
    # 200 - 64 new tokens leaves 136 prompt tokens; the mini set's prompts take ~250: every
    # sample would be skipped, fewer than one step takes. The dry run names it beside the
    # cluster that is too small (1 CPU for 1.25 asked), one line each.
    proc = _launch("tiny", "--dry-run", "rollout.max_model_len=200", "ray.num_cpus=1",
                   f"run.output_dir={tmp_path}")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, proc.stderr[-2000:]
    assert "training samples are usable, fewer than one step takes" in errors[0]
    assert "more than the 136 that rollout.max_model_len leaves" in errors[0]
    assert "the Ray cluster has 1" in errors[1]
    # A run refuses with the same line, before any actor starts.
    proc = _launch("tiny", "rollout.max_model_len=200", f"run.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        errors[0]]
    assert "Traceback" not in proc.stderr and "RolloutEngine pid" not in proc.stderr


def test_lora_memory_estimate_by_hand():
    # 1e9 base parameters, a 1e7-parameter adapter, Stage-2 (bf16, 4 ranks, ZeRO-3 with
    # offload): a rank's GPU holds the adapter's gradient shard 2e7/4 bytes; the host the
    # AdamW state of the adapter 12e7/4 and the parameter shard (1e9 + 1e7) x 2 / 4; a push
    # is the adapter, 2e7 bytes, two kept.
    cfg = load_config("stage2", ["lora.rank=64"])
    by_role = {m.role: m for m in estimate(cfg, 10**9, 10**7)}
    rank = by_role["learner rank"]
    assert rank.gpu_gib == pytest.approx(0.5e7 / GIB)
    assert rank.host_gib == pytest.approx((3e7 + 1.01e9 * 2 / 4) / GIB)
    assert by_role["object store, per node"].host_gib == pytest.approx(4e7 / GIB)
    assert by_role["rollout engine"].gpu_gib == pytest.approx(2e9 / GIB)   # base weights
