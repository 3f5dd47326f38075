"""The learner and the rollout engines agree: the RL systems' consistency check.

Real vLLM engine, real DeepSpeed learner (ZeRO-2, one rank) on the tiny model:
1. the learner's logprobs of the engine's own rollouts equal the engine's sampled-token
   logprobs (float32: within 1e-4), so "old logprobs from the engines" is sound;
2. after one update and a push, the engine's teacher-forced logprobs equal the learner's
   new ones (and moved away from the old ones);
3. the learner's Hugging Face export loads in a fresh vLLM engine as it is and gives the
   learner's logprobs.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TEST_CACHE

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    from actors.engine_group import EngineGroup
    from actors.prompting import PromptBuilder
    from actors.vllm_engine import settings_from_config
    from conf import load_config
    from learner.group import LearnerGroup
    from synth.manifest import read_manifest, resolve_images
    from synth.mini_dataset import build_mini_dataset

    cfg = load_config("tiny", ["learner.zero_stage=2", "rollout.max_new_tokens=16",
                               "rollout.n=2"])
    mini = build_mini_dataset(TEST_CACHE / "mini")
    samples = [{**s, "images": [str(p) for p in resolve_images(s, mini["stage2_train"])]}
               for s in read_manifest(mini["stage2_train"])[:2]]
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    path = str(tiny_model_dir)
    engines = EngineGroup.from_config(cfg, settings_from_config(cfg, path))
    learners = LearnerGroup(cfg, total_steps=4, model_path=path)
    builder = PromptBuilder(path, cfg.model.min_pixels, cfg.model.max_pixels)
    yield cfg, engines, learners, builder, samples, tmp_path_factory.mktemp("export")
    learners.shutdown()
    engines.shutdown()
    ray.shutdown()


def _groups(builder, samples, rollouts, advantages):
    from learner.experience import Completion, PromptGroup

    groups = []
    for sample, pr, adv in zip(samples, rollouts, advantages):
        inputs = builder.learner_inputs(sample, "think")
        assert inputs["prompt_ids"] == pr.prompt_token_ids
        groups.append(PromptGroup(
            prompt_ids=inputs["prompt_ids"], pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            completions=[Completion(r.token_ids, r.logprobs, a)
                         for r, a in zip(pr.rollouts, adv)]))
    return groups


def _flat(nested):
    return np.array([x for group in nested for seq in group for x in seq])


def test_learner_engine_and_export_agree(setup):
    from actors.vllm_engine import settings_from_config, start_rollout_engine, wait_ready

    cfg, engines, learners, builder, samples, export_root = setup
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16}
    # The engine's first real batch: a fresh CPU engine's very first batch can be ~0.07 off
    # for one sequence, which the engine's own warm-up request absorbs (vllm_engine.py).
    rollouts = engines.generate(samples, "think", 2, sampling)

    # 1. old logprobs: engine == learner on the same weights.
    groups = _groups(builder, samples, rollouts, [[1.0, -1.0], [0.5, -0.5]])
    engine_old = np.array([x for pr in rollouts for r in pr.rollouts for x in r.logprobs])
    learner_old = _flat(learners.compute_logprobs(groups))
    np.testing.assert_allclose(learner_old, engine_old, atol=TOL)

    # 2. one update, one push: the engine follows the learner.
    learners.step(groups)
    learners.push_weights(engines.handles, version=1)
    engines.expect_version(1)
    learner_new = _flat(learners.compute_logprobs(groups))
    assert np.abs(learner_new - learner_old).max() > 1e-3   # the update moved the policy
    completions = [[r.token_ids for r in pr.rollouts] for pr in rollouts]
    flat_samples = [s for s, c in zip(samples, completions) for _ in c]
    flat_completions = [c for group in completions for c in group]
    engine_new = ray.get(engines.handles[0].completion_logprobs.remote(
        flat_samples, "think", flat_completions))
    np.testing.assert_allclose(np.concatenate(engine_new), learner_new, atol=TOL)

    # 3. the export loads in a fresh vLLM engine as it is and gives the same numbers.
    export = learners.export_hf(export_root / "export")
    fresh = start_rollout_engine(settings_from_config(cfg, str(export)), index=1, num_cpus=1)
    try:
        wait_ready([fresh], 600)
        exported = ray.get(fresh.completion_logprobs.remote(flat_samples, "think",
                                                            flat_completions))
    finally:
        ray.kill(fresh, no_restart=True)
    np.testing.assert_allclose(np.concatenate(exported), learner_new, atol=TOL)
