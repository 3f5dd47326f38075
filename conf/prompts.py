"""The prompt templates of `conf/prompts.yaml`, filled in one place.

Every part that writes or parses a prompt or an answer (synth builders, rollout engines,
the scoring actor, rewards, evals) goes through these functions, so a template changed in
conf changes all of them together. Each function takes an optional `prompts` node (the
`prompts` section of a loaded config, where a user may have overridden a template); without
it the file's defaults are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from conf.loader import CONF_DIR

MODES = ("think", "no_think")


@lru_cache(maxsize=1)
def default_prompts() -> DictConfig:
    """The `prompts` section of conf/prompts.yaml, read once."""
    node = OmegaConf.load(CONF_DIR / "prompts.yaml").prompts
    OmegaConf.set_readonly(node, True)
    return node


def _p(prompts: Any | None) -> Any:
    return default_prompts() if prompts is None else prompts


def tags(prompts: Any | None = None) -> Any:
    """The answer syntax: think_open, think_close, answer_open, answer_close, score_prefix."""
    return _p(prompts).tags


def _quoted_list(words: Sequence[str]) -> str:
    quoted = [f"'{w}'" for w in words]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def stage2_prompt(mode: str, prompts: Any | None = None) -> str:
    """The Stage-2 scoring question in "think" or "no_think" mode."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    p = _p(prompts)
    template = p.stage2_think if mode == "think" else p.stage2_no_think
    return template.format(question=p.stage2_question)


def stage1_choice_prompt(objects: Sequence[str], full_reference: bool,
                         prompts: Any | None = None) -> str:
    """Stage-1 multi-choice prompt (object / distortion class / severity)."""
    if not objects:
        raise ValueError("objects must name at least one candidate object")
    p = _p(prompts)
    return p.stage1_choice.format(
        image_intro=p.image_intro_fr if full_reference else p.image_intro_nr,
        objects=_quoted_list(list(objects)),
        classes=_quoted_list(list(p.class_words)),
        severities=_quoted_list(list(p.severity_prompt_words)),
    )


def warmup_class_prompt(prompts: Any | None = None) -> str:
    """The tiny model's warm-up question: name the distortion class of the image."""
    p = _p(prompts)
    return p.warmup_class_question.format(
        image_intro=p.image_intro_nr, classes=", ".join(f"'{w}'" for w in p.class_words))


def stage1_grounding_prompt(full_reference: bool, prompts: Any | None = None) -> str:
    """Stage-1 grounding prompt (answer: a box in the model-input pixel coordinates)."""
    p = _p(prompts)
    return p.stage1_grounding.format(
        image_intro=p.image_intro_fr if full_reference else p.image_intro_nr)


def qbench_prompt(question: str, candidates: Sequence[str], mode: str,
                  prompts: Any | None = None) -> str:
    """A multi-choice question: the question, options lettered A.., the answer instruction."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    p = _p(prompts)
    options = "\n".join(f"{chr(ord('A') + k)}. {c}" for k, c in enumerate(candidates))
    instruction = p.qbench_answer_think if mode == "think" else p.qbench_answer_no_think
    return f"{question}\n{p.qbench_options_intro}\n{options}\n{instruction}"


def severity_word(level: int, prompts: Any | None = None) -> str:
    """The word the Stage-1 prompt offers for a distortion level 1..5."""
    words = list(_p(prompts).severity_prompt_words)
    if not 1 <= int(level) <= len(words):
        raise ValueError(f"level must be in 1..{len(words)}, got {level!r}")
    return words[int(level) - 1]


def score_answer(score: str, mode: str, think: str = "", prompts: Any | None = None) -> str:
    """A well-formed Stage-2 answer, e.g. "[think]..[/think][answer]Score:3.7[/answer]".

    Used to build the cold-start targets of the tiny model and in tests; the reward
    parsers accept exactly what this writes.
    """
    t = tags(prompts)
    spacing = _p(prompts).score_spacing
    answer = f"{t.answer_open}{t.score_prefix}{spacing}{score}{t.answer_close}"
    if mode == "think":
        return f"{t.think_open}{think}{t.think_close}{answer}"
    if mode == "no_think":
        return answer
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
