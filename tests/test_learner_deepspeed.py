"""The learner on real DeepSpeed (CPU, gloo) and Ray with the embedded tiny model.

Four learner runs, each started once per module and shared by the tests:
  ZeRO-2 with 1 and 2 ranks: seq_mean loss, vision tower frozen, no KL;
  ZeRO-3 with 1 and 2 ranks: token_mean loss (the paper), vision trainable, KL to the
  reference on (kl_coef 0.04), activation checkpointing on.
1-rank runs use micro-batches of 1 sequence, 2-rank runs micro-batches of 2 over 5
sequences (3 + 2: one rank runs a zero-weight filler), so the 1-vs-2 comparisons also
check that the update does not depend on how the batch is split.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.ds_config import lr_multiplier
from learner.experience import Completion, PromptGroup

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

LR = 2e-4   # small enough that step 3 still has unclipped tokens with an advantage
TOTAL_STEPS = 10
ADVANTAGES = [[1.5, 0.0, -0.5], [1.0, -0.3]]  # Eq. 6-like: positive, zero, shifted negative
IMAGE_SIZES = [(56, 56), (84, 112)]
# float32 on CPU; DeepSpeed's flat buffers and a padded batch change summation order only.
LOGPROB_ATOL = 2e-5


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return str(tiny_model_dir)


def reference_logprobs(model, data) -> list[list[list[float]]]:
    """Plain transformers, one unpadded sequence at a time: the independent computation."""
    out = []
    for item in data:
        per_group = []
        for comp in item["group"].completions:
            prompt = item["group"].prompt_ids
            ids = torch.tensor([prompt + comp.completion_ids])
            mm = torch.cat([item["prompt_mm_types"], torch.zeros(len(comp.completion_ids))])
            with torch.no_grad():
                logits = model(
                    input_ids=ids, attention_mask=torch.ones_like(ids),
                    mm_token_type_ids=mm.long().unsqueeze(0),
                    pixel_values=item["pixel_values"],
                    image_grid_thw=item["image_grid_thw"],
                ).logits[0]
            logp = torch.log_softmax(logits.double(), dim=-1)
            positions = range(len(prompt) - 1, len(prompt) - 1 + len(comp.completion_ids))
            per_group.append([float(logp[p, t]) for p, t in zip(positions, comp.completion_ids)])
        out.append(per_group)
    return out


@pytest.fixture(scope="module")
def experience(model_dir, tmp_path_factory):
    """Two prompts with images on disk (3 and 2 rollouts), old logprobs from plain
    transformers. The groups carry the samples (image paths) and the prompt ids, as the
    driver sends them; the learners build the image inputs themselves."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from conf import load_config
    from model_inputs.prompting import PromptBuilder

    tiny = load_config("tiny")
    builder = PromptBuilder(model_dir, tiny.model.min_pixels, tiny.model.max_pixels)
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    data = []
    for k, ((h, w), advantages) in enumerate(zip(IMAGE_SIZES, ADVANTAGES)):
        path = folder / f"{k}.png"
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(path)
        sample = {"id": f"img{k}", "task": "score", "question": None, "images": [str(path)]}
        inputs = builder.learner_inputs(sample, "no_think")
        completions = []
        for adv in advantages:
            ids = rng.randint(20, 500, size=int(rng.randint(4, 10))).tolist()
            completions.append(Completion(ids, [0.0] * len(ids), adv))
        group = PromptGroup(sample, "no_think", inputs["prompt_ids"], completions)
        data.append({"group": group, "pixel_values": inputs["pixel_values"],
                     "image_grid_thw": inputs["image_grid_thw"],
                     "prompt_mm_types": torch.tensor(inputs["mm_token_type_ids"]).float()})
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    old = reference_logprobs(model, data)
    for item, group_logprobs in zip(data, old):
        for comp, logprobs in zip(item["group"].completions, group_logprobs):
            comp.old_logprobs = logprobs
    return data


def _config(stage: int, world: int, weights_mb: int = 1):
    from conf import load_config

    overrides = [
        f"learner.zero_stage={stage}", f"learner.num_learners={world}", "learner.num_cpus=1",
        f"train.lr={LR}", f"train.micro_batch_size={1 if world == 1 else 2}",
        f"weights.bucket_mb={weights_mb}", "checkpoint.keep_last=1",
    ]
    if stage == 2:
        overrides += ["train.loss_agg=seq_mean", "model.freeze_vision=true"]
    else:
        overrides += ["train.kl_coef=0.04", "learner.activation_checkpointing=true",
                      "model.freeze_vision=false"]   # conf=tiny freezes its eye
    return load_config("tiny", overrides)


@pytest.fixture(scope="module")
def receiver(ray_cluster, model_dir):
    """A stand-in rollout engine: loads pushed buckets into a transformers model (strict)."""

    class StateDictReceiver:  # defined here so Ray ships it by value
        def __init__(self, path):
            from transformers import AutoModelForImageTextToText

            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
            self.version, self.num_buckets = None, 0

        def update_weights(self, version, handles):
            state = {name: t for handle in handles for name, t in ray.get(handle).items()}
            self.model.load_state_dict(state, strict=True)
            self.version, self.num_buckets = version, len(handles)

        def loaded(self):
            return self.version, self.num_buckets, self.model.state_dict()

    return ray.remote(num_cpus=0.5)(StateDictReceiver).remote(str(model_dir))


def _export_logprobs(export_dir, experience):
    """Load an export with plain transformers (model and processor) and score the batch."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(export_dir)
    assert processor.tokenizer("Score: 3.7")["input_ids"]  # the tokenizer files came along
    model = AutoModelForImageTextToText.from_pretrained(export_dir, dtype=torch.float32)
    return reference_logprobs(model, experience)


RUNS: dict = {}
TRAINER_STATE = {"step": 1, "data_position": 5, "rng": [1, 2, 3]}


@pytest.fixture(scope="module")
def run(ray_cluster, model_dir, experience, receiver, tmp_path_factory):
    """run(stage, world) -> the record of that learner run (computed once).

    Every run: logprobs before training, step 1, full weights and logprobs after it, a
    weight push to the stand-in receiver, a checkpoint, steps 2 and 3. Then the (3, 2) run
    resumes in place from the checkpoint and repeats steps 2 and 3; the (2, 1) run does
    the same in a fresh learner group (new processes)."""
    from learner.group import LearnerGroup
    from weight_sync.sync import WeightSync

    groups = [item["group"] for item in experience]

    def new_group(stage, world, suffix=""):
        return LearnerGroup(_config(stage, world), total_steps=TOTAL_STEPS, model_path=model_dir,
                            name_prefix=f"learner-z{stage}w{world}{suffix}")

    def get(stage: int, world: int) -> dict:
        if (stage, world) in RUNS:
            return RUNS[(stage, world)]
        rec: dict = {"run_dir": tmp_path_factory.mktemp(f"run-z{stage}w{world}")}
        group = new_group(stage, world)
        rec["setup"] = group.setup_info
        try:
            rec["logprobs0"] = group.compute_logprobs(groups)
            rec["stats"] = [group.step(groups)]
            rec["state1"] = group.full_state_dict()
            rec["logprobs1"] = group.compute_logprobs(groups)
            sync = WeightSync()   # the loop's path: learners -> WeightSync -> receivers
            sync.register("receiver", receiver)
            rec["push"] = sync.publish(group)
            rec["received"] = ray.get(receiver.loaded.remote())
            rec["checkpoint"] = group.save_checkpoint(rec["run_dir"], 1, TRAINER_STATE)
            rec["export_logprobs"] = _export_logprobs(rec["checkpoint"] / "hf", experience)
            rec["stats"] += [group.step(groups), group.step(groups)]
            if (stage, world) == (3, 2):
                rec["loaded_state"] = group.load_checkpoint(rec["run_dir"])
                rec["resumed"] = [group.step(groups), group.step(groups)]
                rec["later_checkpoint"] = group.save_checkpoint(rec["run_dir"], 3, {"step": 3})
        finally:
            group.shutdown()
        if (stage, world) == (2, 1):
            fresh = new_group(stage, world, "-resumed")
            try:
                rec["loaded_state"] = fresh.load_checkpoint(rec["run_dir"])
                rec["resumed"] = [fresh.step(groups), fresh.step(groups)]
            finally:
                fresh.shutdown()
        RUNS[(stage, world)] = rec
        return rec

    return get


COMBOS = [(2, 1), (2, 2), (3, 1), (3, 2)]


@pytest.mark.parametrize("stage, world", COMBOS)
def test_learner_logprobs_match_plain_transformers(run, experience, stage, world):
    # The old logprobs of the fixture are plain transformers' values on the same weights.
    rec = run(stage, world)
    for item, group_lp in zip(experience, rec["logprobs0"]):
        for comp, logprobs in zip(item["group"].completions, group_lp):
            np.testing.assert_allclose(logprobs, comp.old_logprobs, atol=LOGPROB_ATOL, rtol=0)


@pytest.mark.parametrize("stage, world", COMBOS)
def test_first_step_is_on_policy_and_loss_falls(run, stage, world):
    stats = run(stage, world)["stats"]
    # Step 1 uses the weights the old logprobs came from: rho = 1, nothing clipped.
    assert stats[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert stats[0]["clip_frac"] == 0.0
    assert stats[0]["approx_kl"] < 1e-8
    losses = [s["loss"] for s in stats]
    assert losses[0] > losses[1] > losses[2], losses
    assert all(math.isfinite(s["grad_norm"]) and s["grad_norm"] > 0 for s in stats), stats
    # lr follows warm-up (1 step: ceil(0.03 * 10)) then cosine over the remaining 9.
    for i, s in enumerate(stats):
        assert s["lr"] == pytest.approx(LR * lr_multiplier(i, TOTAL_STEPS, 1), rel=1e-9)
    if stage == 3:  # KL to the reference: 0 before the first update, positive after
        assert stats[0]["kl_ref"] == pytest.approx(0.0, abs=1e-7)
        assert stats[1]["kl_ref"] > 0


@pytest.mark.parametrize("stage", [2, 3])
def test_one_and_two_ranks_give_the_same_update(run, stage):
    one, two = run(stage, 1), run(stage, 2)
    for a, b in zip(one["stats"], two["stats"]):
        for key in ("loss", "pg_loss", "clip_frac", "approx_kl", "entropy", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        assert a["num_tokens"] == b["num_tokens"]
    assert one["state1"].keys() == two["state1"].keys()
    for name, tensor in one["state1"].items():
        torch.testing.assert_close(tensor, two["state1"][name], rtol=0, atol=1e-5)
    for lp_one, lp_two in zip(one["logprobs1"], two["logprobs1"]):
        for x, y in zip(lp_one, lp_two):
            np.testing.assert_allclose(x, y, atol=LOGPROB_ATOL, rtol=0)


def test_a_rank_without_a_gpu_hides_the_gpus_and_its_threads_follow_its_cpus(run):
    # learner.num_gpus=0: each rank empties CUDA_VISIBLE_DEVICES before torch or DeepSpeed
    # look for CUDA (Ray 2.60 leaves it unset for an actor that asks for no GPU, and on a
    # GPU node the rank would then take GPU 0). learner.num_cpus=1: Ray sets
    # OMP_NUM_THREADS=1, and torch uses that many threads.
    for info in run(2, 2)["setup"]:
        assert (info["visible_gpus"], info["accelerator"], info["threads"]) == ("", "cpu", 1)


def test_vision_tower_trains_by_default_and_freezes_on_request(run, model_dir):
    from transformers import AutoModelForImageTextToText

    initial = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    initial = initial.state_dict()
    for stage, frozen in ((2, True), (3, False)):
        state = run(stage, 1)["state1"]
        visual = [n for n in state if n.startswith("model.visual.")]
        changed = [n for n in visual if not torch.equal(state[n], initial[n])]
        assert (not changed) if frozen else len(changed) == len(visual), (stage, changed[:3])
        assert not torch.equal(state["lm_head.weight"], initial["lm_head.weight"])


@pytest.mark.parametrize("stage, world", COMBOS)
def test_weight_push_reaches_a_receiver_in_buckets(run, stage, world):
    rec = run(stage, world)
    version, num_buckets, received = rec["received"]
    assert version == 1 and rec["push"]["unreachable"] == 0
    # 2.9 MB of float32 weights in 1 MB buckets: several tensors per bucket, >= 3 buckets.
    assert num_buckets == rec["push"]["buckets"] >= 3
    assert num_buckets < len(received) / 4
    assert rec["push"]["bytes"] == sum(t.numel() * 4 for t in received.values())
    for name, tensor in rec["state1"].items():
        assert torch.equal(received[name], tensor), name


@pytest.mark.parametrize("stage, world", [(2, 1), (3, 2)])
def test_checkpoint_resume_gives_the_same_next_steps(run, stage, world):
    rec = run(stage, world)
    assert rec["loaded_state"] == TRAINER_STATE
    for uninterrupted, resumed in zip(rec["stats"][1:], rec["resumed"]):
        for key in ("loss", "grad_norm", "lr", "global_step", "clip_frac"):
            assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-6, abs=1e-9), key


def test_checkpoints_are_complete_and_pruned(run):
    from learner.checkpoint import COMPLETE, list_complete

    rec = run(3, 2)
    later = rec["later_checkpoint"]
    assert (later / COMPLETE).is_file() and (later / "trainer_state.json").is_file()
    # keep_last=1: the step-1 checkpoint made way for step 3; no temporary folder is left.
    assert [step for step, _ in list_complete(rec["run_dir"] / "checkpoints")] == [3]
    assert not any(p.name.startswith(".tmp") for p in (rec["run_dir"] / "checkpoints").iterdir())


@pytest.mark.parametrize("stage, world", COMBOS)
def test_hf_export_loads_in_transformers_with_the_learners_logprobs(run, stage, world):
    rec = run(stage, world)
    for x_group, y_group in zip(rec["export_logprobs"], rec["logprobs1"]):
        for x, y in zip(x_group, y_group):
            np.testing.assert_allclose(x, y, atol=LOGPROB_ATOL, rtol=0)


def test_unschedulable_learners_fail_with_a_message(ray_cluster, model_dir):
    from conf import load_config
    from learner.group import LearnerGroup

    # The local Ray session has no GPU: a learner asking for one can never start.
    cfg = load_config("tiny", ["learner.num_gpus=1"])
    with pytest.raises(RuntimeError, match="could not start.*num_gpus=1"):
        LearnerGroup(cfg, total_steps=1, model_path=model_dir, name_prefix="learner-gpu",
                     schedule_timeout_s=3)


def test_a_failed_collective_send_leaves_no_rank_in_a_gather(ray_cluster, model_dir):
    """ZeRO-3 over two ranks, collective transport, a receiver that dies after the first
    bucket: rank 0's send fails. Before, rank 0 left publish_weights there while rank 1
    went on to the next bucket's gather and waited in it for rank 0 (until the learners'
    collective timeout, 30 min): the group could neither push again nor train. Now rank 0
    takes part in the remaining gathers, both ranks return, and the next push (the one
    WeightSync makes after a receiver's death) goes through."""
    from conf import load_config
    from learner.group import LearnerGroup

    class Quitter:  # defined here so Ray ships it by value
        """A collective-transport receiver that dies once it holds the first bucket (its
        sockets close under the sender), or, with `take_all`, takes the whole push."""

        def take(self, push: dict, take_all: bool = False) -> int:
            import os

            from weight_sync.transport import CollectiveTransport

            count = 0
            for _ in CollectiveTransport().stream(push):
                count += 1
                if not take_all:
                    os._exit(1)
            return count

    overrides = ["learner.zero_stage=3", "learner.num_learners=2", "learner.num_cpus=1",
                 "weights.bucket_mb=1", "weights.transport=collective", "weights.timeout_s=120"]
    group = LearnerGroup(load_config("tiny", overrides), total_steps=TOTAL_STEPS,
                         model_path=model_dir, name_prefix="learner-quit")
    receiver = ray.remote(Quitter).options(num_cpus=0.1, max_restarts=0)
    try:
        push, sending = group.start_push(1)
        quitter = receiver.remote()
        died = quitter.take.remote({**push, "rank": 1})
        done, pending = ray.wait(sending, num_returns=2, timeout=120)
        assert not pending, "a rank is still in publish_weights (waiting in a gather)"
        with pytest.raises(ray.exceptions.RayTaskError):
            ray.get(sending[0])   # rank 0: its send failed
        assert ray.get(sending[1]) == ([], {})   # rank 1 finished its gathers
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(died)
        push, sending = group.start_push(1)
        taker = receiver.remote()
        got = taker.take.remote({**push, "rank": 1}, True)
        _, info = ray.get(sending, timeout=120)[0]
        assert ray.get(got, timeout=120) == info["buckets"] >= 3   # 2.9 MB in 1 MB buckets
    finally:
        group.shutdown()
