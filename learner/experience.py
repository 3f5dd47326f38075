"""Experience the learner trains on, and the pure steps that turn it into model inputs.

One `PromptGroup` per prompt: the G rollouts of a prompt share its sample, mode and prompt
token ids. The driver sends sample references (image paths), never pixels: each learner
rank builds the image inputs of the sequences it trains on (learner_actor.py). The learner
flattens groups into sequences (prompt + completion), spreads them over the ranks and
micro-batches (`plan_micro_batches`) and pads each micro-batch into tensors (`collate`).
Nothing here touches a model, DeepSpeed or Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class Completion:
    """One rollout: its token ids, the sampling engine's logprob of each, its advantage."""

    completion_ids: list[int]
    old_logprobs: list[float]
    advantage: float


@dataclass
class PromptGroup:
    """G rollouts of one prompt.

    `sample` is the manifest sample the prompt was built from (absolute image paths) and
    `mode` its prompt mode; `prompt_ids` are the ids the rollout engine fed (image
    placeholders expanded), which the learner's own build must reproduce. A text-only
    prompt has sample None.
    """

    sample: dict | None
    mode: str
    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


@dataclass
class SequenceSample:
    """One training sequence (prompt + one completion), the unit spread over ranks."""

    prompt_ids: list[int]
    completion_ids: list[int]
    old_logprobs: list[float]
    advantage: float
    sample: dict | None = None
    mode: str = "no_think"

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class MicroBatch:
    """Sequences one rank runs in one forward/backward. `active=False` marks a filler that
    a rank with fewer sequences runs with zero weight: ZeRO-3 gathers parameters with
    collectives inside forward, so every rank must run the same number of forwards."""

    samples: list[SequenceSample]
    active: bool = True
    indices: list[int] = field(default_factory=list)  # positions in the flattened batch


def validate_groups(groups: list[PromptGroup]) -> None:
    """Raise ValueError naming the group and completion of the first malformed entry."""
    if not groups:
        raise ValueError("the learner got no prompt groups to train on")
    for g, group in enumerate(groups):
        if not group.prompt_ids:
            raise ValueError(f"prompt group {g} has empty prompt_ids")
        if group.sample is not None and not group.sample.get("images"):
            raise ValueError(f"prompt group {g}: sample {group.sample.get('id', '?')} lists "
                             "no images")
        if not group.completions:
            raise ValueError(f"prompt group {g} has no completions")
        for c, comp in enumerate(group.completions):
            if len(comp.completion_ids) != len(comp.old_logprobs):
                raise ValueError(
                    f"prompt group {g}, completion {c}: {len(comp.completion_ids)} token ids but "
                    f"{len(comp.old_logprobs)} old logprobs; there must be one logprob per token"
                )
            if not all(math.isfinite(x) for x in comp.old_logprobs):
                raise ValueError(f"prompt group {g}, completion {c}: an old logprob is not finite")
            if not math.isfinite(comp.advantage):
                raise ValueError(f"prompt group {g}, completion {c}: advantage is not finite")
    with_image = sum(group.sample is not None for group in groups)
    if 0 < with_image < len(groups):
        # Under ZeRO-3 a rank without images would skip the vision tower's parameter
        # gathers and stall the others.
        raise ValueError(f"{with_image} of {len(groups)} prompt groups have a sample with "
                         "images: give every prompt an image or none")


def flatten_groups(groups: list[PromptGroup]) -> list[SequenceSample]:
    """One SequenceSample per completion, in group order (sharing their group's sample)."""
    validate_groups(groups)
    return [
        SequenceSample(
            prompt_ids=list(group.prompt_ids),
            completion_ids=list(comp.completion_ids),
            old_logprobs=[float(x) for x in comp.old_logprobs],
            advantage=float(comp.advantage),
            sample=group.sample,
            mode=group.mode,
        )
        for group in groups
        for comp in group.completions
    ]


def plan_micro_batches(
    lengths: list[int], world_size: int, micro_batch_size: int
) -> list[list[list[int]]]:
    """Spread sequence indices over ranks, then cut each rank's share into micro-batches.

    Every rank gets floor or ceil of n / world sequences, chosen greedily (longest first)
    to balance token counts; within a rank, sequences of similar length share a micro-batch
    to waste little padding. Returns plan[rank][micro] = list of sequence indices; ranks
    may have fewer micro-batches than others (see `pad_plan`).
    """
    if world_size < 1 or micro_batch_size < 1:
        raise ValueError(
            f"world_size ({world_size}) and micro_batch_size ({micro_batch_size}) must be >= 1"
        )
    capacity = [len(lengths) // world_size] * world_size
    for r in range(len(lengths) % world_size):
        capacity[r] += 1
    shares: list[list[int]] = [[] for _ in range(world_size)]
    tokens = [0] * world_size
    for idx in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        open_ranks = [r for r in range(world_size) if len(shares[r]) < capacity[r]]
        rank = min(open_ranks, key=lambda r: (tokens[r], r))
        shares[rank].append(idx)
        tokens[rank] += lengths[idx]
    return [
        [share[i : i + micro_batch_size] for i in range(0, len(share), micro_batch_size)]
        for share in shares
    ]


def pad_plan(plan: list[list[list[int]]], filler_index: int = 0) -> list[list[tuple[list[int], bool]]]:
    """Give every rank the same number of micro-batches: (indices, active) pairs, the
    fillers being one sequence (`filler_index`) run with zero weight."""
    steps = max(len(micro_batches) for micro_batches in plan)
    steps = max(steps, 1)
    padded = []
    for micro_batches in plan:
        entries = [(list(m), True) for m in micro_batches]
        entries += [([filler_index], False)] * (steps - len(entries))
        padded.append(entries)
    return padded


def split_for_ranks(
    samples: list[SequenceSample], world_size: int, micro_batch_size: int
) -> list[list[MicroBatch]]:
    """Samples -> per-rank lists of MicroBatch, every rank with the same count."""
    plan = plan_micro_batches([s.num_tokens for s in samples], world_size, micro_batch_size)
    return [
        [MicroBatch([samples[i] for i in idx], active, list(idx)) for idx, active in rank_plan]
        for rank_plan in pad_plan(plan)
    ]


def loss_units(samples: list[SequenceSample], agg: str) -> int:
    """What the loss averages over: completion tokens ("token_mean") or sequences that
    have at least one token ("seq_mean"). Micro-batch losses are weighted by their share."""
    if agg == "token_mean":
        return sum(len(s.completion_ids) for s in samples)
    if agg == "seq_mean":
        return sum(1 for s in samples if s.completion_ids)
    raise ValueError(f"unknown loss aggregation {agg!r}; choose token_mean or seq_mean")


def collate(
    samples: list[SequenceSample],
    pad_token_id: int,
    image_token_id: int | None = None,
    video_token_id: int | None = None,
    vision: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad sequences (right padding) into the tensors of one forward pass.

    `vision` holds each sequence's (pixel_values, image_grid_thw) as the Qwen2-VL processor
    returns them for its prompt (None: text-only sequences). Returns input_ids,
    attention_mask [B, L]; mm_token_type_ids [B, L] (0 text, 1 image, 2 video: transformers
    5 computes Qwen2.5-VL's 3D rope positions only when it is given); pixel_values /
    image_grid_thw concatenated in sequence order (the model matches image features to
    image tokens in order) when `vision` is given; and for the loss, aligned [B, T] with T
    the longest completion: logit_positions (the position whose logits predict each
    completion token: prompt_len + k - 1), completion_ids, old_logprobs, completion_mask;
    and advantages [B].
    """
    if not samples:
        raise ValueError("collate needs at least one sequence")
    if vision is not None and len(vision) != len(samples):
        raise ValueError(f"{len(vision)} image inputs for {len(samples)} sequences")
    batch = len(samples)
    seq_len = max(s.num_tokens for s in samples)
    comp_len = max(1, max(len(s.completion_ids) for s in samples))
    input_ids = torch.full((batch, seq_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(batch, seq_len, dtype=torch.long)
    logit_positions = torch.zeros(batch, comp_len, dtype=torch.long)
    completion_ids = torch.full((batch, comp_len), pad_token_id, dtype=torch.long)
    old_logprobs = torch.zeros(batch, comp_len, dtype=torch.float32)
    completion_mask = torch.zeros(batch, comp_len, dtype=torch.float32)
    for b, s in enumerate(samples):
        ids = s.prompt_ids + s.completion_ids
        n_prompt, n_comp = len(s.prompt_ids), len(s.completion_ids)
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
        if n_comp:
            logit_positions[b, :n_comp] = torch.arange(n_prompt - 1, n_prompt - 1 + n_comp)
            completion_ids[b, :n_comp] = torch.tensor(s.completion_ids, dtype=torch.long)
            old_logprobs[b, :n_comp] = torch.tensor(s.old_logprobs, dtype=torch.float32)
            completion_mask[b, :n_comp] = 1.0
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "logit_positions": logit_positions,
        "completion_ids": completion_ids,
        "old_logprobs": old_logprobs,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
    }
    mm_types = torch.zeros_like(input_ids, dtype=torch.int32)
    if image_token_id is not None:
        mm_types[input_ids == image_token_id] = 1
    if video_token_id is not None:
        mm_types[input_ids == video_token_id] = 2
    out["mm_token_type_ids"] = mm_types * attention_mask.to(torch.int32)
    if vision is not None:
        out["pixel_values"] = torch.cat([pixels for pixels, _ in vision], dim=0)
        out["image_grid_thw"] = torch.cat([grid for _, grid in vision], dim=0)
    return out
