"""ScoringActor: teacher-forced ground-truth digit probabilities for the PD reward.

Eqs. 2-4 of the paper: for a think rollout, the think prompt + the rollout's own token ids
up to and including its score prefix ("Score:", found in the answer block by the rewards
grammar) + the templates' spacing + the ground-truth MOS string (`rewards.mos_digits`,
e.g. "3.7"); z_think holds the probability of each ground-truth digit token at its
position (the "." is not a digit). z_ref is the same for the no-think prompt + the fixed
prefix ("[answer]Score:"), once per image and weights version. `digit_distribution` gives
p("0") .. p("9") at a position (Eq. 8 in evals).

The rollout is cut in its own token ids (the sequence the policy sampled), not decoded and
re-encoded: only when the token at the cut runs past the prefix (a tokenizer that merges
"Score:" with what follows) is that one token re-encoded, and counted in `cache_info`.

How: each digit position is one vLLM request whose prompt is the sequence up to that
position; `SamplingParams.logprob_token_ids` (the ten digit tokens) returns their logprobs
under the full-vocabulary softmax of the model's raw logits. These requests share their
prefix (image and prompt, then the rollout), which vLLM's prefix cache computes once;
vLLM's prompt_logprobs would instead recompute every request from scratch (it bypasses the
prefix cache). Tests check the numbers against a transformers forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.engine_host import EngineHost, start_engine_actor
from actors.engine_settings import EngineSettings
from model_inputs.prompting import decode, tokens_covering

SCORER_NAME = "scoring-actor"   # its Ray actor name and its name among the weights receivers
DIGITS = "0123456789"


def ids_through_score_prefix(tokenizer: Any, encode: Callable[[str], list[int]],
                             token_ids: Sequence[int], prompts: Any | None = None
                             ) -> tuple[list[int], bool] | None:
    """A rollout's own token ids up to and including the score prefix of its answer block
    (rewards.score_prefix_end on its text), and whether the last of them had to be
    re-encoded because the token at the cut runs past the prefix; None without a prefix."""
    from rewards import score_prefix_end

    text = decode(tokenizer, token_ids)
    end = score_prefix_end(text, prompts)
    if end is None:
        return None
    k = tokens_covering(tokenizer, token_ids, end)
    head = list(token_ids[:k])
    if decode(tokenizer, head) == text[:end]:
        return head, False
    head = head[:-1]
    return head + encode(text[len(decode(tokenizer, head)):end]), True


@dataclass
class PDScores:
    """Teacher-forced ground-truth digit probabilities of one sample (M digits each)."""

    sample_id: str
    gt: str                              # the teacher-forced string, e.g. "3.7"
    z_ref: list[float]                   # no-think prompt + fixed prefix
    z_think: list[list[float] | None]    # per given rollout; None: no score prefix in it
    weights_version: int = 0
    vllm_s: float = 0.0                  # seconds inside vLLM of the whole pd_scores call


@dataclass
class DigitProbs:
    """p("0") .. p("9") per sample (None: no score prefix to read after)."""

    probs: list[list[float] | None]
    weights_version: int = 0


class ScoringActor(EngineHost):
    """vLLM-backed teacher forcing; hosted as the Ray actor "scoring-actor"."""

    role = "scoring"

    def __init__(self, settings: EngineSettings, pd_digits: int = 2):
        super().__init__(settings)
        self.pd_digits = int(pd_digits)
        self.digit_ids = self._digit_token_ids()
        self._ref_cache: dict[tuple[str, str], list[float]] = {}
        self._ref_cache_version = 0
        self.cache_stats = {"hits": 0, "misses": 0, "boundary_reencoded": 0}

    def _digit_token_ids(self) -> list[int]:
        ids = []
        for digit in DIGITS:
            encoded = self.builder.encode(digit)
            if len(encoded) != 1:
                raise ValueError(f"the tokenizer splits {digit!r} into {encoded}; the PD reward "
                                 "needs one token per digit")
            ids.append(encoded[0])
        return ids

    def _prompts(self) -> Any:
        from conf.prompts import default_prompts

        return self.builder.prompts or default_prompts()

    def _gt_tokens(self, gt: str) -> tuple[list[int], list[int]]:
        """Token ids of the ground-truth string and the indices of its digit tokens."""
        ids = self.builder.encode(gt)
        digit_at = [k for k, tok in enumerate(ids) if tok in self.digit_ids]
        if len(digit_at) != sum(ch.isdigit() for ch in gt):
            raise ValueError(f"ground truth {gt!r} tokenizes as {ids}: not one token per digit")
        return ids, digit_at

    def _next_digit_logprobs(self, prompts: list[dict]) -> list[dict[int, float]]:
        """Logprob of each digit token as the next token after each prompt."""
        from vllm import SamplingParams

        if not prompts:
            self.last_run_s = 0.0
            return []
        params = SamplingParams(max_tokens=1, temperature=0.0,
                                logprob_token_ids=list(self.digit_ids))
        outs = self._run(prompts, params)
        return [{tok: entry.logprob for tok, entry in out.outputs[0].logprobs[0].items()}
                for out in outs]

    def _forced_requests(self, prepared: Any, context: list[int],
                         gt: str) -> tuple[list[dict], list[int]]:
        """One request per ground-truth digit, and the digit each one asks about."""
        gt_ids, digit_at = self._gt_tokens(gt)
        requests = [prepared.engine_input(context + gt_ids[:k]) for k in digit_at]
        return requests, [gt_ids[k] for k in digit_at]

    def _ref_context(self) -> list[int]:
        """The no-think fixed prefix and the spacing (Eq. 4's reference)."""
        prompts = self._prompts()
        return self.builder.encode(str(prompts.no_think_prefix) + str(prompts.score_spacing))

    def rollout_context(self, token_ids: list[int]) -> list[int] | None:
        """The rollout's own tokens through its score prefix, then the spacing; None when
        its answer block holds no score prefix."""
        cut = ids_through_score_prefix(self.builder.tokenizer, self.builder.encode,
                                       token_ids, self.builder.prompts)
        if cut is None:
            return None
        head, reencoded = cut
        self.cache_stats["boundary_reencoded"] += int(reencoded)
        return head + self.builder.encode(str(self._prompts().score_spacing))

    def pd_scores(self, samples: list[dict],
                  rollout_ids: list[list[list[int]]]) -> list[PDScores]:
        """z_ref of every sample and z_think of each of its given rollouts (token ids),
        Eqs. 2-4. Give only the rollouts whose PD reward is used (Eq. 5: the qualified
        ones)."""
        from rewards import mos_digits

        if len(samples) != len(rollout_ids):
            raise ValueError(f"{len(samples)} samples but {len(rollout_ids)} rollout lists")
        version = self.receiver.version
        if version != self._ref_cache_version:
            self._ref_cache, self._ref_cache_version = {}, version
        requests: list[dict] = []
        targets: list[int] = []
        plan = []   # per sample: (gt, ref slice or cached list, [think slice or None, ...])
        for sample, rollouts in zip(samples, rollout_ids):
            if sample.get("mos") is None:
                raise ValueError(f"sample {sample.get('id', '?')} has no 'mos' to teacher-force")
            gt = mos_digits(float(sample["mos"]), self.pd_digits)
            key = (str(sample["id"]), gt)
            ref: Any = self._ref_cache.get(key)
            if ref is not None:
                self.cache_stats["hits"] += 1
            else:
                self.cache_stats["misses"] += 1
                reqs, tgts = self._forced_requests(self.builder.prepare(sample, "no_think"),
                                                   self._ref_context(), gt)
                ref = slice(len(requests), len(requests) + len(reqs))
                requests += reqs
                targets += tgts
            think_prompt = self.builder.prepare(sample, "think") if rollouts else None
            slices: list[slice | None] = []
            for ids in rollouts:
                context = self.rollout_context(list(ids))
                if context is None:
                    slices.append(None)
                    continue
                reqs, tgts = self._forced_requests(think_prompt, context, gt)
                slices.append(slice(len(requests), len(requests) + len(reqs)))
                requests += reqs
                targets += tgts
            plan.append((sample, gt, key, ref, slices))
        logprobs = self._next_digit_logprobs(requests)
        probs = [math.exp(lp[tok]) for lp, tok in zip(logprobs, targets)]
        results = []
        for sample, gt, key, ref, slices in plan:
            if isinstance(ref, slice):
                ref = self._ref_cache[key] = probs[ref]
            results.append(PDScores(
                sample_id=str(sample["id"]), gt=gt, z_ref=list(ref),
                z_think=[None if s is None else probs[s] for s in slices],
                weights_version=version, vllm_s=self.last_run_s))
        return results

    def digit_distribution(self, samples: list[dict], mode: str,
                           rollout_ids: list[list[int] | None] | None = None,
                           digits_before: str = "") -> DigitProbs:
        """p("0") .. p("9") (full-vocabulary softmax) right after the score prefix.

        no_think: prompt + the fixed prefix; think: prompt + each sample's rollout (token
        ids) cut after its score prefix (None where it has none). `digits_before` is
        appended first ("3." asks about the tenths digit). Eq. 8 renormalises p("0") ..
        p("4").
        """
        if mode == "think" and (rollout_ids is None or len(rollout_ids) != len(samples)):
            raise ValueError("think mode needs one rollout (token ids) per sample")
        requests, where = [], []
        for i, sample in enumerate(samples):
            if mode == "no_think":
                context = self._ref_context()
            else:
                ids = rollout_ids[i]
                context = None if ids is None else self.rollout_context(list(ids))
                if context is None:
                    where.append(None)
                    continue
            if digits_before:
                context = context + self._gt_tokens(digits_before)[0]
            where.append(len(requests))
            requests.append(self.builder.prepare(sample, mode).engine_input(context))
        logprobs = self._next_digit_logprobs(requests)
        return DigitProbs(
            probs=[None if w is None else [math.exp(logprobs[w][tok]) for tok in self.digit_ids]
                   for w in where],
            weights_version=self.receiver.version)

    def cache_info(self) -> dict:
        """z_ref cache (hits, misses, entries, its weights version) and the number of cuts
        whose boundary token was re-encoded."""
        return {**self.cache_stats, "entries": len(self._ref_cache),
                "version": self._ref_cache_version}


def start_scoring_actor(settings: EngineSettings, num_cpus: float, num_gpus: float = 0.0,
                        pd_digits: int = 2, cpu_slot: int | None = None,
                        max_restarts: int = 4, placement: dict | None = None) -> Any:
    """The ScoringActor as the Ray actor "scoring-actor" (CPU slot: after the engines)."""
    from dataclasses import replace

    if cpu_slot is not None:
        settings = replace(settings, cpu_slot=cpu_slot)
    return start_engine_actor(ScoringActor, settings, SCORER_NAME, num_cpus, num_gpus,
                              max_restarts, placement, pd_digits=pd_digits)
