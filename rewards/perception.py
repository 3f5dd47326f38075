"""Stage-1 (Refine-Perception) rewards: multi-choice answers and distortion-area grounding."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from conf.choices import CHOICE_MODES
from rewards.parsing import grammar
from rewards.scoring import REWARD_LIMIT, finite_float

# The grounding prompt (conf/prompts.yaml, stage1_grounding) asks for "x1,y1,x2,y2" as
# integers; ASCII digits only, for the reason given in rewards/parsing.py. Twelve digits
# are far beyond any image and keep int() and float() of a coordinate exact and cheap.
_INT = r"[-+]?[0-9]{1,12}"
_BOX = re.compile(rf"\s*({_INT})\s*,\s*({_INT})\s*,\s*({_INT})\s*,\s*({_INT})\s*", re.ASCII)
_SPACE = re.compile(r"\s+")


def _normalise(part: str) -> str:
    # Case- and space-insensitive: "High  Contrast " == "highcontrast" == "high contrast".
    return _SPACE.sub("", part).casefold()


def _gold_parts(answer: str | Sequence[str], separator: str) -> list[str]:
    parts = answer.split(separator) if isinstance(answer, str) else list(answer)
    if not parts or not all(isinstance(p, str) and p.strip() for p in parts):
        raise ValueError(f"answer must be the gold 'object {separator} distortion "
                         f"{separator} severity' string or a list of non-empty strings, "
                         f"got {answer!r}")
    return [_normalise(p) for p in parts]


def choice_parts(text: str, answer: str | Sequence[str],
                 prompts: Any | None = None) -> list[bool] | None:
    """Which parts of "[answer]object / distortion / severity[/answer]" are right.

    `answer` is the gold answer, as the same separator-joined string or as a list of its
    parts. The model's single answer block is split on the choice separator and each part
    is compared, case- and whitespace-insensitively, with the gold part at the same place.
    None for an output without exactly one answer block, or with a different number of
    parts than the gold answer (parts cannot be matched by position). Raises ValueError
    for an empty gold part, TypeError when `text` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be the decoded model output (str), got {type(text).__name__}")
    g = grammar(prompts)
    gold = _gold_parts(answer, g.choice_separator)
    content = g.answer_content(text)
    if content is None:
        return None
    parts = [_normalise(p) for p in content.split(g.choice_separator)]
    if len(parts) != len(gold):
        return None
    return [p == q for p, q in zip(parts, gold)]


def choice_reward(text: str, answer: str | Sequence[str], mode: str = "mean",
                  prompts: Any | None = None) -> float:
    """Stage-1 multi-choice reward from `choice_parts`: mode "mean" gives the fraction of
    parts right, "all" 1.0 only when every part is; an unreadable answer gets 0.0. Raises
    ValueError for an unknown mode or an empty gold part, TypeError when `text` is not a
    str."""
    if mode not in CHOICE_MODES:
        raise ValueError(f"mode must be one of {CHOICE_MODES} (reward.choice_mode), got {mode!r}")
    right = choice_parts(text, answer, prompts)
    if right is None:
        return 0.0
    if mode == "all":
        return 1.0 if all(right) else 0.0
    return sum(right) / len(right)


def _box(box: Any, name: str) -> tuple[float, float, float, float]:
    values = list(np.asarray(box, dtype=object).ravel()) if not isinstance(box, str) else None
    if values is None or len(values) != 4:
        raise ValueError(f"{name} must be 4 numbers (x1, y1, x2, y2), got {box!r}")
    x1, y1, x2, y2 = (finite_float(v, f"{name}[{i}]") for i, v in enumerate(values))
    # Reversed corners describe the same rectangle.
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2), in [0, 1].

    Corners may come in either order (they are sorted per axis). A box of zero area
    (in floating point, so an area that underflows counts) gives 0.0. Raises ValueError when a box is not 4 finite numbers.
    """
    ax1, ay1, ax2, ay2 = _box(box_a, "box_a")
    bx1, by1, bx2, by2 = _box(box_b, "box_b")
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter_w = min(ax2, bx2) - max(ax1, bx1)
    inter_h = min(ay2, by2) - max(ay1, by1)
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    union = area_a + area_b - inter
    if not math.isfinite(union) or union <= 0:
        # Coordinates near the float limit overflow the areas; such a box is not an answer.
        return 0.0
    return min(max(inter / union, 0.0), 1.0)


def parse_box(text: str, prompts: Any | None = None) -> tuple[int, int, int, int] | None:
    """The integer box "x1,y1,x2,y2" inside the single answer block of `text`, else None."""
    if not isinstance(text, str):
        raise TypeError(f"text must be the decoded model output (str), got {type(text).__name__}")
    content = grammar(prompts).answer_content(text)
    match = None if content is None else _BOX.fullmatch(content)
    if match is None:
        return None
    x1, y1, x2, y2 = (int(v) for v in match.groups())
    return x1, y1, x2, y2


def grounding_reward(text: str, gt_box: Sequence[float], prompts: Any | None = None) -> float:
    """Stage-1 grounding reward: IoU of "[answer] x1,y1,x2,y2 [/answer]" with `gt_box`.

    The prediction is integer pixel coordinates in the model's input image, as the
    grounding prompt asks; no answer block, another syntax (floats, brackets, a fifth
    number), a coordinate of more than 12 digits or a zero-area box gives 0.0. `gt_box` is
    data: a zero-area or non-finite ground truth raises ValueError rather than silently
    scoring every rollout 0.
    """
    gx1, gy1, gx2, gy2 = _box(gt_box, "gt_box")
    if gx2 - gx1 <= 0 or gy2 - gy1 <= 0:
        raise ValueError(f"gt_box {gt_box!r} has zero area; fix the sample's bbox in the manifest")
    box = parse_box(text, prompts)
    return 0.0 if box is None else iou(box, (gx1, gy1, gx2, gy2))


def perception_format_reward(text: str, prompts: Any | None = None) -> float:
    """Stage-1 format reward: 1.0 when the whole output is one answer block.

    Both Stage-1 prompts ask for "[answer]...[/answer]" and nothing else (no think:
    Stage-1 runs in no-think mode); ASCII whitespace around the block is allowed, as in
    Stage-2's format; any other text before or after it (full-width spaces included), a
    second block or a think tag anywhere gives 0.0.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be the decoded model output (str), got {type(text).__name__}")
    return 1.0 if grammar(prompts).is_single_answer(text) else 0.0


def stage1_rewards(texts: Sequence[Sequence[str]], tasks: Sequence[str],
                   answers: Sequence[Any], choice_mode: str = "mean",
                   lambdas: Sequence[float] = (1.0, 1.0),
                   prompts: Any | None = None) -> dict[str, np.ndarray]:
    """Rewards of B groups of G Stage-1 rollouts, every array [B, G].

    tasks[i] is "choice" or "grounding"; answers[i] the gold "object / class / severity"
    string or the ground-truth box in MODEL-INPUT pixels (model_inputs.prompting converts).
    Returns fmt, task (choice reward or IoU), and final = lambdas[0] * task + lambdas[1] *
    fmt, the Stage-1 analogue of Eq. 5 without a PD term.
    """
    if not (len(texts) == len(tasks) == len(answers)):
        raise ValueError(f"texts, tasks and answers must have one entry per group, got "
                         f"{len(texts)}, {len(tasks)}, {len(answers)}")
    sizes = {len(g) for g in texts}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every group must hold the same number G >= 1 of rollouts, got "
                         f"sizes {sorted(sizes)}")
    b, g = len(texts), sizes.pop()
    fmt, task = np.zeros((b, g)), np.zeros((b, g))
    for i, (group, kind, gold) in enumerate(zip(texts, tasks, answers)):
        if kind not in ("choice", "grounding"):
            raise ValueError(f"tasks[{i}] must be 'choice' or 'grounding', got {kind!r}")
        for j, text in enumerate(group):
            fmt[i, j] = perception_format_reward(text, prompts)
            task[i, j] = (choice_reward(text, gold, choice_mode, prompts) if kind == "choice"
                          else grounding_reward(text, gold, prompts))
    if len(tuple(lambdas)) != 2:
        raise ValueError(f"lambdas must be 2 numbers (task, format), got {lambdas!r}")
    w_task, w_fmt = (finite_float(x, f"lambdas[{i}]") for i, x in enumerate(lambdas))
    if max(abs(w_task), abs(w_fmt)) > REWARD_LIMIT:
        raise ValueError(f"lambdas must lie within +-{REWARD_LIMIT:g}, got {lambdas!r}")
    return {"fmt": fmt, "task": task, "final": w_task * task + w_fmt * fmt}
