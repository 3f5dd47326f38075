"""weight_sync.receiver in a running vLLM engine: buckets from a transformers model in.

The consistency test RL systems live by: after an update, the engine's logprobs of a fixed
prompt + completion equal the transformers model's own (float32), and differ from before.
Bad pushes are refused without touching the engine. One in-process engine serves the
module (tests run in file order and build on each other's versions); one multiprocess
engine checks the other load path.
"""

from __future__ import annotations

import pytest
import torch

from actors.engine_host import wait_ready
from actors.rollout_engine import start_rollout_engine
from model_inputs.prompting import PromptBuilder
from weight_sync.receiver import (
    StaleWeightsError,
    WeightsLostError,
    WeightUpdateError,
    checked_buckets,
    weight_spec,
)
from weight_sync.transport import ObjectStoreTransport

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

ANSWER = "[think]The fur is sharp, the light soft.[/think][answer]Score:3.5[/answer]"
TOL = 1e-4  # float32 engine vs float32 transformers


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def settings(tiny_engine_settings):
    return tiny_engine_settings


@pytest.fixture(scope="module")
def engines(ray_cluster, settings):
    """An in-process engine (conf=tiny's mode) and a multiprocess one, started together."""
    from dataclasses import replace

    handles = [start_rollout_engine(settings, 0, num_cpus=1),
               start_rollout_engine(replace(settings, multiprocessing=True), 1, num_cpus=1)]
    wait_ready(handles, 600)
    yield handles
    for handle in handles:
        ray.kill(handle, no_restart=True)


@pytest.fixture(scope="module")
def engine(engines):
    return engines[0]


@pytest.fixture(scope="module")
def builder(model_dir):
    return PromptBuilder(model_dir, 56 * 56, 224 * 224)


@pytest.fixture(scope="module")
def case(builder, tmp_path_factory):
    """A fixed sample (a CC0 photo) and completion (token ids ending with <|im_end|>)."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    sample = {"id": "w", "task": "score", "question": None, "images": [str(path)]}
    completion = builder.encode(ANSWER) + [builder.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return sample, completion


def load_hf(model_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32).eval()


def hf_completion_logprobs(model, builder, sample, completion, mode="think"):
    """transformers' logprob of each completion token after the processor's prompt."""
    prepared = builder.prepare(sample, mode)
    enc = builder.processor(text=[prepared.text], images=prepared.images, return_tensors="pt")
    ids = enc["input_ids"][0].tolist() + completion
    types = enc["mm_token_type_ids"][0].tolist() + [0] * len(completion)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                       mm_token_type_ids=torch.tensor([types]),
                       pixel_values=enc["pixel_values"],
                       image_grid_thw=enc["image_grid_thw"]).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    start = len(ids) - len(completion)
    return [logprobs[i - 1, ids[i]].item() for i in range(start, len(ids))]


def perturbed(model, seed, scale=0.05, only=""):
    """`model` with seeded noise added to every weight whose name starts with `only`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(only):
                param.add_(scale * torch.randn(param.shape, generator=gen))
    return model


def buckets_of(state, bucket_bytes):
    """Greedy buckets of a state dict: a new bucket whenever the next tensor would overflow."""
    buckets, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = {}, 0
        current[name] = tensor.detach().clone()
        size += nbytes
    return buckets + [current]


def push(handle, version, state, bucket_bytes=256 * 1024):
    refs = [ray.put(b) for b in buckets_of(state, bucket_bytes)]
    return ray.get(handle.update_weights.remote(version, refs)), len(refs)


def engine_logprobs(handle, case, timeout_s: float = 300.0):
    # Bounded: an engine that hangs fails the test instead of stalling the suite.
    sample, completion = case
    return ray.get(handle.completion_logprobs.remote([sample], "think", [completion]),
                   timeout=timeout_s)[0]


def assert_close(actual, expected, tol=TOL):
    assert len(actual) == len(expected)
    worst = max(abs(a - b) for a, b in zip(actual, expected))
    assert worst < tol, f"largest logprob difference {worst:.2e}"


def test_weight_spec_matches_the_learners_state_dict(model_dir):
    # Built on the meta device from the config alone, the spec names and shapes every
    # tensor of a transformers model loaded from the files (what the learner sends).
    from safetensors import safe_open

    spec = weight_spec(model_dir)
    loaded = {n: tuple(t.shape) for n, t in load_hf(model_dir).state_dict().items()}
    assert dict(spec.shapes) == loaded and not spec.optional
    assert any(n.startswith("model.visual.") for n in loaded)
    assert any(n.startswith("model.language_model.") for n in loaded)
    # The file keeps Qwen's older names (visual.*, model.layers.*); same tensors, same shapes.
    with safe_open(f"{model_dir}/model.safetensors", "pt") as f:
        names = list(f.keys())  # noqa: SIM118 (a safetensors handle, not a dict)
        on_disk = sorted(tuple(f.get_slice(n).get_shape()) for n in names)
    assert on_disk == sorted(loaded.values())


def test_initial_logprobs_equal_transformers(engine, builder, case, model_dir):
    expected = hf_completion_logprobs(load_hf(model_dir), builder, *case)
    assert_close(engine_logprobs(engine, case), expected)
    assert ray.get(engine.weights_version.remote()) == 0


def test_update_equals_transformers_and_changes_logprobs(engine, builder, case, model_dir):
    before = engine_logprobs(engine, case)
    model = perturbed(load_hf(model_dir), seed=1)
    report, sent = push(engine, 1, model.state_dict())
    # 2.95 MB of float32 weights in 256 KiB buckets: many tensors per message, many messages.
    assert report["version"] == 1 and report["buckets"] == sent > 1
    assert report["tensors"] == len(model.state_dict())
    after = engine_logprobs(engine, case)
    assert_close(after, hf_completion_logprobs(model, builder, *case))
    assert max(abs(a - b) for a, b in zip(after, before)) > 0.05


def test_vision_tower_is_loaded(engine, builder, case, model_dir):
    model = perturbed(perturbed(load_hf(model_dir), seed=1), seed=2, scale=0.2,
                      only="model.visual.")
    before = engine_logprobs(engine, case)
    push(engine, 2, model.state_dict())
    after = engine_logprobs(engine, case)
    # Only the vision tower changed; the completion reads the image, so its logprobs move,
    # and they move to exactly where transformers puts them.
    assert max(abs(a - b) for a, b in zip(after, before)) > 1e-3
    assert_close(after, hf_completion_logprobs(model, builder, *case))


def test_stale_or_repeated_versions_are_refused(engine, model_dir):
    state = load_hf(model_dir).state_dict()
    for version in (2, 1, 0):
        with pytest.raises(StaleWeightsError, match="already holds version 2"):
            push(engine, version, state)
    with pytest.raises(TypeError, match="must be an int"):
        push(engine, 2.5, state)
    assert ray.get(engine.weights_version.remote()) == 2


@pytest.mark.parametrize("damage, message", [
    ("shape", "has shape"), ("unknown", "does not have"), ("nan", "NaN"),
    ("missing", "lacks 1 tensors"), ("int", "floating point"),
])
def test_bad_push_leaves_the_engine_at_its_version(engine, case, model_dir, damage, message):
    before = engine_logprobs(engine, case)
    state = dict(perturbed(load_hf(model_dir), seed=3).state_dict())
    last = list(state)[-1]    # the damage sits in the last bucket: all others are fine
    if damage == "shape":
        state[last] = state[last][:-1]
    elif damage == "unknown":
        state["model.visual.extra_head.weight"] = torch.zeros(2)
    elif damage == "nan":
        state[last] = state[last].clone().index_fill_(0, torch.tensor([0]), float("nan"))
    elif damage == "missing":
        del state[last]
    elif damage == "int":
        state[last] = state[last].to(torch.int64)
    with pytest.raises(WeightUpdateError, match=message):
        push(engine, 3, state)
    assert ray.get(engine.weights_version.remote()) == 2
    assert engine_logprobs(engine, case) == before


def test_buckets_whose_owner_died_are_weights_lost(engine, model_dir):
    """The buckets of learner rank 0 live in the object store only while it does: a push
    of a dead rank's refs (a restarted engine replayed after the learners died) fails as
    WeightsLostError, which the driver answers by replacing the learners
    (weight_sync.sync.LearnersGone), and leaves the engine at its version."""
    import time

    @ray.remote(num_cpus=0)
    class Rank0:
        def put(self, buckets):
            return [ray.put(b) for b in buckets]

    owner = Rank0.remote()
    state = load_hf(model_dir).state_dict()
    refs = ray.get(owner.put.remote(buckets_of(state, 256 * 1024)))
    ray.kill(owner)
    # Ray frees an owner's objects a moment after its death (measured: still readable at
    # once, lost 1 s later): wait until the driver sees the first bucket lost.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(refs[0], timeout=10)
        except ray.exceptions.ObjectLostError:
            break
        time.sleep(0.2)
    with pytest.raises(WeightsLostError, match="OwnerDiedError"):
        ray.get(engine.update_weights.remote(3, refs))
    assert ray.get(engine.weights_version.remote()) == 2


def test_repeated_tensor_and_empty_push_are_refused(model_dir, engine):
    # The object-store transport needs Ray (started by the engine fixture).
    spec = weight_spec(model_dir)
    state = load_hf(model_dir).state_dict()
    name = next(iter(state))
    refs = [ray.put(dict(state)), ray.put({name: state[name]})]
    with pytest.raises(WeightUpdateError, match=f"{name} was already sent"):
        list(checked_buckets(ObjectStoreTransport().stream(refs), spec, {}))
    with pytest.raises(WeightUpdateError, match="at least one bucket"):
        list(checked_buckets(ObjectStoreTransport().stream([]), spec, {}))


def test_multiprocess_engine_loads_weights(engines, builder, case, model_dir):
    # vLLM's multiprocess mode (conf default on GPUs) carries buckets as safetensors bytes.
    handle = engines[1]
    model = perturbed(load_hf(model_dir), seed=4)
    report, _ = push(handle, 1, model.state_dict())
    assert report["version"] == 1
    assert_close(engine_logprobs(handle, case), hf_completion_logprobs(model, builder, *case))


def test_a_dead_engine_core_restarts_the_actor(engines, case):
    # Multiprocess mode runs vLLM's engine core in a child process of the actor. Killed,
    # the actor's next call meets vLLM's EngineDeadError; the actor then exits so that Ray
    # restarts it whole (the caller sees an actor death, which EngineGroup / WeightSync
    # recover from), and it comes back with the model's own weights (version 0).
    import os
    import signal
    import time

    import psutil

    handle = engines[1]
    actor_pid = ray.get(handle.ready.remote())["pid"]
    cores = psutil.Process(actor_pid).children(recursive=True)
    assert cores, "no engine core process under the actor"
    for core in cores:
        os.kill(core.pid, signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayActorError):
        engine_logprobs(handle, case)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            info = ray.get(handle.ready.remote(), timeout=60)
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            time.sleep(1.0)
    assert info["pid"] != actor_pid and info["version"] == 0
