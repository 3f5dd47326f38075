"""Stage-2 scoring rewards: answer (Eq. 1), probability difference (Eqs. 2-4), final (Eq. 5).

Numbers are compared as the decimals they were written as (`Decimal(repr(x))`), not as
binary floats, where the paper's arithmetic is decimal: |4.1 - 3.6| is 0.5 on paper and
0.4999999999999996 in floats, which would pass Eq. 1's strict `< 0.5`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from numbers import Real
from typing import Any

import numpy as np

from conf.choices import PD_WEIGHT_SCHEMES

# Probabilities come from exp(log_softmax); rounding can put them a hair above 1.
PROB_TOL = 1e-6
MOS_MAX = 5
MAX_DIGITS = 17  # a double carries about 17 significant decimal digits
# Rewards are sums of a few weighted terms of order 1; far beyond, sums, means and stds
# overflow a float. Weights or rewards beyond are a bug upstream, refused, not turned
# into inf or NaN.
REWARD_LIMIT = 1e100


def finite_float(value: Any, name: str) -> float:
    """`value` as a float; TypeError for non-numbers (bools included), ValueError for NaN/inf."""
    if type(value) is float:  # the common case, without the slower ABC check below
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError as err:  # an int beyond the float range
        raise ValueError(f"{name} is too large for a float: {value!r}") from err
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {result!r}")
    return result


def _decimal(x: float) -> Decimal:
    return Decimal(repr(float(x)))


def answer_reward(pred: float | None, mos: float, eps: float = 0.5) -> float:
    """Eq. 1: 1.0 when `pred` is a number with |pred - mos| < eps, else 0.0.

    A missing (None) or non-finite prediction earns 0.0: it is the model's output, and a
    bad output is simply wrong. A non-finite `mos` or a non-positive `eps` is a data or
    config error and raises ValueError; a pred that is not a number (a str, a bool) is a
    caller's bug and raises TypeError. The distance is taken in decimal arithmetic (see
    the module docstring), so a prediction exactly eps away earns 0.0 as Eq. 1 says.
    """
    mos = finite_float(mos, "mos")
    eps = finite_float(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps!r} (reward.eps; the paper uses 0.5)")
    if pred is None:
        return 0.0
    if isinstance(pred, np.ndarray) and pred.ndim == 0:
        pred = pred.item()
    if isinstance(pred, bool) or not isinstance(pred, Real):
        raise TypeError(f"pred must be a number or None (extract_score's result), "
                        f"got {type(pred).__name__}")
    try:
        pred = float(pred)
    except OverflowError:  # an int beyond the float range: a wrong answer like inf
        return 0.0
    if not math.isfinite(pred):
        return 0.0
    gap = abs(pred - mos) - eps
    # Float rounding moves the gap by a few ulps of the largest operand; only when it lies
    # that close to 0 can the float answer differ from the decimal one.
    if abs(gap) > 1e-9 * max(1.0, abs(pred), abs(mos), eps):
        return 1.0 if gap < 0 else 0.0
    return 1.0 if abs(_decimal(pred) - _decimal(mos)) < _decimal(eps) else 0.0


def answer_rewards(preds: Any, mos: Any, eps: float = 0.5) -> np.ndarray:
    """answer_reward element-wise on broadcast arrays (a NaN/inf prediction: none made).

    Equal to answer_reward element for element, including the decimal comparison at the
    boundary; vectorised because the loop scores B x G rollouts per step.
    """
    p, m = np.broadcast_arrays(np.asarray(preds, dtype=float), np.asarray(mos, dtype=float))
    if not np.isfinite(m).all():
        raise ValueError("mos must be finite; every image needs its ground-truth score")
    eps = finite_float(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps!r} (reward.eps; the paper uses 0.5)")
    usable = np.isfinite(p)
    p0 = np.where(usable, p, 0.0)
    gap = np.abs(p0 - m) - eps
    scale = np.maximum(np.maximum(1.0, eps), np.maximum(np.abs(p0), np.abs(m)))
    out = np.where(usable & (gap < 0), 1.0, 0.0)
    # Same boundary rule as answer_reward: near-ties are settled in decimal arithmetic.
    for idx in zip(*np.nonzero(usable & (np.abs(gap) <= 1e-9 * scale))):
        out[idx] = answer_reward(float(p[idx]), float(m[idx]), eps)
    return out


def _positive_int(m: Any, name: str, upper: int = MAX_DIGITS) -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= upper:
        raise ValueError(f"{name} must be an integer in 1..{upper}, got {m!r}")
    return int(m)


def digit_weights(m: int) -> list[float]:
    """Eq. 2's weights [1, 0.1, ..., 10^(1-m)] for an m-digit MOS (the paper uses m = 2).

    Each weight is the double nearest to the decimal power of ten.
    """
    m = _positive_int(m, "m")
    return [float(f"1e-{j}") for j in range(m)]


def pd_weight_vector(m: int, scheme: str = "paper") -> list[float]:
    """The per-digit weights of the PD reward for `reward.pd_weights`.

    "paper": digit_weights(m), Eq. 2. "reference": the authors' public code, which uses
    only the probability of the tenths digit (the first decimal), unweighted: a one-hot
    vector with 1.0 at index 1 ([0, 1] for m = 2). It needs m >= 2.
    """
    m = _positive_int(m, "m")
    if scheme == "paper":
        return digit_weights(m)
    if scheme == "reference":
        if m < 2:
            raise ValueError("the 'reference' PD weights use the tenths digit, so they need "
                             f"reward.pd_digits >= 2, got {m}")
        return [1.0 if j == 1 else 0.0 for j in range(m)]
    raise ValueError(f"scheme must be one of {PD_WEIGHT_SCHEMES}, got {scheme!r} "
                     "(reward.pd_weights)")


def _prob_array(z: Any, name: str) -> np.ndarray:
    arr = np.asarray(z, dtype=float)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(f"{name} holds a non-finite probability at index {bad}; the scoring "
                         "actor must give exp(logprob) of every ground-truth digit")
    if arr.size and (arr.min() < 0 or arr.max() > 1 + PROB_TOL):
        raise ValueError(f"{name} must hold probabilities in [0, 1], got values in "
                         f"[{arr.min()!r}, {arr.max()!r}]")
    return np.minimum(arr, 1.0)


def _weights_for(weights: Any, m: int) -> np.ndarray:
    if weights is None:
        return np.asarray(digit_weights(m))
    w = np.asarray(weights, dtype=float)
    if w.shape != (m,) or not np.isfinite(w).all():
        raise ValueError(f"weights must be {m} finite numbers (one per MOS digit), got {weights!r}")
    return w


def _weighted_sum(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    # Left to right, as Eq. 2 is written, and the same float operations for one rollout
    # and for a batch, so that batch_pd_rewards equals pd_reward to the last bit.
    total = w[0] * z[..., 0]
    for j in range(1, w.size):
        total = total + w[j] * z[..., j]
    return total


def pd_reward(z_think: Sequence[float], z_ref: Sequence[float],
              weights: Sequence[float] | None = None) -> float:
    """Eqs. 2-4: clip(sum_j w_j z_think_j - sum_j w_j z_ref_j, 0, 1).

    z_think / z_ref are the probabilities of the M ground-truth MOS digits (see mos_digits)
    teacher-forced after the rollout's think and after the fixed no-think prefix. `weights`
    defaults to digit_weights(M); pd_weight_vector gives the config's schemes. Raises
    ValueError when the vectors differ in length, are empty or not 1-D, or hold anything
    but probabilities in [0, 1] (NaN included: a missing probability is a scoring bug, not a
    zero reward).
    """
    zt = _prob_array(z_think, "z_think")
    zr = _prob_array(z_ref, "z_ref")
    if zt.ndim != 1 or zt.size == 0 or zt.shape != zr.shape:
        raise ValueError("z_think and z_ref must be non-empty 1-D vectors of equal length M "
                         f"(one probability per MOS digit), got shapes {zt.shape} and {zr.shape}")
    w = _weights_for(weights, zt.size)
    r_think = float(_weighted_sum(zt, w))
    r_ref = float(_weighted_sum(zr, w))
    return min(max(r_think - r_ref, 0.0), 1.0)


def batch_pd_rewards(z_think: Any, z_ref: Any, scored: Any | None = None,
                     weights: Sequence[float] | None = None) -> np.ndarray:
    """pd_reward for a whole step at once.

    z_think: [..., G, M] per-rollout digit probabilities (e.g. [B, G, M]); z_ref: [..., M]
    with one row per image (e.g. [B, M], Eq. 4's r_ref) or the same shape as z_think.
    scored: bool mask of shape z_think.shape[:-1]; rollouts not scored (no "Score:" to force
    after, or not qualified) get 0.0 and their z rows are not read, so they may be NaN.
    Returns a float array of shape z_think.shape[:-1], equal element for element to
    pd_reward. Raises ValueError on mismatched shapes or invalid scored probabilities.
    """
    zt = np.asarray(z_think, dtype=float)
    zr = np.asarray(z_ref, dtype=float)
    if zt.ndim < 2 or zt.shape[-1] == 0:
        raise ValueError(f"z_think must be [..., G, M] with M >= 1, got shape {zt.shape}")
    if zr.ndim == zt.ndim - 1:
        zr = zr[..., None, :]
    if zr.ndim != zt.ndim:
        raise ValueError(f"z_ref must be [..., M] (one row per image) or shaped like z_think "
                         f"{zt.shape}, got {np.shape(z_ref)}")
    try:
        zr = np.broadcast_to(zr, zt.shape)
    except ValueError as err:
        raise ValueError(f"z_ref of shape {np.shape(z_ref)} does not match z_think of shape "
                         f"{zt.shape}") from err
    mask = np.ones(zt.shape[:-1], bool) if scored is None else np.asarray(scored)
    if mask.shape != zt.shape[:-1] or mask.dtype != bool:
        raise ValueError(f"scored must be a bool array of shape {zt.shape[:-1]}, got "
                         f"{mask.dtype} {mask.shape}")
    zt = _prob_array(np.where(mask[..., None], zt, 0.0), "z_think (scored rollouts)")
    zr = _prob_array(np.where(mask[..., None], zr, 0.0), "z_ref (images with scored rollouts)")
    w = _weights_for(weights, zt.shape[-1])
    diff = _weighted_sum(zt, w) - _weighted_sum(zr, w)
    return np.where(mask, np.clip(diff, 0.0, 1.0), 0.0)


def mos_digits(mos: float, m: int = 2) -> str:
    """The ground-truth score string whose m digits the scoring actor teacher-forces.

    Rounding: half up to m-1 decimals, on the decimal the float was written as
    (2.675 -> "2.68" with m = 3, where float formatting gives "2.67"). m = 1 gives an
    integer string ("4"). The MOS scale is [0, 5) and Eq. 8 reads the integer digit from
    the logits of 0..4, so a value that would round to 5 (4.96 with m = 2, or 5.0 itself)
    is clamped to the largest m-digit value below 5 ("4.9"): a "5" would teach a digit the
    inference ignores. Raises ValueError for mos outside [0, 5] or non-finite (rescale the
    dataset's MOS to [0, 5), as synth/ manifests do) and for m outside 1..17.
    """
    value = finite_float(mos, "mos")
    if not 0 <= value <= MOS_MAX:
        raise ValueError(f"mos must lie in [0, {MOS_MAX}] (MOS rescaled to [0, 5)), got {value!r}")
    m = _positive_int(m, "m")
    quantum = Decimal(1).scaleb(-(m - 1))
    rounded = _decimal(abs(value)).quantize(quantum, rounding=ROUND_HALF_UP)  # abs: no "-0.0"
    rounded = min(rounded, Decimal(MOS_MAX) - quantum)
    return format(rounded, "f")


def _indicator(value: Any, name: str) -> float:
    result = finite_float(value, name)
    if result not in (0.0, 1.0):
        raise ValueError(f"{name} must be 0 or 1 (an indicator reward), got {value!r}")
    return result


def check_lambdas(lambdas: Sequence[float]) -> tuple[float, float, float]:
    """Eq. 5's (lambda_answer, lambda_format, lambda_pd) as floats, validated."""
    values = tuple(lambdas)
    if len(values) != 3:
        raise ValueError(f"lambdas must be 3 numbers (answer, format, PD; reward.lambdas), "
                         f"got {lambdas!r}")
    l1, l2, l3 = (finite_float(v, f"lambdas[{i}]") for i, v in enumerate(values))
    if max(abs(l1), abs(l2), abs(l3)) > REWARD_LIMIT:
        raise ValueError(f"lambdas must lie within +-{REWARD_LIMIT:g}, got {lambdas!r}")
    return l1, l2, l3


def final_reward(ans: float, fmt: float, pd: float | None,
                 lambdas: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Eq. 5: l1*ans + l2*fmt, plus l3*pd only when ans == fmt == 1.

    `pd` is not read for an unqualified rollout (it may be None there: the scoring actor
    need not score it). For a qualified one it must be a finite number in [0, 1], else
    ValueError. ans and fmt must be 0 or 1.
    """
    ans = _indicator(ans, "ans")
    fmt = _indicator(fmt, "fmt")
    l1, l2, l3 = check_lambdas(lambdas)
    base = l1 * ans + l2 * fmt
    if ans == 1.0 and fmt == 1.0:
        if pd is None:
            raise ValueError("pd is required for a qualified rollout (ans == fmt == 1)")
        pd = finite_float(pd, "pd")
        if not 0.0 <= pd <= 1.0:
            raise ValueError(f"pd must lie in [0, 1] (Eq. 3 clips it), got {pd!r}")
        return base + l3 * pd
    return base
