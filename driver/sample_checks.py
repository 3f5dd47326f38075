"""Every sample of a run checked before the cluster starts, training and held-out alike.

The check is the one the engines' prompt builder applies (model_inputs.prompting.
check_sample): the image files decode, no side is below one visual token, the aspect
ratio and image count are readable, the prompt fits rollout.max_model_len beside the
answer. A sample that fails is skipped and counted, never sent to an engine (where it
would fail a whole batch, or kill validation); a run whose usable training samples cannot
fill one step's batch is refused with one line before any actor starts.

Checking decodes every image once; the images are decoded on a few threads (Pillow's
decoders release the GIL), and the data stream reuses the results instead of decoding
again when a sample first comes up.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

Check = Callable[[dict[str, Any]], None]
MAX_WORKERS = 8
SHOWN = 3   # skipped samples named in a note; the rest are counted


@dataclass
class Checked:
    """The usable samples (in their order) and {id: reason} of the skipped ones."""

    usable: list[dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def usable_ids(self) -> set[str]:
        """The ids of the usable samples."""
        return {str(s.get("id")) for s in self.usable}


def _reason(check: Check, sample: dict[str, Any]) -> str | None:
    try:
        check(sample)
    except (ValueError, OSError) as err:   # FileNotFoundError is an OSError
        return str(err)
    return None


def check_all(samples: Sequence[dict[str, Any]], check: Check,
              workers: int | None = None) -> Checked:
    """`check` on every sample (on up to `workers` threads): usable and skipped ones."""
    if not samples:
        return Checked([])
    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1, len(samples))
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(functools.partial(_reason, check), samples))
    out = Checked([])
    for sample, reason in zip(samples, reasons):
        if reason is None:
            out.usable.append(sample)
        else:
            out.skipped[str(sample.get("id"))] = reason
    return out


def skipped_note(what: str, checked: Checked) -> str | None:
    """One line on the skipped samples of `what` (None when none was), naming the first
    few and why."""
    if not checked.skipped:
        return None
    total = len(checked.usable) + len(checked.skipped)
    shown = "; ".join(list(checked.skipped.values())[:SHOWN])
    more = f" (and {len(checked.skipped) - SHOWN} more)" if len(checked.skipped) > SHOWN else ""
    return (f"{what}: {len(checked.skipped)} of {total} samples skipped, counted in the "
            f"metrics: {shown}{more}")


def sample_check(cfg: Any, model_path: str | None = None) -> Check:
    """The check of conf's stage, pixel limits and prompts; with `model_path` (the model's
    processor counts the prompt's text tokens) also that every prompt fits
    rollout.max_model_len beside rollout.max_new_tokens."""
    from model_inputs.prompting import MAX_IMAGES_PER_PROMPT, PromptBuilder, check_sample

    limits: dict[str, Any] = {}
    if model_path is not None:
        builder = PromptBuilder(model_path, cfg.model.min_pixels, cfg.model.max_pixels,
                                cfg.prompts, trust_remote_code=cfg.model.trust_remote_code)
        limits = {"factor": builder.factor, "text_tokens": builder.text_tokens,
                  "max_prompt_tokens": cfg.rollout.max_model_len - cfg.rollout.max_new_tokens}
    # Stage-2 trains think prompts, the longer of its two templates.
    return functools.partial(check_sample, mode="think" if cfg.stage == 2 else "no_think",
                             min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels,
                             max_images=MAX_IMAGES_PER_PROMPT, prompts=cfg.prompts, **limits)
