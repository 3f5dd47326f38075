"""RolloutEngine: the Ray actor that writes think / no-think rollouts with vLLM.

Named "rollout-engine-<i>" on the Ray dashboard. Each result carries the weights version it
was generated with; EngineGroup (actors/engine_group.py) checks it against WeightSync.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from actors.engine_host import EngineHost, start_engine_actor
from actors.engine_settings import SAMPLING_KEYS, EngineSettings


@dataclass
class Rollout:
    """One sampled completion."""

    text: str                      # tokenizer.decode(token_ids, skip_special_tokens=True)
    token_ids: list[int]
    logprobs: list[float]          # of each sampled token, as vLLM computed it
    finish_reason: str             # "stop" (EOS / stop string) or "length"
    stripped_tokens: int = 0       # image placeholder tokens removed from the completion


@dataclass
class PromptRollouts:
    """The n rollouts of one sample."""

    sample_id: str
    mode: str
    prompt_token_ids: list[int]    # placeholders expanded: what the learner must feed
    rollouts: list[Rollout] = field(default_factory=list)
    weights_version: int = 0
    # The judged (last) image's size as loaded and as the model reads it: Stage-1
    # grounding boxes convert between the two (model_inputs.prompting.box_to_model).
    original_size: tuple[int, int] = (0, 0)
    input_size: tuple[int, int] = (0, 0)
    vllm_s: float = 0.0            # seconds inside vLLM of the call that made this chunk


class RolloutEngine(EngineHost):
    """Generates rollouts; hosted as a Ray actor (see `start_rollout_engine`)."""

    role = "rollout"

    def generate(self, samples: list[dict], mode: str, n: int,
                 sampling: dict) -> list[PromptRollouts]:
        """n rollouts per sample. `sampling`: temperature, top_p, max_new_tokens (+ seed).

        Logprobs are vLLM's "raw" ones: log-softmax of the model's logits before
        temperature and top-p, i.e. the policy's own logprobs at temperature 1.
        """
        from vllm import SamplingParams

        unknown = set(sampling) - {*SAMPLING_KEYS, "seed"}
        if unknown:
            raise ValueError(f"unknown sampling keys {sorted(unknown)}; use temperature, "
                             "top_p, max_new_tokens, seed")
        params = SamplingParams(
            n=int(n), temperature=float(sampling.get("temperature", 1.0)),
            top_p=float(sampling.get("top_p", 1.0)),
            max_tokens=int(sampling.get("max_new_tokens", 256)), logprobs=0,
            seed=sampling.get("seed"), detokenize=False)
        prepared = [self.builder.prepare(s, mode) for s in samples]
        outs = self._run([p.engine_input() for p in prepared], params)
        return [PromptRollouts(sample_id=p.sample_id, mode=mode,
                               prompt_token_ids=list(out.prompt_token_ids),
                               rollouts=[self._rollout(c) for c in out.outputs],
                               weights_version=self.receiver.version,
                               original_size=p.original_sizes[-1], input_size=p.input_sizes[-1],
                               vllm_s=self.last_run_s)
                for p, out in zip(prepared, outs)]

    def _rollout(self, completion: Any) -> Rollout:
        ids = list(completion.token_ids)
        if completion.logprobs is None or len(completion.logprobs) != len(ids):
            raise RuntimeError("vLLM returned no logprob for some sampled token")
        logprobs = [entry[tok].logprob for entry, tok in zip(completion.logprobs, ids)]
        kept, kept_logprobs = strip_tokens(ids, logprobs, self.builder.vision_token_ids)
        # The text is by definition the decoding of the returned ids (vLLM's incremental
        # detokenizer, switched off, holds back a trailing partial UTF-8 character).
        text = self.builder.tokenizer.decode(kept, skip_special_tokens=True)
        return Rollout(text=text, token_ids=kept, logprobs=kept_logprobs,
                       finish_reason=str(completion.finish_reason),
                       stripped_tokens=len(ids) - len(kept))


def strip_tokens(token_ids: list[int], logprobs: list[float],
                 forbidden: frozenset[int] | set[int]) -> tuple[list[int], list[float]]:
    """Drop `forbidden` tokens (image placeholders) from a completion with their logprobs."""
    if len(token_ids) != len(logprobs):
        raise ValueError(f"{len(token_ids)} tokens but {len(logprobs)} logprobs")
    keep = [i for i, tok in enumerate(token_ids) if tok not in forbidden]
    return [token_ids[i] for i in keep], [logprobs[i] for i in keep]


def start_rollout_engine(settings: EngineSettings, index: int, num_cpus: float,
                         num_gpus: float = 0.0, max_restarts: int = 4,
                         placement: dict | None = None) -> Any:
    """Rollout engine `index` as the Ray actor "rollout-engine-<index>", bound to CPU slot
    `index` and seeded with settings.seed + index."""
    settings = replace(settings, cpu_slot=index if settings.cpu_slot is None else
                       settings.cpu_slot, seed=settings.seed + index)
    return start_engine_actor(RolloutEngine, settings, f"rollout-engine-{index}", num_cpus,
                              num_gpus, max_restarts, placement)


