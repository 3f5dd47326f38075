"""The learner and the rollout engines agree: the RL systems' consistency check.

Real vLLM engine, real DeepSpeed learner (ZeRO-2, one rank) on the tiny model:
1. the learner's logprobs of the engine's own rollouts equal the engine's sampled-token
   logprobs (float32: within 1e-4), so "old logprobs from the engines" is sound;
2. after one update and a WeightSync publish, the engine's teacher-forced logprobs equal
   the learner's new ones (and moved away from the old ones);
3. the learner's Hugging Face export loads in a fresh vLLM engine as it is and gives the
   learner's logprobs.

Three times: full fine-tuning; LoRA (lora.rank=8) whose push carries the adapter alone,
which the engine serves through vLLM's LoRA support (and an engine that Ray restarts gets
the adapter back from the WeightSync's replay); and LoRA with lora.push=merged, whose push
carries the base weights with the adapter folded in, to a plain engine. The export folds
the adapter in either way.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import TEST_CACHE

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
TOL = 1e-4


@pytest.fixture(scope="module", params=["full", "lora", "lora_merged"])
def setup(request, ray_cluster, tiny_model_dir, tmp_path_factory):
    from cluster.start import start_actors
    from conf import load_config
    from synth.manifest import load_samples
    from synth.mini_dataset import build_mini_dataset

    lora = {"full": [], "lora": ["lora.rank=8", "lora.alpha=32"],
            "lora_merged": ["lora.rank=8", "lora.alpha=32", "lora.push=merged"]}[request.param]
    cfg = load_config("tiny", ["learner.zero_stage=2", "rollout.max_new_tokens=16",
                               "rollout.n=2", *lora])
    mini = build_mini_dataset(TEST_CACHE / "mini")
    samples = load_samples(mini["stage2_train"])[:2]
    path = str(tiny_model_dir)
    running = start_actors(cfg, path, scorer=False)
    learners = running.start_learners(total_steps=4)
    yield cfg, running.engines, learners, running.sync, samples, tmp_path_factory.mktemp(
        "export")
    learners.shutdown()
    running.shutdown()


def _groups(samples, rollouts, advantages):
    """What the experience maker sends: sample references and the engine's prompt ids
    (the learner builds the image inputs and checks it gets the same prompt ids)."""
    from learner.experience import Completion, PromptGroup

    return [PromptGroup(sample, "think", pr.prompt_token_ids,
                        [Completion(r.token_ids, r.logprobs, a)
                         for r, a in zip(pr.rollouts, adv)])
            for sample, pr, adv in zip(samples, rollouts, advantages)]


def _flat(nested):
    return np.array([x for group in nested for seq in group for x in seq])


def test_learner_engine_and_export_agree(setup):
    from actors.engine_host import wait_ready
    from actors.engine_settings import settings_from_config
    from actors.rollout_engine import start_rollout_engine

    cfg, engines, learners, sync, samples, export_root = setup
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16}
    # The engine's first real batch: a fresh CPU engine's very first batch can be ~0.07 off
    # for one sequence, which the engine's own warm-up request absorbs (engine_host.py).
    rollouts = engines.generate(samples, "think", 2, sampling)

    # 1. old logprobs: engine == learner on the same weights.
    groups = _groups(samples, rollouts, [[1.0, -1.0], [0.5, -0.5]])
    engine_old = np.array([x for pr in rollouts for r in pr.rollouts for x in r.logprobs])
    learner_old = _flat(learners.compute_logprobs(groups))
    np.testing.assert_allclose(learner_old, engine_old, atol=TOL)

    # 2. one update, one publish: the engine follows the learner.
    learners.step(groups)
    sync.publish(learners)
    assert engines.versions() == [1]
    learner_new = _flat(learners.compute_logprobs(groups))
    assert np.abs(learner_new - learner_old).max() > 1e-3   # the update moved the policy
    completions = [[r.token_ids for r in pr.rollouts] for pr in rollouts]
    flat_samples = [s for s, c in zip(samples, completions) for _ in c]
    flat_completions = [c for group in completions for c in group]
    engine_new = ray.get(engines.handles[0].completion_logprobs.remote(
        flat_samples, "think", flat_completions))
    np.testing.assert_allclose(np.concatenate(engine_new), learner_new, atol=TOL)

    # A prompt whose ids differ from what the learner builds is refused, not trained on.
    bad = _groups(samples[:1], rollouts[:1], [[1.0, -1.0]])
    bad[0].prompt_ids = bad[0].prompt_ids[:-1] + [bad[0].prompt_ids[-1] + 1]
    with pytest.raises(ray.exceptions.RayTaskError, match="prompt building is out of sync"):
        learners.compute_logprobs(bad)

    # 3. the export loads in a fresh vLLM engine as it is and gives the same numbers.
    export = learners.export_hf(export_root / "export")
    # A plain engine: the export is an ordinary model (with LoRA: the adapter merged in).
    plain = replace(settings_from_config(cfg, str(export)), lora=None)
    fresh = start_rollout_engine(plain, index=1, num_cpus=1)
    try:
        wait_ready([fresh], 600)
        exported = ray.get(fresh.completion_logprobs.remote(flat_samples, "think",
                                                            flat_completions))
    finally:
        ray.kill(fresh, no_restart=True)
    np.testing.assert_allclose(np.concatenate(exported), learner_new, atol=TOL)


@pytest.mark.parametrize("setup", ["lora"], indirect=True)
def test_a_lora_push_is_the_adapter_and_a_restarted_engine_gets_it_back(setup):
    from tests.conftest import restart_actor
    from weight_sync.lora import adapter_shapes
    from weight_sync.sync import StaleResultError

    cfg, engines, learners, sync, samples, _ = setup
    # The adapter of the tiny model: rank 8 on 7 linear layers of 2 language layers, fp32.
    shapes = adapter_shapes(str(learners.model_path), cfg.lora)
    adapter_bytes = sum(4 * np.prod(shape) for shape in shapes.values())
    report = sync.publish(learners)
    assert report["bytes"] == adapter_bytes
    assert report["bytes"] < 0.05 * 4 * sum(np.prod(t.shape) for t in
                                             learners.full_state_dict().values())
    rollouts = engines.generate(samples, "think", 2, {"temperature": 1.0, "top_p": 1.0,
                                                     "max_new_tokens": 16})
    groups = _groups(samples, rollouts, [[1.0, -1.0], [0.5, -0.5]])
    expected = _flat(learners.compute_logprobs(groups))
    restart_actor(engines.handles[0])   # back with the base model, version 0
    assert engines.versions() == [0]
    sync.bring_current(engines.names[0], StaleResultError("restarted by the test"))
    assert engines.versions() == [sync.version]   # the adapter was replayed
    completions = [[r.token_ids for r in pr.rollouts] for pr in rollouts]
    flat_samples = [s for s, c in zip(samples, completions) for _ in c]
    flat = [c for group in completions for c in group]
    got = ray.get(engines.handles[0].completion_logprobs.remote(flat_samples, "think", flat))
    np.testing.assert_allclose(np.concatenate(got), expected, atol=TOL)
