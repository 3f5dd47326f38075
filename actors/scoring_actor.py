"""ScoringActor: teacher-forced ground-truth digit probabilities for the PD reward.

Eqs. 2-4 of the paper: for a think rollout, the think prompt + the rollout's own text up
to and including the score prefix ("Score:" + the templates' spacing) + the ground-truth
MOS string (`rewards.mos_digits`, e.g. "3.7"); z_think holds the probability of each
ground-truth digit token at its position (the "." is not a digit). z_ref is the same for
the no-think prompt + the fixed prefix ("[answer]Score:"), once per image and weights
version. `digit_distribution` gives p("0") .. p("9") at a position (Eq. 8 in evals).

How: each digit position is one vLLM request whose prompt is the sequence up to that
position; `SamplingParams.logprob_token_ids` (the ten digit tokens) returns their logprobs
under the full-vocabulary softmax of the model's raw logits. These requests share their
prefix (image and prompt, then the rollout text), which vLLM's prefix cache computes
once; vLLM's prompt_logprobs would instead recompute every request from scratch (it
bypasses the prefix cache). Tests check the numbers against a transformers forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from actors.vllm_engine import EngineHost, EngineSettings, start_engine_actor
from conf.prompts import tags

DIGITS = "0123456789"


def cut_after_score_prefix(text: str, prompts: Any | None = None) -> str | None:
    """`text` up to and including the first score prefix inside its answer block, or None
    when there is no answer block or no score prefix in it."""
    t = tags(prompts)
    opened = text.find(t.answer_open)
    if opened < 0:
        return None
    at = text.find(t.score_prefix, opened + len(t.answer_open))
    return None if at < 0 else text[:at + len(t.score_prefix)]


@dataclass
class PDScores:
    """Teacher-forced ground-truth digit probabilities of one sample (M digits each)."""

    sample_id: str
    gt: str                              # the teacher-forced string, e.g. "3.7"
    z_ref: list[float]                   # no-think prompt + fixed prefix
    z_think: list[list[float] | None]    # per rollout; None: no score prefix in its answer
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
        self.cache_stats = {"hits": 0, "misses": 0}

    def _digit_token_ids(self) -> list[int]:
        ids = []
        for digit in DIGITS:
            encoded = self.builder.encode(digit)
            if len(encoded) != 1:
                raise ValueError(f"the tokenizer splits {digit!r} into {encoded}; the PD reward "
                                 "needs one token per digit")
            ids.append(encoded[0])
        return ids

    def _spacing(self) -> str:
        from conf.prompts import default_prompts

        prompts = self.builder.prompts or default_prompts()
        return str(prompts.score_spacing)

    def _no_think_prefix(self) -> str:
        from conf.prompts import default_prompts

        prompts = self.builder.prompts or default_prompts()
        return str(prompts.no_think_prefix)

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
            return []
        params = SamplingParams(max_tokens=1, temperature=0.0,
                                logprob_token_ids=list(self.digit_ids))
        outs = self._run(prompts, params)
        return [{tok: entry.logprob for tok, entry in out.outputs[0].logprobs[0].items()}
                for out in outs]

    def _forced_requests(self, prepared: Any, continuation: str,
                         gt: str) -> tuple[list[dict], list[int]]:
        """One request per ground-truth digit, and the digit each one asks about."""
        context = self.builder.encode(continuation) if continuation else []
        gt_ids, digit_at = self._gt_tokens(gt)
        requests = [prepared.engine_input(context + gt_ids[:k]) for k in digit_at]
        return requests, [gt_ids[k] for k in digit_at]

    def pd_scores(self, samples: list[dict], rollout_texts: list[list[str]]) -> list[PDScores]:
        """z_think for every think rollout and z_ref for every sample (Eqs. 2-4)."""
        from rewards import mos_digits

        if len(samples) != len(rollout_texts):
            raise ValueError(f"{len(samples)} samples but {len(rollout_texts)} rollout lists")
        version = self.receiver.version
        if version != self._ref_cache_version:
            self._ref_cache, self._ref_cache_version = {}, version
        spacing = self._spacing()
        requests: list[dict] = []
        targets: list[int] = []
        plan = []   # per sample: (gt, ref slice or cached list, [think slice or None, ...])
        for sample, texts in zip(samples, rollout_texts):
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
                                                   self._no_think_prefix() + spacing, gt)
                ref = slice(len(requests), len(requests) + len(reqs))
                requests += reqs
                targets += tgts
            think_prompt = self.builder.prepare(sample, "think")
            slices: list[slice | None] = []
            for text in texts:
                cut = cut_after_score_prefix(text, self.builder.prompts)
                if cut is None:
                    slices.append(None)
                    continue
                reqs, tgts = self._forced_requests(think_prompt, cut + spacing, gt)
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
                weights_version=version))
        return results

    def digit_distribution(self, samples: list[dict], mode: str,
                           rollout_texts: list[str | None] | None = None,
                           digits_before: str = "") -> list[list[float] | None]:
        """p("0") .. p("9") (full-vocabulary softmax) right after the score prefix.

        no_think: prompt + the fixed prefix; think: prompt + each sample's rollout text cut
        after its score prefix (None where it has none). `digits_before` is appended first
        ("3." asks about the tenths digit). Eq. 8 renormalises p("0") .. p("4").
        """
        if mode == "think" and (rollout_texts is None or len(rollout_texts) != len(samples)):
            raise ValueError("think mode needs one rollout text per sample")
        spacing = self._spacing()
        requests, where = [], []
        for i, sample in enumerate(samples):
            if mode == "no_think":
                continuation = self._no_think_prefix()
            else:
                continuation = cut_after_score_prefix(rollout_texts[i] or "", self.builder.prompts)
                if continuation is None:
                    where.append(None)
                    continue
            prepared = self.builder.prepare(sample, mode)
            tail = self.builder.encode(continuation + spacing)
            if digits_before:
                tail += self._gt_tokens(digits_before)[0]
            where.append(len(requests))
            requests.append(prepared.engine_input(tail))
        logprobs = self._next_digit_logprobs(requests)
        return [None if w is None else [math.exp(logprobs[w][tok]) for tok in self.digit_ids]
                for w in where]

    def cache_info(self) -> dict:
        """z_ref cache: hits, misses, entries, and the weights version it belongs to."""
        return {**self.cache_stats, "entries": len(self._ref_cache),
                "version": self._ref_cache_version}


def start_scoring_actor(settings: EngineSettings, num_cpus: float, num_gpus: float = 0.0,
                        pd_digits: int = 2, cpu_slot: int | None = None,
                        max_restarts: int = 4) -> Any:
    """The ScoringActor as the Ray actor "scoring-actor" (CPU slot: after the engines)."""
    from dataclasses import replace

    if cpu_slot is not None:
        settings = replace(settings, cpu_slot=cpu_slot)
    return start_engine_actor(ScoringActor, settings, "scoring-actor", num_cpus, num_gpus,
                              max_restarts, pd_digits=pd_digits)
