"""driver.experience_maker with stand-in engines and scorer (no Ray, no vLLM: the real
ones are exercised by the Ray tests; here the step's plumbing and arithmetic are checked
on hand-worked groups). The tokenizer is the embedded tiny model's real one.
"""

from __future__ import annotations

import numpy as np
import pytest

from actors.rollout_engine import PromptRollouts, Rollout
from actors.scoring_actor import PDScores
from conf import load_config
from driver import metrics as M
from driver.experience_maker import ExperienceMaker

# Image A (MOS 3.0): two qualified rollouts (a0, a3), one wrong, one without think.
# Image B (MOS 1.2): no rollout right. Paper default lambdas (1, 1, 1), eps 0.5.
TEXTS = {
    "A": ["[think]sharp[/think][answer]Score:3.2[/answer]",    # fmt 1, ans 1: qualified
          "[think]blurry[/think][answer]Score:1.0[/answer]",   # fmt 1, ans 0
          "[answer]Score:3.0[/answer]",                        # fmt 0 (no think), ans 1
          "[think]ok[/think][answer]Score:2.9[/answer]"],      # fmt 1, ans 1: qualified
    "B": ["[think]x[/think][answer]Score:4.0[/answer]",        # fmt 1, ans 0
          "garbage",                                           # fmt 0, ans 0
          "[think]y[/think][answer]Score:2.0[/answer]",        # fmt 1, ans 0
          "[think]z[/think][answer]Score:3.5[/answer]"],       # fmt 1, ans 0
}
# What the stand-in scorer answers: z_ref of A, z_think of a0 and a3 (M = 2 digits).
Z_REF_A = [0.2, 0.1]
Z_THINK = {0: [0.6, 0.5], 3: [0.1, 0.9]}
# Seconds inside vLLM the stand-ins report: per engine chunk (here one chunk per image).
VLLM_S = {"A": 0.3, "B": 0.5}
# What LearnerGroup.step returns that the step's metrics read (hand-made values), and
# what WeightSync.publish reports.
LEARNER_STATS = {"pg_loss": 0.1, "clip_frac": 0.0, "approx_kl": 0.01, "entropy": 2.0,
                 "grad_norm": 1.5, "lr": 5e-4, "compute_s": 0.46, "peak_memory_gb": 1.2}
PUSH = {"gather_s": 0.1, "deliver_s": 0.2, "bytes": 4096.0}
SYNC_COUNTS = {"replays": 0, "redos": 1, "restarts": 0, "unreachable": 0, "groups": 0}


def _whole_step(exp, step_s=2.0, gpus=0):
    """The step's metrics as driver.trainer assembles them around the maker's."""
    metrics = M.step_metrics(exp.metrics, LEARNER_STATS, epoch=0, update_s=0.5, push=PUSH,
                             step_s=step_s, gpus=gpus)
    metrics.update(M.event_metrics(2, SYNC_COUNTS, 0, 0))
    return {M.STEP: 1, **metrics}


class FakeEngines:
    """An EngineGroup stand-in: fixed texts, their tiny-tokenizer ids, logprob -0.5 each."""

    def __init__(self, tokenizer, texts_by_id, version=7):
        self.tokenizer, self.texts, self.version = tokenizer, texts_by_id, version
        self.calls = []
        self.metrics = {"resends": 0}

    def generate(self, samples, mode, n, sampling):
        self.calls.append((mode, n, dict(sampling)))
        out = []
        for s in samples:
            rollouts = []
            for text in self.texts[s["id"]][:n]:
                ids = self.tokenizer.encode(text, add_special_tokens=False)
                rollouts.append(Rollout(text, ids, [-0.5] * len(ids), "stop"))
            out.append(PromptRollouts(s["id"], mode, [1, 2, 3], rollouts, self.version,
                                      (100, 200), (56, 112), vllm_s=VLLM_S.get(s["id"], 0.1)))
        return out


class FakeSync:
    """A WeightSync stand-in whose scoring actor answers Z_REF_A / Z_THINK."""

    version = 7

    def __init__(self, ids_of_a=()):
        self.asked = []
        self._ids = list(ids_of_a)   # token ids of image A's rollouts, to tell them apart

    def call(self, name, method, samples, rollout_ids):
        assert (name, method) == ("scoring-actor", "pd_scores")
        self.asked.append(([s["id"] for s in samples], rollout_ids))
        texts = {tuple(ids): k for k, ids in enumerate(self._ids)}
        return [PDScores(s["id"], "3.0", Z_REF_A, [Z_THINK[texts[tuple(r)]] for r in rs], 7,
                         vllm_s=0.04) for s, rs in zip(samples, rollout_ids)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _stage2(tokenizer, overrides=(), plugins=None):
    cfg = load_config("tiny", ["rollout.n=4", *overrides])
    samples = [{"id": "A", "task": "score", "images": ["/x/a.png"], "mos": 3.0},
               {"id": "B", "task": "score", "images": ["/x/b.png"], "mos": 1.2}]
    engines = FakeEngines(tokenizer, TEXTS)
    sync = FakeSync([tokenizer.encode(t, add_special_tokens=False) for t in TEXTS["A"]])
    exp = ExperienceMaker(cfg, engines, sync, tokenizer, plugins).make(samples)
    return samples, engines, sync, exp


def test_pd_is_asked_for_qualified_rollouts_only(tokenizer):
    _, _, sync, _ = _stage2(tokenizer)
    # Eq. 5 uses PD for qualified rollouts only: image A's a0 and a3; image B not at all.
    (asked,) = sync.asked
    assert asked[0] == ["A"]
    assert asked[1] == [[sync._ids[0], sync._ids[3]]]


def test_rewards_and_advantages_on_hand_worked_groups(tokenizer):
    _, _, _, exp = _stage2(tokenizer)
    # PD, paper weights [1, 0.1]: r_ref = 0.2 + 0.01 = 0.21; a0: 0.6 + 0.05 - 0.21 = 0.44;
    # a3: 0.1 + 0.09 - 0.21 < 0 -> 0. Final = ans + fmt + pd (Eq. 5).
    final = np.array([[2.44, 1.0, 1.0, 2.0], [1.0, 0.0, 1.0, 1.0]])
    adv = np.array([[c.advantage for c in g.completions] for g in exp.groups])
    # Eq. 6 written out: a group with a qualified rollout keeps max(z, 0); an all-wrong
    # group gets (r - mean - shift) / (std + eps), sample std (conf: shift 0 in tiny,
    # eps 1e-4).
    shift = load_config("tiny").reward.adv_shift
    a, b = final
    expected_a = np.maximum((a - a.mean()) / (a.std(ddof=1) + 1e-4), 0.0)
    expected_b = (b - b.mean() - shift) / (b.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(adv, [expected_a, expected_b], atol=1e-12)
    m = exp.metrics
    assert m[M.SCORE.name("mean")] == pytest.approx(final.mean())
    assert m[M.REWARD_PD.name("mean")] == pytest.approx(0.22)      # (0.44 + 0) / 2
    assert m[M.PD_SCORED_FRAC] == pytest.approx(2 / 8)
    assert m[M.REWARD_FORMAT.name("mean")] == pytest.approx(6 / 8)
    assert m[M.REWARD_ANSWER.name("mean")] == pytest.approx(3 / 8)
    assert m[M.GROUP_NONE_QUALIFIED] == 0.5 and m[M.GROUP_ALL_TIED] == 0.0
    assert m[M.WEIGHTS_VERSION] == 7.0


def test_groups_carry_references_and_ids_not_pixels(tokenizer):
    samples, _, _, exp = _stage2(tokenizer)
    for sample, group in zip(samples, exp.groups):
        assert group.sample is sample and group.mode == "think"
        assert group.prompt_ids == [1, 2, 3]
        assert [c.completion_ids for c in group.completions] == [
            tokenizer.encode(t, add_special_tokens=False) for t in TEXTS[sample["id"]]]
        assert all(c.old_logprobs == [-0.5] * len(c.completion_ids) for c in group.completions)
    assert not any(hasattr(g, "pixel_values") for g in exp.groups)


def test_think_length_counts_the_rollouts_own_tokens(tokenizer):
    _, _, _, exp = _stage2(tokenizer)
    expected = []
    for text in TEXTS["A"] + TEXTS["B"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if "[think]" not in text:
            expected.append(0)
            continue
        start, end = text.index("[think]") + len("[think]"), text.index("[/think]")
        # Independent count: a linear scan for the first prefix covering each position.
        first = [next(k for k in range(len(ids) + 1) if len(tokenizer.decode(ids[:k])) >= c)
                 for c in (start, end)]
        expected.append(first[1] - first[0])
    assert exp.metrics[M.THINK_LENGTH.name("mean")] == pytest.approx(np.mean(expected))
    assert exp.metrics[M.THINK_LENGTH.name("max")] == max(expected) > 0


def test_a_step_writes_every_key_of_its_stage_once(tokenizer):
    _, _, _, exp = _stage2(tokenizer)
    metrics = _whole_step(exp)
    assert set(metrics) == set(M.required_keys(2))
    # The step's assembly adds to the maker's metrics and never overwrites one.
    for name, value in exp.metrics.items():
        assert metrics[name] == value or (np.isnan(value) and np.isnan(metrics[name])), name


def test_step_overhead_and_throughput_on_hand_values(tokenizer):
    _, _, _, exp = _stage2(tokenizer)
    # Model work: generation 0.5 (slowest chunk) + PD 0.04 + update 0.46 = 1.0 s of a 2.0 s
    # step: overhead 2.0. Throughput (verl): tokens / (step seconds x GPUs, at least 1).
    m = _whole_step(exp, step_s=2.0, gpus=0)
    assert m[M.STEP_OVERHEAD] == pytest.approx(2.0)
    assert m[M.THROUGHPUT] == pytest.approx(exp.metrics[M.TOTAL_TOKENS] / 2.0)
    assert _whole_step(exp, gpus=4)[M.THROUGHPUT] == pytest.approx(
        exp.metrics[M.TOTAL_TOKENS] / 8.0)
    assert m[M.TIMING_WEIGHTS] == pytest.approx(0.3) and m[M.REDOS] == 1 and m[M.RESENDS] == 2


def test_model_seconds_are_the_slowest_chunk_and_the_scoring_call(tokenizer):
    _, _, _, exp = _stage2(tokenizer)
    # chunks run side by side on their engines: the slowest one is the generation's model
    # work; the scorer answered in one call, whose seconds every result repeats
    assert exp.metrics[M.TIMING_GEN_MODEL] == 0.5
    assert exp.metrics[M.TIMING_PD_MODEL] == 0.04


def test_stage1_boxes_convert_with_the_engines_sizes(tokenizer):
    cfg = load_config("tiny_stage1", ["rollout.n=2"])
    sample = {"id": "G", "task": "grounding", "images": ["/x/g.png"], "bbox": [10, 20, 30, 40],
              "question": "where?"}
    # The engine reports original 100x200 and model input 56x112: the box becomes
    # [5.6, 11.2, 16.8, 22.4]. Answer 6,11,17,22: intersection 10.8 x 10.8 = 116.64,
    # union 121 + 125.44 - 116.64 = 129.8, IoU 0.89861...
    engines = FakeEngines(tokenizer, {"G": ["[answer] 6,11,17,22 [/answer]", "no box"]})
    exp = ExperienceMaker(cfg, engines, FakeSync(), tokenizer).make([sample])
    assert exp.metrics[M.REWARD_IOU] == pytest.approx((116.64 / 129.8 + 0.0) / 2)
    assert exp.metrics[M.REWARD_FORMAT.name("mean")] == 0.5
    assert engines.calls[0][0] == "no_think"
    # No choice sample in this batch: its reward is NaN ("not measured" in metrics.jsonl).
    assert np.isnan(exp.metrics[M.REWARD_CHOICE])
    assert set(_whole_step(exp)) == set(M.required_keys(1))


def closeness(sample, completion, answer):
    """A plug-in for the test: 1 - |answer - MOS| / 5, 0 without an answer."""
    return 0.0 if answer is None else 1.0 - abs(answer - sample["mos"]) / 5


def test_a_reward_plugin_joins_the_final_reward_and_the_metrics(tokenizer):
    from rewards.plugins import load_plugins

    plugins = load_plugins([f"{__name__}:closeness"], [2.0])
    _, _, _, plain = _stage2(tokenizer)
    _, _, _, exp = _stage2(tokenizer, plugins=plugins)
    # Parsed scores: A 3.2, 1.0, 3.0, 2.9 (MOS 3.0); B 4.0, none, 2.0, 3.5 (MOS 1.2).
    values = np.array([[1 - 0.2 / 5, 1 - 2.0 / 5, 1.0, 1 - 0.1 / 5],
                       [1 - 2.8 / 5, 0.0, 1 - 0.8 / 5, 1 - 2.3 / 5]])
    final = np.array([[2.44, 1.0, 1.0, 2.0], [1.0, 0.0, 1.0, 1.0]]) + 2.0 * values
    np.testing.assert_allclose(exp.per_rollout["final"], final, atol=1e-12)
    np.testing.assert_allclose(exp.per_rollout["reward_closeness"], values, atol=1e-12)
    assert exp.metrics["reward/closeness/mean"] == pytest.approx(values.mean())
    assert exp.metrics[M.SCORE.name("mean")] == pytest.approx(final.mean())
    assert plain.metrics[M.SCORE.name("mean")] == pytest.approx(final.mean() - 2 * values.mean())
    assert "reward/closeness/mean" in M.CATALOGUE   # declared, so the logger takes it
