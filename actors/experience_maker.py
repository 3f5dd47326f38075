"""One step's experience: rollouts -> rewards -> advantages -> the learner's PromptGroups.

This is the middle of DESIGN.md's "one training step", driven from launch.py:

    Stage-2: G think rollouts per image (RolloutEngines)
             format + answer rewards (rewards.stage2_rewards)
             z_think / z_ref for the PD reward (ScoringActor.pd_scores, Eqs. 2-4)
             final reward (Eq. 5), advantages (Eq. 6, "clipped_positive" by default)
    Stage-1: G no-think rollouts per sample (choice and grounding samples mixed)
             format + choice / IoU rewards (rewards.stage1_rewards), "standard" GRPO

Every number here comes from the rewards package; this module only moves data between
the actors and those pure functions, and measures what it moved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import rewards as R
from learner.experience import Completion, PromptGroup


@dataclass
class StepExperience:
    """What a step hands to the learner, and what it logs."""

    groups: list[PromptGroup]
    metrics: dict[str, float]


def _mean_std(prefix: str, values: np.ndarray) -> dict[str, float]:
    flat = np.asarray(values, dtype=float).ravel()
    return {f"{prefix}_mean": float(flat.mean()), f"{prefix}_std": float(flat.std())}


def group_stats(final: np.ndarray, qualified: np.ndarray | None) -> dict[str, float]:
    """Fractions of groups with no qualified rollout and with all rewards tied."""
    tied = np.ptp(final, axis=1) == 0
    none = (~qualified.any(axis=1)) if qualified is not None else np.zeros(len(final), bool)
    return {"reward/group_all_tied_frac": float(tied.mean()),
            "reward/group_none_qualified_frac": float(none.mean())}


class ExperienceMaker:
    """Turns a batch of manifest samples into learner experience for one step."""

    def __init__(self, cfg: Any, engines: Any, scorer: Any | None, builder: Any) -> None:
        self.cfg, self.engines, self.scorer, self.builder = cfg, engines, scorer, builder
        self.prompts = cfg.prompts
        self.sampling = {"temperature": float(cfg.rollout.temperature),
                         "top_p": float(cfg.rollout.top_p),
                         "max_new_tokens": int(cfg.rollout.max_new_tokens)}
        self.mode = "think" if int(cfg.stage) == 2 else "no_think"

    # -- the step -------------------------------------------------------------------
    def make(self, samples: list[dict]) -> StepExperience:
        """Generate, reward and pack one batch (blocking)."""
        t0 = time.perf_counter()
        rollouts = self.engines.generate(samples, self.mode, int(self.cfg.rollout.n),
                                         self.sampling)
        timing = {"timing/generate": time.perf_counter() - t0}
        texts = [[r.text for r in pr.rollouts] for pr in rollouts]
        if int(self.cfg.stage) == 2:
            final, qualified, metrics = self._stage2_rewards(samples, texts, timing)
        else:
            final, qualified, metrics = self._stage1_rewards(samples, texts, timing)
        t1 = time.perf_counter()
        r = self.cfg.reward
        adv = R.batch_advantages(final, qualified, mode=str(r.advantage),
                                 shift=float(r.adv_shift), eps=float(r.adv_eps))
        groups = self._pack(samples, rollouts, adv)
        timing["timing/reward"] = timing.get("timing/reward", 0.0) + time.perf_counter() - t1
        metrics.update(timing)
        metrics.update(group_stats(final, qualified))
        metrics.update(self._length_stats(rollouts))
        metrics.update({"reward/final_mean": float(final.mean()),
                        "reward/final_std": float(final.std()),
                        "adv/mean": float(adv.mean()), "adv/max": float(adv.max()),
                        "rollout/stripped_vision_tokens": float(sum(
                            x.stripped_tokens for pr in rollouts for x in pr.rollouts))})
        return StepExperience(groups=groups, metrics=metrics)

    def _stage2_rewards(self, samples, texts, timing):
        r = self.cfg.reward
        mos = [float(s["mos"]) for s in samples]
        t = time.perf_counter()
        base = R.stage2_rewards(texts, mos, mode="think", eps=float(r.eps),
                                lambdas=list(r.lambdas), prompts=self.prompts)
        timing["timing/reward"] = time.perf_counter() - t
        t = time.perf_counter()
        import ray

        pd_scores = ray.get(self.scorer.pd_scores.remote(samples, texts))
        timing["timing/score"] = time.perf_counter() - t
        t = time.perf_counter()
        m = int(r.pd_digits)
        z_think = np.array([[z if z is not None else [np.nan] * m for z in ps.z_think]
                            for ps in pd_scores], dtype=float)
        z_ref = np.array([ps.z_ref for ps in pd_scores], dtype=float)
        weights = R.pd_weight_vector(m, str(r.pd_weights))
        pd = R.batch_pd_rewards(z_think, z_ref, scored=base.qualified, weights=weights)
        full = base.with_pd(pd)
        final = full.final
        if float(r.ranking_weight) > 0:  # the optional PreResQ-style extra (off by default)
            final = final + float(r.ranking_weight) * R.ranking_reward(full.score, mos)
        timing["timing/reward"] += time.perf_counter() - t
        metrics = {**_mean_std("reward/format", full.fmt), **_mean_std("reward/answer", full.ans),
                   "reward/pd_mean": float(full.pd[full.qualified].mean())
                   if full.qualified.any() else 0.0,
                   "reward/pd_std": float(full.pd[full.qualified].std())
                   if full.qualified.any() else 0.0,
                   "eval/think_answer_acc": float(full.ans.mean())}
        metrics.update(self._think_lengths(texts))
        return final, full.qualified, metrics

    def _stage1_rewards(self, samples, texts, timing):
        t = time.perf_counter()
        tasks = [s["task"] for s in samples]
        answers = [self.builder.gt_box_for_model(s) if s["task"] == "grounding" else s["answer"]
                   for s in samples]
        lam = list(self.cfg.reward.lambdas)
        out = R.stage1_rewards(texts, tasks, answers, choice_mode=str(self.cfg.reward.choice_mode),
                               lambdas=(lam[0], lam[1]), prompts=self.prompts)
        timing["timing/reward"] = time.perf_counter() - t
        timing["timing/score"] = 0.0
        is_choice = np.array([t == "choice" for t in tasks])
        metrics = {**_mean_std("reward/format", out["fmt"]),
                   "reward/choice_mean": float(out["task"][is_choice].mean())
                   if is_choice.any() else float("nan"),
                   "reward/iou_mean": float(out["task"][~is_choice].mean())
                   if (~is_choice).any() else float("nan")}
        # "Qualified" as in Eq. 6: well formed and wholly right (every choice part, or a
        # perfect box); used only if a Stage-1 run asks for the clipped-positive mode.
        qualified = (out["fmt"] == 1.0) & (out["task"] == 1.0)
        return out["final"], qualified, metrics

    # -- packing and lengths ---------------------------------------------------------
    def _pack(self, samples, rollouts, adv) -> list[PromptGroup]:
        groups = []
        for i, (sample, pr) in enumerate(zip(samples, rollouts)):
            inputs = self.builder.learner_inputs(sample, self.mode)
            if inputs["prompt_ids"] != list(pr.prompt_token_ids):
                # The promise of actors/prompting.py: engines and learner see one sequence.
                raise RuntimeError(f"sample {sample['id']}: the learner's prompt ids differ "
                                   "from the engine's; prompt building is out of sync")
            groups.append(PromptGroup(
                prompt_ids=inputs["prompt_ids"], pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
                completions=[Completion(completion_ids=list(x.token_ids),
                                        old_logprobs=list(x.logprobs), advantage=float(a))
                             for x, a in zip(pr.rollouts, adv[i])]))
        return groups

    def _length_stats(self, rollouts) -> dict[str, float]:
        lengths = np.array([len(x.token_ids) for pr in rollouts for x in pr.rollouts], float)
        clipped = np.array([x.finish_reason == "length" for pr in rollouts for x in pr.rollouts])
        return {"response_length/mean": float(lengths.mean()),
                "response_length/max": float(lengths.max()),
                "response_length/clip_ratio": float(clipped.mean()),
                "rollout/completion_tokens": float(lengths.sum())}

    def _think_lengths(self, texts) -> dict[str, float]:
        """Think length in tokens: the think block's text (rewards.think_content),
        re-tokenised; 0 for an output without exactly one think block."""
        lengths = []
        for group in texts:
            for text in group:
                body = R.think_content(text, self.prompts)
                lengths.append(len(self.builder.encode(body)) if body else 0)
        arr = np.array(lengths, float)
        return {"think_length/mean": float(arr.mean()), "think_length/max": float(arr.max())}

    # -- the paper's Fig. 5 (right) ----------------------------------------------------
    def no_think_accuracy(self, samples: list[dict]) -> float:
        """Answer accuracy of one greedy no-think answer per sample."""
        out = self.engines.generate(samples, "no_think", 1,
                                    {**self.sampling, "temperature": 0.0})
        texts = [[pr.rollouts[0].text] for pr in out]
        r = R.stage2_rewards(texts, [float(s["mos"]) for s in samples], mode="no_think",
                             eps=float(self.cfg.reward.eps), prompts=self.prompts)
        return float(r.ans.mean())
