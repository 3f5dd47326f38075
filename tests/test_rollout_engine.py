"""RolloutEngine and EngineGroup on the tiny model: two real vLLM engines in Ray actors.

Checks the promises the learner relies on: rollouts in input order, prompt token ids equal
to the HF processor's (the same token sequence), old logprobs equal to transformers' own,
no image placeholder inside a completion, and, through WeightSync (the loop's own path), a
batch that survives an engine's death and a rollout from a restarted engine never used.
"""

from __future__ import annotations

import math

import pytest
import torch

from actors.engine_group import EngineGroup, split_evenly
from actors.rollout_engine import strip_tokens
from conf.prompts import stage1_choice_prompt, stage1_grounding_prompt
from driver.gpu_sharing import GpuSharing
from model_inputs.prompting import PromptBuilder
from tests.conftest import restart_actor
from weight_sync.sync import WeightSync

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

MAX_NEW = 24
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": MAX_NEW}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def group(ray_cluster, tiny_engine_settings):
    engines = EngineGroup(tiny_engine_settings, num_engines=2, num_cpus=1, max_restarts=2,
                          sync=WeightSync())
    yield engines
    engines.shutdown()


@pytest.fixture(scope="module")
def builder(model_dir):
    return PromptBuilder(model_dir, 56 * 56, 224 * 224)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """No-reference scores, a full-reference choice (reference first) and a grounding."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("img")
    paths = {}
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        paths[name] = str(folder / f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(paths[name])
    return [
        {"id": "s-chelsea", "task": "score", "question": None, "images": [paths["chelsea"]]},
        {"id": "c-fr", "task": "choice", "question": stage1_choice_prompt(["cup"], True),
         "images": [paths["coffee"], paths["astronaut"]]},
        {"id": "g-rocket", "task": "grounding", "question": stage1_grounding_prompt(False),
         "images": [paths["rocket"]]},
        {"id": "s-coffee", "task": "score", "question": None, "images": [paths["coffee"]]},
    ]


def test_split_evenly():
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(1, 3) == [(0, 1)]           # empty chunks are dropped
    assert split_evenly(6, 3) == [(0, 2), (2, 4), (4, 6)]
    with pytest.raises(ValueError):
        split_evenly(3, 0)


def test_engine_warnings_pass_once_per_kind():
    import io
    import logging

    from actors.engine_host import warn_once_per_kind

    stream = io.StringIO()
    logger = logging.getLogger("refine-iqa-test-once")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))
    warn_once_per_kind(logger.name)
    warn_once_per_kind(logger.name)   # installed once however often it is called
    for n in (2, 3, 4):   # the same template with other arguments is the same kind
        logger.warning("skip set_num_threads(%d)", n)
        logger.warning("other %s", "x")
    logger.error("an error is never dropped")
    logger.error("an error is never dropped")
    assert stream.getvalue().splitlines() == [
        "skip set_num_threads(2)", "other x", "an error is never dropped",
        "an error is never dropped"]


def test_strip_tokens():
    ids, logprobs = strip_tokens([5, 12, 7, 12], [-1.0, -2.0, -3.0, -4.0], {12})
    assert ids == [5, 7] and logprobs == [-1.0, -3.0]
    with pytest.raises(ValueError, match="logprobs"):
        strip_tokens([5], [], {12})


def test_actors_are_named_for_the_dashboard(group):
    assert [ray.get_actor(f"rollout-engine-{i}") for i in range(2)] == group.handles
    assert list(group.sync.receivers) == ["rollout-engine-0", "rollout-engine-1"]
    # CPU slots 0 and 1: each engine's threads on a core of its own.
    assert [info["cores"] for info in group.info] == [[0], [1]]


def test_rollouts_in_order_and_well_formed(group, builder, samples):
    results = group.generate(samples, "no_think", 4, SAMPLING)
    assert [r.sample_id for r in results] == [s["id"] for s in samples]
    for result in results:
        assert result.mode == "no_think" and result.weights_version == 0
        assert len(result.rollouts) == 4
        for rollout in result.rollouts:
            assert 0 < len(rollout.token_ids) <= MAX_NEW
            assert len(rollout.logprobs) == len(rollout.token_ids)
            assert all(math.isfinite(x) and x <= 0 for x in rollout.logprobs)
            assert rollout.finish_reason in ("stop", "length")
            if rollout.finish_reason == "length":
                assert len(rollout.token_ids) + rollout.stripped_tokens == MAX_NEW
            assert not builder.vision_token_ids & set(rollout.token_ids)
            assert rollout.text == builder.tokenizer.decode(rollout.token_ids,
                                                            skip_special_tokens=True)
    stripped = sum(r.stripped_tokens for res in results for r in res.rollouts)
    assert group.metrics["stripped_vision_tokens"] == stripped


def test_prompt_ids_equal_the_learners(group, builder, samples):
    # The "same token sequence" promise: vLLM's prompt (placeholders expanded by vLLM) is
    # what the HF processor gives the learner, one and two images, both modes.
    for mode in ("think", "no_think"):
        batch = [s for s in samples if s["task"] == "score" or mode == "no_think"]
        results = group.generate(batch, mode, 1, {**SAMPLING, "max_new_tokens": 2})
        for sample, result in zip(batch, results):
            assert result.prompt_token_ids == builder.learner_inputs(sample, mode)["prompt_ids"]


def test_sampled_logprobs_equal_transformers(group, builder, samples, model_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32).eval()
    sample = samples[1]   # two images
    (result,) = group.generate([sample], "no_think", 2, SAMPLING)
    inputs = builder.learner_inputs(sample, "no_think")
    for rollout in result.rollouts:
        if rollout.stripped_tokens:
            continue   # the sequence was edited; its logprobs no longer line up
        ids = inputs["prompt_ids"] + rollout.token_ids
        types = inputs["mm_token_type_ids"] + [0] * len(rollout.token_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), mm_token_type_ids=torch.tensor([types]),
                           attention_mask=torch.ones(1, len(ids)),
                           pixel_values=inputs["pixel_values"],
                           image_grid_thw=inputs["image_grid_thw"]).logits[0]
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        start = len(inputs["prompt_ids"])
        expected = [logprobs[i - 1, ids[i]].item() for i in range(start, len(ids))]
        assert max(abs(a - b) for a, b in zip(rollout.logprobs, expected)) < 1e-4


def test_seeded_sampling_repeats(group, samples):
    first = group.generate(samples[:2], "no_think", 3, {**SAMPLING, "seed": 11})
    second = group.generate(samples[:2], "no_think", 3, {**SAMPLING, "seed": 11})
    assert ([r.token_ids for p in first for r in p.rollouts]
            == [r.token_ids for p in second for r in p.rollouts])
    with pytest.raises(ValueError, match="unknown sampling keys"):
        group.generate(samples[:1], "think", 1, {"temperature": 1.0, "top_k": 5})


def scaled_weights(model_dir, factor):
    """The tiny model's state dict with every weight multiplied by `factor`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return {n: t.detach() * factor for n, t in model.state_dict().items()}


class StatePublisher:
    """Stands in for LearnerGroup.publish_weights (the DeepSpeed learners have their own
    tests): one bucket of a fixed state dict, put in the object store as rank 0 does."""

    def __init__(self, state):
        self.state = state

    def publish_weights(self):
        return [ray.put(self.state)], {"bytes": 1.0}


def test_publish_reaches_every_engine(group, model_dir):
    report = group.sync.publish(StatePublisher(scaled_weights(model_dir, 1.01)))
    assert report["unreachable"] == 0 and report["buckets"] == 1
    assert group.sync.version == 1 and group.versions() == [1, 1]


def test_batch_survives_an_engine_death(group, samples, model_dir):
    group.sync.publish(StatePublisher(scaled_weights(model_dir, 1.02)))
    assert group.versions() == [2, 2]
    old_pid = group.info[1]["pid"]
    counts = dict(group.sync.counts)
    batch = samples * 2
    pending = group.submit(batch, "no_think", 8, SAMPLING)
    ray.kill(group.handles[1], no_restart=False)   # Ray restarts it; its chunk is lost
    results = pending.result()
    assert [r.sample_id for r in results] == [s["id"] for s in batch]
    assert all(len(r.rollouts) == 8 for r in results)
    # The restarted engine came back with the model's files; WeightSync replayed version 2
    # from the driver's handles, and only then was its chunk redone.
    assert all(r.weights_version == 2 for r in results)
    assert group.metrics["resends"] >= 1
    assert group.sync.counts["restarts"] == counts["restarts"] + 1
    assert group.sync.counts["replays"] == counts["replays"] + 1
    new_pid = ray.get(group.handles[1].ready.remote())["pid"]
    assert new_pid != old_pid
    assert group.versions() == [2, 2]


def test_restart_between_calls_is_caught_by_the_version(group, samples):
    # Killed while idle: the next call reaches a restarted engine that answers with the
    # model's initial weights (version 0). Its rollouts are refused as stale, the weights
    # replayed and the chunk redone.
    restart_actor(group.handles[0])
    replays = group.sync.counts["replays"]
    results = group.generate(samples[:2], "no_think", 2, SAMPLING)
    assert all(r.weights_version == 2 for r in results)
    assert group.sync.counts["replays"] == replays + 1
    assert group.versions() == [2, 2]


class SharingLearners(StatePublisher):
    """Stands in for LearnerGroup under placement.colocate: publishes like rank 0 and
    notes when its states would move (learner.learner_actor has the real calls)."""

    def __init__(self, state):
        super().__init__(state)
        self.calls = []

    def reload_states(self):
        self.calls.append("reload_states")

    def offload_states(self):
        self.calls.append("offload_states")


def test_a_colocated_step_puts_the_real_engines_to_sleep_and_back(group, samples, model_dir):
    """driver.gpu_sharing's order on real vLLM engines. On CPU vLLM's sleep moves nothing
    but its state is real: both engines report asleep during the update, take the push
    after their weights are woken, are fully awake after, and generate with the new
    version."""
    learners = SharingLearners(scaled_weights(model_dir, 1.03))
    sharing = GpuSharing(True, group.handles)
    version = group.sync.version
    sharing.before_update(learners)
    assert [ray.get(h.is_sleeping.remote()) for h in group.handles] == [True, True]
    assert learners.calls == ["reload_states"]
    sharing.publish(group.sync, learners)
    assert [ray.get(h.is_sleeping.remote()) for h in group.handles] == [False, False]
    assert group.versions() == [version + 1] * 2
    assert learners.calls == ["reload_states", "offload_states"]
    assert list(sharing.events) == ["sleep", "reload_states", "wake_up:weights", "publish",
                              "offload_states", "wake_up:kv_cache"]
    results = group.generate(samples[:2], "no_think", 2, SAMPLING)
    assert all(r.weights_version == version + 1 for r in results)


def test_an_engine_without_a_gpu_hides_the_gpus():
    # Ray 2.60 no longer empties CUDA_VISIBLE_DEVICES for an actor that asks for no GPU;
    # a CPU engine on a GPU node would otherwise take its share of GPU 0.
    from dataclasses import replace

    from actors.engine_settings import engine_env, settings_from_config
    from conf import load_config

    cpu = settings_from_config(load_config("tiny"), "/m")
    assert engine_env(cpu, [0])["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in engine_env(replace(cpu, use_gpu=True), None)
