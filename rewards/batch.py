"""One training step's Stage-2 rewards at once: the entry point of the training loop.

A step goes (docs/architecture.md, "One training step"):
    r = stage2_rewards(texts, mos, eps=..., lambdas=...)  # format, answer, qualified
    # the scoring actor teacher-forces mos_digits(mos) where r.qualified -> z_think, z_ref
    pd = batch_pd_rewards(z_think, z_ref, scored=r.qualified, weights=...)
    r = r.with_pd(pd)                                     # Eq. 5 with the PD term
    adv = batch_advantages(r.final, r.qualified, mode, shift, eps)
The texts are parsed once; benchmarks/bench_rewards.py measures a whole step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from conf.prompts import MODES
from rewards.parsing import grammar
from rewards.scoring import answer_rewards, check_lambdas, finite_float


@dataclass(frozen=True)
class Stage2Rewards:
    """Per-rollout rewards of one step, every array [B, G].

    score: the parsed prediction, NaN where the output has none (a data field for metrics,
    not a reward). fmt, ans: 0/1 rewards. qualified: ans == fmt == 1. pd: the PD reward as it
    enters the final reward (0 where not qualified). final: Eq. 5. lambdas: Eq. 5's weights
    the final reward was computed with.
    """

    score: np.ndarray
    fmt: np.ndarray
    ans: np.ndarray
    qualified: np.ndarray
    pd: np.ndarray
    final: np.ndarray
    lambdas: tuple[float, float, float]

    def with_pd(self, pd: Any) -> Stage2Rewards:
        """The same rollouts with the PD term of Eq. 5 set from `pd` ([B, G]).

        pd is read only where a rollout is qualified (batch_pd_rewards(scored=qualified)
        gives 0 elsewhere); raises ValueError on a shape other than [B, G] or an invalid pd
        of a qualified rollout.
        """
        pd_arr = np.asarray(pd, dtype=float)
        if pd_arr.shape != self.fmt.shape:
            raise ValueError(f"pd must be [B, G] = {self.fmt.shape}, got {pd_arr.shape}")
        final = combine_rewards(self.ans, self.fmt, pd_arr, self.lambdas)
        return replace(self, pd=np.where(self.qualified, pd_arr, 0.0), final=final)


def combine_rewards(ans: Any, fmt: Any, pd: Any, lambdas: Sequence[float]) -> np.ndarray:
    """Eq. 5 element-wise on arrays of one shape; pd is read only where ans == fmt == 1.

    Equal to final_reward element for element. Raises ValueError when shapes differ, ans or
    fmt hold anything but 0/1, or a qualified rollout's pd is not a finite number in [0, 1].
    """
    a = np.asarray(ans, dtype=float)
    f = np.asarray(fmt, dtype=float)
    d = np.asarray(pd, dtype=float)
    if not a.shape == f.shape == d.shape:
        raise ValueError(f"ans, fmt and pd must share one shape, got {a.shape}, {f.shape}, "
                         f"{d.shape}")
    for name, arr in (("ans", a), ("fmt", f)):
        if not np.isin(arr, (0.0, 1.0)).all():
            raise ValueError(f"{name} must hold 0 or 1 (indicator rewards)")
    l1, l2, l3 = check_lambdas(lambdas)
    qualified = (a == 1.0) & (f == 1.0)
    d_used = d[qualified]
    if not (np.isfinite(d_used).all() and (d_used >= 0).all() and (d_used <= 1).all()):
        raise ValueError("pd of every qualified rollout (ans == fmt == 1) must be a finite "
                         "number in [0, 1]; compute it with batch_pd_rewards(scored=qualified)")
    base = l1 * a + l2 * f
    return np.where(qualified, base + l3 * np.where(qualified, d, 0.0), base)


def _groups(texts: Any) -> list[list[str]]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError("texts must be a non-empty list of B groups, each a list of G "
                         "decoded rollouts")
    groups = [list(g) for g in texts]
    sizes = {len(g) for g in groups}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every group must hold the same number G >= 1 of rollouts, got "
                         f"sizes {sorted(sizes)}")
    for i, group in enumerate(groups):
        for j, text in enumerate(group):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}][{j}] must be a str, got {type(text).__name__}")
    return groups


def stage2_rewards(texts: Sequence[Sequence[str]], mos: Sequence[float], pd: Any | None = None,
                   *, mode: str = "think", eps: float = 0.5,
                   lambdas: Sequence[float] = (1.0, 1.0, 1.0),
                   prompts: Any | None = None, strict: bool = True) -> Stage2Rewards:
    """Format, answer, qualified and final rewards of B groups of G rollouts.

    texts: [B][G] decoded rollouts; mos: [B] ground-truth scores on [0, 5); pd: [B, G] PD
    rewards (batch_pd_rewards), read only where a rollout is qualified; None means no PD
    term yet (0). mode "think" or "no_think" picks the format (format_reward, with
    `strict` as there). Every value
    equals the scalar functions' (format_reward, extract_score, answer_reward,
    final_reward) for the same rollout. Raises on ragged groups, non-str texts, a mos
    length other than B or non-finite MOS, and on an invalid pd of a qualified rollout.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    groups = _groups(texts)
    b, g = len(groups), len(groups[0])
    mos_values = list(mos)
    if len(mos_values) != b:
        raise ValueError(f"mos must hold one score per group ({b}), got {len(mos_values)}")
    mos_values = [finite_float(v, f"mos[{i}]") for i, v in enumerate(mos_values)]
    lambdas = check_lambdas(lambdas)
    gram = grammar(prompts)

    score = np.full((b, g), np.nan)
    fmt = np.zeros((b, g))
    for i, group in enumerate(groups):
        for j, text in enumerate(group):
            value, well_formed = gram.parse(text, mode, strict)
            if value is None:
                continue  # no score: format 0 as well, since a well-formed output has one
            score[i, j] = value
            fmt[i, j] = 1.0 if well_formed else 0.0
    ans = answer_rewards(score, np.asarray(mos_values)[:, None], eps)
    qualified = (ans == 1.0) & (fmt == 1.0)
    no_pd = np.zeros((b, g))
    without_pd = Stage2Rewards(score=score, fmt=fmt, ans=ans, qualified=qualified, pd=no_pd,
                               final=combine_rewards(ans, fmt, no_pd, lambdas), lambdas=lambdas)
    return without_pd if pd is None else without_pd.with_pd(pd)
