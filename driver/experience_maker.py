"""One step's experience: rollouts -> rewards -> advantages -> the learner's PromptGroups.

The middle of one training step (docs/architecture.md), driven by driver.trainer:

    Stage-2: G think rollouts per image (EngineGroup: token ids, text, logprobs)
             format + answer rewards (rewards.stage2_rewards)
             z_think / z_ref of the qualified rollouts only, from their own token ids
               (ScoringActor.pd_scores through WeightSync.call, Eqs. 2-4; Eq. 5 gives the
               PD reward to qualified rollouts alone, so no other is scored)
             final reward (Eq. 5), advantages (Eq. 6, "clipped_positive" by default)
    Stage-1: G no-think rollouts per sample (choice and grounding samples mixed)
             format + choice / IoU rewards (rewards.stage1_rewards), "standard" GRPO

Every number comes from the rewards package; this module moves data between the actors
and those pure functions, and measures what it moved. The driver never builds model
inputs: the groups carry the sample (image paths) and the engine's prompt token ids, and
each learner rank builds the image inputs it trains on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import rewards as R
from actors.engine_settings import sampling_from_config
from actors.scoring_actor import SCORER_NAME
from driver import metrics as M
from learner.experience import Completion, PromptGroup
from model_inputs.prompting import box_to_model, tokens_covering
from rewards.plugins import RewardPlugin, load_plugins, plugin_rewards


@dataclass
class StepExperience:
    """What a step hands to the learner, and what it logs: the metrics, and per rollout
    its text and, in `per_rollout`, [B, G] arrays of its reward components (format,
    answer / task, pd, final), advantage and lengths (the rollout log reads them)."""

    groups: list[PromptGroup]
    metrics: dict[str, float]
    texts: list[list[str]] = field(default_factory=list)
    per_rollout: dict[str, np.ndarray] = field(default_factory=dict)


def group_stats(final: np.ndarray, qualified: np.ndarray | None) -> dict[str, float]:
    """Fractions of groups with all rewards tied and with no qualified rollout."""
    tied = np.ptp(final, axis=1) == 0
    none = (~qualified.any(axis=1)) if qualified is not None else np.zeros(len(final), bool)
    return {M.GROUP_ALL_TIED: float(tied.mean()), M.GROUP_NONE_QUALIFIED: float(none.mean())}


def think_tokens(tokenizer: Any, token_ids: list[int], text: str,
                 prompts: Any | None = None) -> int:
    """Tokens of a rollout's think block, counted in its own token ids (a token that
    straddles a tag counts as think); 0 without exactly one think block."""
    span = R.think_span(text, prompts)
    if span is None:
        return 0
    return (tokens_covering(tokenizer, token_ids, span[1])
            - tokens_covering(tokenizer, token_ids, span[0]))


def reward_plugins(cfg: Any) -> list[RewardPlugin]:
    """The plug-ins of conf `reward.plugins` / `reward.plugin_weights`, loaded (ConfigError,
    one line, when one cannot be: call it before any actor starts)."""
    from conf import ConfigError

    try:
        return load_plugins(list(cfg.reward.plugins), list(cfg.reward.plugin_weights))
    except ValueError as err:
        raise ConfigError(str(err)) from None


class ExperienceMaker:
    """Turns a batch of manifest samples into learner experience for one step.

    `engines` is an EngineGroup, `sync` the WeightSync whose receivers include the scoring
    actor (Stage-2), `tokenizer` the model's tokenizer (think lengths), `plugins` the
    reward plug-ins (`reward_plugins`), whose values join each rollout's final reward.
    """

    def __init__(self, cfg: Any, engines: Any, sync: Any, tokenizer: Any,
                 plugins: list[RewardPlugin] | None = None) -> None:
        self.cfg, self.engines, self.sync, self.tokenizer = cfg, engines, sync, tokenizer
        self.plugins = list(plugins or [])
        self.plugin_metrics = {p.name: M.plugin_metric(p.name) for p in self.plugins}
        self.prompts = cfg.prompts
        self.stage = cfg.stage
        self.sampling = sampling_from_config(cfg)
        self.mode = "think" if self.stage == 2 else "no_think"

    def make(self, samples: list[dict]) -> StepExperience:
        """Generate, reward and pack one batch (blocking)."""
        t0 = time.perf_counter()
        rollouts = self.engines.generate(samples, self.mode, self.cfg.rollout.n,
                                         self.sampling)
        metrics: dict[str, float] = {M.TIMING_GEN: time.perf_counter() - t0,
                                     M.TIMING_GEN_MODEL: max(pr.vllm_s for pr in rollouts)}
        texts = [[r.text for r in pr.rollouts] for pr in rollouts]
        if self.stage == 2:
            final, qualified, parts = self._stage2_rewards(samples, rollouts, texts, metrics)
        else:
            final, qualified, parts = self._stage1_rewards(samples, rollouts, texts, metrics)
        t1 = time.perf_counter()
        if self.plugins:
            final = final + self._plugin_rewards(samples, texts, parts, metrics)
        r = self.cfg.reward
        adv = R.batch_advantages(final, qualified, mode=r.advantage, shift=r.adv_shift,
                                 eps=r.adv_eps, std=r.adv_std)
        groups = [PromptGroup(sample=sample, mode=self.mode,
                              prompt_ids=list(pr.prompt_token_ids),
                              completions=[Completion(list(x.token_ids), list(x.logprobs),
                                                      float(a))
                                           for x, a in zip(pr.rollouts, adv[i])])
                  for i, (sample, pr) in enumerate(zip(samples, rollouts))]
        metrics[M.TIMING_REWARD] += time.perf_counter() - t1
        metrics.update(group_stats(final, qualified))
        metrics.update(M.SCORE(final))
        metrics.update(M.ADVANTAGES(adv))
        metrics.update(self._length_stats(rollouts))
        metrics[M.WEIGHTS_VERSION] = float(rollouts[0].weights_version)
        parts.update(final=final, advantage=adv, response_tokens=np.array(
            [[len(x.token_ids) for x in pr.rollouts] for pr in rollouts], float))
        return StepExperience(groups=groups, metrics=metrics, texts=texts, per_rollout=parts)

    # -- rewards ------------------------------------------------------------------------
    def _stage2_rewards(self, samples, rollouts, texts, metrics):
        r = self.cfg.reward
        mos = [float(s["mos"]) for s in samples]
        t = time.perf_counter()
        base = R.stage2_rewards(texts, mos, mode="think", eps=r.eps, lambdas=list(r.lambdas),
                                prompts=self.prompts, strict=r.strict_score_format)
        metrics[M.TIMING_REWARD] = time.perf_counter() - t
        t = time.perf_counter()
        z_think, z_ref, metrics[M.TIMING_PD_MODEL] = self._pd_probabilities(
            samples, rollouts, base.qualified)
        metrics[M.TIMING_PD] = time.perf_counter() - t
        t = time.perf_counter()
        weights = R.pd_weight_vector(r.pd_digits, r.pd_weights)
        pd = R.batch_pd_rewards(z_think, z_ref, scored=base.qualified, weights=weights)
        full = base.with_pd(pd)
        final = full.final
        if r.ranking_weight > 0:  # the optional PreResQ-style extra (off by default)
            final = final + r.ranking_weight * R.ranking_reward(full.score, mos)
        metrics.update(M.REWARD_FORMAT(full.fmt))
        metrics.update(M.REWARD_ANSWER(full.ans))
        scored = full.pd[full.qualified]
        metrics.update(M.REWARD_PD(scored) if scored.size else
                       {M.REWARD_PD.name("mean"): 0.0, M.REWARD_PD.name("std"): 0.0})
        metrics[M.PD_SCORED_FRAC] = float(full.qualified.mean())
        think = np.array([[think_tokens(self.tokenizer, x.token_ids, x.text, self.prompts)
                           for x in pr.rollouts] for pr in rollouts], float)
        metrics.update(M.THINK_LENGTH(think))
        metrics[M.TIMING_REWARD] += time.perf_counter() - t
        return final, full.qualified, {"format": full.fmt, "answer": full.ans, "pd": full.pd,
                                       "score": full.score, "think_tokens": think}

    def _pd_probabilities(self, samples, rollouts, qualified):
        """z_think [B, G, M] (NaN where not scored), z_ref [B, M] (NaN for images with no
        qualified rollout) and the scorer's seconds inside vLLM, asking the scoring actor
        about qualified rollouts only."""
        m = self.cfg.reward.pd_digits
        z_think = np.full(qualified.shape + (m,), np.nan)
        z_ref = np.full((len(samples), m), np.nan)
        rows = [i for i in range(len(samples)) if qualified[i].any()]
        if not rows:
            return z_think, z_ref, 0.0
        chosen = [np.flatnonzero(qualified[i]) for i in rows]
        results = self.sync.call(
            SCORER_NAME, "pd_scores", [samples[i] for i in rows],
            [[rollouts[i].rollouts[j].token_ids for j in js] for i, js in zip(rows, chosen)])
        for i, js, res in zip(rows, chosen, results):
            z_ref[i] = res.z_ref
            for j, z in zip(js, res.z_think):
                if z is None:
                    raise RuntimeError(f"sample {res.sample_id}: rollout {j} is qualified but "
                                       "the scoring actor found no score prefix in it")
                z_think[i, j] = z
        return z_think, z_ref, results[0].vllm_s   # one call: every result carries its time

    def _stage1_rewards(self, samples, rollouts, texts, metrics):
        t = time.perf_counter()
        tasks = [s["task"] for s in samples]
        answers = [box_to_model(s["bbox"], pr.original_size, pr.input_size)
                   if s["task"] == "grounding" else s["answer"]
                   for s, pr in zip(samples, rollouts)]
        lam = list(self.cfg.reward.lambdas)
        out = R.stage1_rewards(texts, tasks, answers, choice_mode=self.cfg.reward.choice_mode,
                               lambdas=(lam[0], lam[1]), prompts=self.prompts)
        is_choice = np.array([t == "choice" for t in tasks])
        metrics.update(M.REWARD_FORMAT(out["fmt"]))
        metrics[M.REWARD_CHOICE] = (float(out["task"][is_choice].mean()) if is_choice.any()
                                    else float("nan"))
        metrics[M.REWARD_IOU] = (float(out["task"][~is_choice].mean()) if (~is_choice).any()
                                 else float("nan"))
        metrics[M.TIMING_REWARD] = time.perf_counter() - t
        # "Qualified" as in Eq. 6: well formed and wholly right (every choice part, or a
        # perfect box); used only if a Stage-1 run asks for the clipped-positive mode.
        qualified = (out["fmt"] == 1.0) & (out["task"] == 1.0)
        return out["final"], qualified, {"format": out["fmt"], "task": out["task"]}

    def _plugin_rewards(self, samples, texts, parts, metrics) -> np.ndarray:
        """The plug-ins' weighted sum per rollout; their values go to the metrics and the
        rollout log. The answer a plug-in sees is the parsed score (Stage-2) or the answer
        block's text (Stage-1)."""
        if self.stage == 2:
            answers = [[None if np.isnan(v) else float(v) for v in row] for row in parts["score"]]
        else:
            answers = [[R.answer_content(t, self.prompts) for t in group] for group in texts]
        total, each = plugin_rewards(self.plugins, samples, texts, answers)
        for name, values in each.items():
            metrics[self.plugin_metrics[name]] = float(values.mean())
            parts[f"reward_{name}"] = values
        return total

    # -- lengths ------------------------------------------------------------------------
    def _length_stats(self, rollouts) -> dict[str, float]:
        lengths = np.array([len(x.token_ids) for pr in rollouts for x in pr.rollouts], float)
        prompts = np.array([len(pr.prompt_token_ids) for pr in rollouts
                            for _ in pr.rollouts], float)
        clipped = np.array([x.finish_reason == "length" for pr in rollouts for x in pr.rollouts])
        return {**M.RESPONSE_LENGTH(lengths), **M.PROMPT_LENGTH(prompts),
                M.RESPONSE_CLIP: float(clipped.mean()),
                M.TOTAL_TOKENS: float(lengths.sum() + prompts.sum()),
                M.STRIPPED_VISION: float(sum(x.stripped_tokens for pr in rollouts
                                             for x in pr.rollouts))}

    # -- the paper's Fig. 5 (right) -------------------------------------------------------
    def no_think_accuracy(self, samples: list[dict]) -> float:
        """Answer accuracy of one greedy no-think answer per sample."""
        out = self.engines.generate(samples, "no_think", 1,
                                    sampling_from_config(self.cfg, greedy=True))
        texts = [[pr.rollouts[0].text] for pr in out]
        r = R.stage2_rewards(texts, [float(s["mos"]) for s in samples], mode="no_think",
                             eps=self.cfg.reward.eps, prompts=self.prompts)
        return float(r.ans.mean())
