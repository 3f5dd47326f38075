"""Group-relative advantages: plain GRPO and the paper's clipped-positive form (Eq. 6).

Eq. 6, for a group of G rollouts of one image with final rewards r (Eq. 5):
- when at least one rollout is qualified (ans == fmt == 1): A_i = max((r_i - mean)/std, 0),
  so wrong rollouts are not pushed down while a right one exists;
- when none is: A_i = (r_i - mean - shift)/std, a small negative push on every rollout so
  that the image is not wasted.
The paper does not say which std: the default is the sample std (n - 1), as the authors'
code (`torch.std`), TRL and verl compute it, so that the reference settings reproduce their
advantages exactly; "population" (ddof = 0) is the other choice (reward.adv_std). A group of
one rollout has std 0. `eps` is added to the std: the paper's printed form divides by
std = 0 when all rewards tie (every all-wrong group with the same format reward). The
defaults shift = 2e-5, eps = 1e-4 are the authors' code's (docs/architecture.md); the paper prints
shift = 0.02 without eps, which gives a tied all-wrong group -0.02 / 1e-4 = -200 each
(conf/loader.py refuses that unless reward.max_tied_push allows it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conf.choices import ADVANTAGE_MODES, STD_KINDS
from rewards.scoring import REWARD_LIMIT, finite_float


def _rewards_array(rewards: Any, ndim: int) -> np.ndarray:
    r = np.asarray(rewards, dtype=float)
    shape = "[G]" if ndim == 1 else "[B, G]"
    if r.ndim != ndim or r.shape[-1] == 0 or r.size == 0:
        raise ValueError(f"rewards must be a non-empty {shape} array, got shape {r.shape}")
    if not np.isfinite(r).all():
        bad = np.argwhere(~np.isfinite(r))[0].tolist()
        raise ValueError(f"rewards hold a non-finite value at index {bad}; every rollout "
                         "needs a finite final reward")
    if np.abs(r).max() > REWARD_LIMIT:
        raise ValueError(f"rewards reach {np.abs(r).max():g}, beyond +-{REWARD_LIMIT:g}; "
                         "check the reward weights (reward.lambdas, ranking_weight)")
    return r


def _qualified_array(qualified: Any, shape: tuple[int, ...]) -> np.ndarray:
    q = np.asarray(qualified)
    if q.shape != shape:
        raise ValueError(f"qualified must have the shape of rewards {shape}, got {q.shape}")
    if q.dtype != bool:
        # 0/1 flags are accepted; anything else is a bug in the caller.
        if not np.isin(q, (0, 1)).all():
            raise ValueError("qualified must hold booleans or 0/1 flags (ans == fmt == 1)")
        q = q.astype(bool)
    return q


def batch_advantages(rewards: Any, qualified: Any | None, mode: str = "clipped_positive",
                     shift: float = 2e-5, eps: float = 1e-4,
                     std: str = "sample") -> np.ndarray:
    """group_advantages for a whole step: rewards and qualified are [B, G], one row a group.

    Returns a float [B, G] array, each row equal to group_advantages of that row.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"mode must be one of {ADVANTAGE_MODES} (reward.advantage), "
                         f"got {mode!r}")
    shift = finite_float(shift, "shift")
    eps = finite_float(eps, "eps")
    if abs(shift) > REWARD_LIMIT:
        raise ValueError(f"shift must lie within +-{REWARD_LIMIT:g}, got {shift!r}")
    if eps <= 0:
        raise ValueError(f"eps must be positive (reward.adv_eps), got {eps!r}: with eps = 0 "
                         "a group whose rewards all tie divides by zero")
    if std not in STD_KINDS:
        raise ValueError(f"std must be one of {STD_KINDS} (reward.adv_std), got {std!r}")
    r = _rewards_array(rewards, 2)
    mean = r.mean(axis=1, keepdims=True)
    ddof = 1 if std == "sample" and r.shape[1] > 1 else 0   # one rollout: std 0
    denom = r.std(axis=1, keepdims=True, ddof=ddof) + eps
    if mode == "clipped_positive" and qualified is None:
        raise ValueError("mode 'clipped_positive' needs the qualified mask (ans == fmt == 1)")
    with np.errstate(over="ignore"):   # an overflow is refused below, with its cause
        normalised = (r - mean) / denom
        if mode == "standard":
            out = normalised
        else:
            some_qualified = _qualified_array(qualified, r.shape).any(axis=1, keepdims=True)
            out = np.where(some_qualified, np.maximum(normalised, 0.0),
                           (r - mean - shift) / denom)
    if not np.isfinite(out).all():
        raise ValueError(f"advantages overflow a float: (reward - mean - shift) / (std + eps) "
                         f"with shift {shift:g} and eps {eps:g}; lower reward.adv_shift or "
                         "raise reward.adv_eps")
    return out


def group_advantages(rewards: Any, qualified: Any | None, mode: str = "clipped_positive",
                     shift: float = 2e-5, eps: float = 1e-4,
                     std: str = "sample") -> np.ndarray:
    """Advantages of one group of G rollouts (see the module docstring for Eq. 6).

    rewards: the G final rewards; qualified: G flags, True where ans == fmt == 1 (not read,
    and may be None, in mode "standard"). mode "clipped_positive" is Eq. 6, "standard" is
    plain GRPO (r - mean)/(std + eps); `std` "sample" (n - 1, the default) or
    "population". Returns a float array of length G; never NaN, since eps > 0 is required.
    Raises ValueError on non-finite rewards, mismatched lengths, an unknown mode or std, or
    eps <= 0.
    """
    r = _rewards_array(rewards, 1)
    q = None if qualified is None else _qualified_array(qualified, r.shape)[None]
    return batch_advantages(r[None], q, mode=mode, shift=shift, eps=eps, std=std)[0]
