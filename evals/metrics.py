"""The numbers of the paper's tables, as pure functions (numbers in, numbers out).

- `srcc`, `plcc`: Spearman and Pearson correlation of predictions with MOS (Table 3).
  `plcc(..., fit="logistic4")` first maps the predictions through the 4-parameter
  logistic that IQA papers fit before PLCC (VQEG practice):

      f(x) = (beta1 - beta2) / (1 + exp(-(x - beta3) / |beta4|)) + beta2

  Both are NaN-free: a constant input (no spread, so no correlation is defined) gives 0.0
  and a `MetricWarning`, never NaN; ties get average ranks (as scipy's spearmanr).
- `expected_score`: the probability-based score of Eq. 8.
- `group_accuracy`: mean of per-sample values per group (Tables 1, 2 and 4).

Eq. 8 as printed in the paper ends in "+5"; the text around it, the [0, 5) score scale and
the digit range 0..4 all say "+0.5": the integer digit j stands for the interval [j, j+1),
whose centre is j + 0.5, so the expectation over j is shifted by 0.5 (with +5 every score
would lie in [5, 9], outside the scale). This module uses +0.5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

PLCC_FITS = (None, "logistic4")
SCORE_DIGITS = 5  # the integer part of a score on [0, 5) is one of 0..4
BIN_CENTRE = 0.5  # Eq. 8's shift (see the module docstring)
SCORE_KINDS = ("logits", "logprobs", "probs")
MIN_LOGISTIC_PAIRS = 5


class MetricWarning(UserWarning):
    """A metric was asked of data where it is not defined and a stated stand-in was used."""


def _pair(pred: Iterable[float], gt: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(list(pred) if not isinstance(pred, np.ndarray) else pred, dtype=np.float64)
    g = np.asarray(list(gt) if not isinstance(gt, np.ndarray) else gt, dtype=np.float64)
    if p.ndim != 1 or g.ndim != 1:
        raise ValueError(f"pred and gt must be 1-D sequences, got shapes {p.shape} and {g.shape}")
    if p.size != g.size:
        raise ValueError(f"pred has {p.size} values but gt has {g.size}; they must pair up")
    if p.size < 2:
        raise ValueError(f"a correlation needs at least 2 pairs, got {p.size}")
    for name, a in (("pred", p), ("gt", g)):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] = {a[bad[0]]} is not finite; drop or fix that "
                             f"sample ({bad.size} non-finite values in {name})")
    return p, g


def _pearson(x: np.ndarray, y: np.ndarray, what: str) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    nx, ny = math.sqrt(float(dx @ dx)), math.sqrt(float(dy @ dy))
    # Relative test: values like 1e6 + tiny rounding noise are constant for our purpose.
    scale_x = max(float(np.abs(x).max()), 1.0) * 1e-12 * math.sqrt(x.size)
    scale_y = max(float(np.abs(y).max()), 1.0) * 1e-12 * math.sqrt(y.size)
    if nx <= scale_x or ny <= scale_y:
        which = "pred" if nx <= scale_x else "gt"
        warnings.warn(f"{what}: {which} is constant, so no correlation is defined; "
                      "reporting 0.0", MetricWarning, stacklevel=3)
        return 0.0
    return float(np.clip((dx @ dy) / (nx * ny), -1.0, 1.0))


def srcc(pred: Iterable[float], gt: Iterable[float]) -> float:
    """Spearman rank correlation of `pred` with `gt` (ties get their average rank).

    Returns 0.0 with a MetricWarning when either side is constant. Raises ValueError for
    unequal lengths, fewer than 2 pairs or non-finite values.
    """
    from scipy.stats import rankdata

    p, g = _pair(pred, gt)
    return _pearson(rankdata(p), rankdata(g), "SRCC")


def logistic4(x: np.ndarray | float, beta1: float, beta2: float, beta3: float,
              beta4: float) -> np.ndarray:
    """(beta1 - beta2) / (1 + exp(-(x - beta3) / |beta4|)) + beta2, overflow-free."""
    from scipy.special import expit

    scale = max(abs(float(beta4)), 1e-12)
    return (beta1 - beta2) * expit((np.asarray(x, dtype=np.float64) - beta3) / scale) + beta2


def _logistic4_jacobian(x: np.ndarray, beta1: float, beta2: float, beta3: float,
                        beta4: float) -> np.ndarray:
    # Analytic derivatives: MINPACK's finite differences step by |beta| * 1e-8, which is
    # lost in rounding when a start value is near 0 (beta3 = mean prediction often is).
    from scipy.special import expit

    scale = max(abs(float(beta4)), 1e-12)
    u = (np.asarray(x, dtype=np.float64) - beta3) / scale
    s = expit(u)
    slope = (beta1 - beta2) * s * (1.0 - s)
    return np.column_stack([s, 1.0 - s, -slope / scale,
                            -slope * u / scale * (1.0 if beta4 >= 0 else -1.0)])


@dataclass(frozen=True)
class Logistic4Fit:
    """The fitted logistic, or why it was not used.

    `converged` False means the fit failed (`reason` says how) and `params` are the
    initial guess; `plcc(fit="logistic4")` then falls back to plain PLCC.
    """

    params: tuple[float, float, float, float]
    converged: bool
    reason: str = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return logistic4(x, *self.params)


def logistic4_initial_guess(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float, float]:
    """The starting point of the fit: upper/lower asymptotes at max/min MOS, the centre at
    the mean prediction, the width one standard deviation of the predictions.

    For predictions that fall as MOS rises the asymptotes swap, so the start already has
    the right direction. The width must be on the scale of the predictions: a fixed value
    (some codes use 0.5 or 1) starts the fit in a flat or step-like region when scores
    come on 0..100 or 0..1 scales.
    """
    hi, lo = float(gt.max()), float(gt.min())
    if np.corrcoef(pred, gt)[0, 1] < 0:
        hi, lo = lo, hi
    return hi, lo, float(pred.mean()), float(pred.std()) or 1.0


def fit_logistic4(pred: Iterable[float], gt: Iterable[float], maxfev: int = 20000) -> Logistic4Fit:
    """Least-squares fit of `logistic4` mapping `pred` to `gt` (scipy's curve_fit).

    Never raises for a failed fit: it returns `converged=False` with the reason when
    there are fewer than 5 pairs (4 parameters would pass through any 4 points), when
    curve_fit does not converge within `maxfev` evaluations, returns non-finite
    parameters, or maps every prediction to one value (a step that hides the ranking).
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    p, g = _pair(pred, gt)
    if np.ptp(p) == 0 or np.ptp(g) == 0:
        return Logistic4Fit((0.0, 0.0, 0.0, 1.0), False, "constant input")
    start = logistic4_initial_guess(p, g)
    if p.size < MIN_LOGISTIC_PAIRS:
        # Four parameters through four points or fewer always "fit": a meaningless 1.0.
        return Logistic4Fit(start, False, f"{p.size} pairs; the 4-parameter fit needs at "
                                          f"least {MIN_LOGISTIC_PAIRS}")
    try:
        with warnings.catch_warnings():
            # "Covariance could not be estimated" concerns error bars we do not use.
            warnings.simplefilter("ignore", OptimizeWarning)
            with np.errstate(over="ignore", invalid="ignore"):
                params, _ = curve_fit(logistic4, p, g, p0=start, jac=_logistic4_jacobian,
                                      maxfev=maxfev)
    except (RuntimeError, ValueError) as err:
        return Logistic4Fit(start, False, f"curve_fit failed: {err}")
    params = tuple(float(v) for v in params)
    if not all(math.isfinite(v) for v in params):
        return Logistic4Fit(start, False, "curve_fit returned non-finite parameters")
    mapped = logistic4(p, *params)
    if np.ptp(mapped) <= 1e-12 * max(float(np.abs(mapped).max()), 1.0):
        return Logistic4Fit(start, False, "the fitted curve is flat over the predictions")
    return Logistic4Fit(params, True)


def plcc(pred: Iterable[float], gt: Iterable[float], fit: str | None = None) -> float:
    """Pearson linear correlation of `pred` with `gt`.

    fit None: plain Pearson. fit "logistic4": Pearson of `fit_logistic4(pred, gt)(pred)`
    with `gt`; when that fit does not converge, plain Pearson is returned with a
    MetricWarning that says why (Pearson is invariant to a linear map, so this is the
    result of the best linear fit). A constant input gives 0.0 with a MetricWarning.
    """
    if fit not in PLCC_FITS:
        raise ValueError(f"fit must be one of {PLCC_FITS}, got {fit!r}")
    p, g = _pair(pred, gt)
    if fit is None:
        return _pearson(p, g, "PLCC")
    if np.ptp(p) == 0 or np.ptp(g) == 0:
        return _pearson(p, g, "PLCC (logistic4)")
    fitted = fit_logistic4(p, g)
    if not fitted.converged:
        warnings.warn(f"PLCC: the 4-parameter logistic fit did not converge "
                      f"({fitted.reason}); reporting plain (linear) PLCC instead",
                      MetricWarning, stacklevel=2)
        return _pearson(p, g, "PLCC")
    return _pearson(fitted(p), g, "PLCC (logistic4)")


def _softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    e = np.exp(x - top)
    return e / e.sum(axis=-1, keepdims=True)


def digit_probabilities(values: Sequence[float] | np.ndarray, kind: str = "logits") -> np.ndarray:
    """The distribution over the integer digits 0..4 that Eq. 8 averages, shape (..., 5).

    kind "logits" (Eq. 8's P) or "logprobs" (the same up to a constant: vLLM's logprob is
    the logit minus log Z, and softmax ignores a shared shift) are softmax-ed; "probs"
    (non-negative, e.g. the five digits' probabilities out of the whole vocabulary) are
    renormalised to sum 1, which equals the softmax of their logarithms. -inf logits
    (tokens outside vLLM's top-k) count as probability 0.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] != SCORE_DIGITS:
        raise ValueError(f"Eq. 8 needs one value per digit 0..{SCORE_DIGITS - 1} on the last "
                         f"axis, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError("digit values contain NaN")
    if kind == "probs":
        if (a < 0).any() or np.isinf(a).any():
            raise ValueError("probabilities must be finite and >= 0")
        total = a.sum(axis=-1, keepdims=True)
        if (total <= 0).any():
            raise ValueError("all five digit probabilities are 0: the model put no mass on "
                             "any digit, Eq. 8 is undefined")
        return a / total
    if np.isposinf(a).any():
        raise ValueError(f"{kind} must not be +inf")
    if np.isneginf(a).all(axis=-1).any():
        raise ValueError(f"all five digit {kind} are -inf: Eq. 8 is undefined")
    return _softmax(a)


def expected_score(digit_probs_or_logits: Sequence[float] | np.ndarray,
                   kind: str = "logits") -> float:
    """Eq. 8: Q = sum_{j=0..4} j * softmax(P)_j + 0.5, from the five digit values of one
    score (P: the logits of tokens "0".."4" at the integer position of the answer).

    `kind` says what the five values are ("logits", "logprobs" or "probs", see
    `digit_probabilities`). Uniform values give 2.5; all mass on digit j gives j + 0.5.
    Returns a float in [0.5, 4.5].
    """
    probs = digit_probabilities(digit_probs_or_logits, kind)
    if probs.ndim != 1:
        raise ValueError(f"expected_score takes one distribution (5 values), got shape "
                         f"{probs.shape}; use expected_scores for a batch")
    return float(probs @ np.arange(SCORE_DIGITS) + BIN_CENTRE)


def expected_scores(rows: Sequence[Sequence[float]] | np.ndarray, kind: str = "logits") -> np.ndarray:
    """`expected_score` of each row of an (N, 5) array."""
    probs = digit_probabilities(rows, kind)
    return probs @ np.arange(SCORE_DIGITS) + BIN_CENTRE


def group_accuracy(values: Iterable[float], groups: Iterable[Hashable],
                   order: Sequence[Hashable] | None = None) -> dict[Hashable, dict[str, float]]:
    """{group: {"mean": mean of its values, "n": count}} for per-class / per-type tables.

    `values` are per-sample numbers (1/0 for right/wrong, or an IoU). Groups listed in
    `order` come first in that order (a listed group without samples gets mean None and
    n 0, so a table keeps its columns); others follow in order of first appearance.
    """
    vals = list(values)
    keys = list(groups)
    if len(vals) != len(keys):
        raise ValueError(f"{len(vals)} values but {len(keys)} group labels")
    sums: dict[Hashable, list[float]] = {}
    for v, k in zip(vals, keys):
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"value {v} for group {k!r} is not finite")
        sums.setdefault(k, []).append(v)
    out: dict[Hashable, dict[str, float]] = {}
    for k in list(order or []) + [k for k in sums if k not in (order or [])]:
        got = sums.get(k, [])
        out[k] = {"mean": (sum(got) / len(got)) if got else None, "n": len(got)}
    return out
