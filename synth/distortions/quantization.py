"""Quantization family (synth-spec.md, "quantization"): multi-Otsu, median cut, histogram-
equalised bins and uniform bit-depth reduction, each per RGB channel.

All four are per-channel look-up tables computed from the channel's 256-bin histogram, so
the cost does not grow with the number of classes. Multi-Otsu is solved exactly by dynamic
programming instead of skimage's exhaustive search (which with 15 classes takes seconds
per channel): maximising Otsu's between-class variance is minimising the within-class sum
of squared deviations, a sum over contiguous histogram segments, so the best split into k
classes ends with a best split into k - 1 classes. Each class is then replaced by its mean
value, which makes every one of these a quantizer in the usual sense: the values are
snapped to a few representatives, and the image's brightness is left where it was. (The
reference maps Otsu's class k to min + k (max - min) / classes, a brightness shift on top
of the quantization, and runs Otsu on 30 bins.)

Statistics come from the pixels given: for a region distortion, the box alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from synth.distortions._pixels import apply_lut

OTSU_CLASSES = (15, 11, 8, 5, 3)
MEDIAN_CUT_COLOURS = (20, 15, 10, 6, 3)
HIST_BINS = (24, 16, 8, 6, 4)
UNIFORM_BITS = (5, 4, 3, 2, 1)
NO_MARGINS = (0, 0, 0, 0, 0)


def _histogram(channel: np.ndarray) -> np.ndarray:
    return np.bincount(channel.ravel(), minlength=256).astype(np.float64)


def _segment_moments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prefix sums (with a leading 0) of count, count * v and count * v^2 over the bins."""
    values = np.arange(len(counts), dtype=np.float64)
    zeros = np.zeros(1)
    return (np.concatenate([zeros, np.cumsum(counts)]),
            np.concatenate([zeros, np.cumsum(counts * values)]),
            np.concatenate([zeros, np.cumsum(counts * values * values)]))


def otsu_segments(counts: np.ndarray, classes: int) -> list[int]:
    """Start bins of the `classes` contiguous segments minimising the within-class variance.

    `counts` is a histogram whose first and last bins are non-empty. Returns the first bin
    of each class after the first (classes - 1 numbers, increasing). Exact, O(classes n^2).
    """
    n = len(counts)
    s0, s1, s2 = _segment_moments(counts)
    start = np.arange(n)[:, None]
    stop = np.arange(n)[None, :] + 1  # segment = bins start .. stop - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = s0[stop] - s0[start]
        first = s1[stop] - s1[start]
        cost = np.where(weight > 0, s2[stop] - s2[start] - first * first / weight, 0.0)
    cost[start >= stop] = np.inf
    best = cost[0].copy()  # best[j]: one class over bins 0..j
    choices = []
    for _ in range(1, classes):
        # A new last class starting at bin i >= 1 after the best split of bins 0..i-1.
        candidates = best[:-1, None] + cost[1:, :]
        arg = np.argmin(candidates, axis=0)
        best = candidates[arg, np.arange(n)]
        choices.append(arg + 1)
    starts = []
    end = n - 1
    for choice in reversed(choices):
        first_bin = int(choice[end])
        starts.append(first_bin)
        end = first_bin - 1
    return starts[::-1]


def multi_otsu_thresholds(channel: np.ndarray, classes: int) -> np.ndarray:
    """Multi-Otsu thresholds of a uint8 array, in skimage's convention.

    Each threshold is the largest value of a class (skimage.filters.threshold_multiotsu on
    an integer image returns the same numbers). Raises ValueError when the array has fewer
    distinct values than classes, as skimage does.
    """
    values = np.asarray(channel)
    if values.dtype != np.uint8:
        raise ValueError(f"channel must be uint8, got {values.dtype}")
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")
    counts = _histogram(values)
    present = np.flatnonzero(counts)
    if len(present) < classes:
        raise ValueError(f"channel has {len(present)} distinct values, fewer than the "
                         f"{classes} classes asked for")
    low, high = int(present[0]), int(present[-1])
    starts = otsu_segments(counts[low:high + 1], classes)
    return np.array([low + s - 1 for s in starts], dtype=np.int64)


def _lut_from_segments(counts: np.ndarray, starts: list[int]) -> np.ndarray:
    """Map every bin to the (rounded) mean value of its segment; `starts` begin segments 2..k."""
    s0, s1, _ = _segment_moments(counts)
    table = np.arange(256, dtype=np.float64)
    edges = [0, *starts, len(counts)]
    for begin, end in zip(edges[:-1], edges[1:]):
        weight = s0[end] - s0[begin]
        if weight > 0:
            table[begin:end] = (s1[end] - s1[begin]) / weight
    return np.clip(np.rint(table), 0, 255)


def _per_channel(image: np.ndarray,
                 table_for: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    tables = np.stack([table_for(_histogram(image[..., c])) for c in range(3)], axis=1)
    return apply_lut(image, tables)


def _otsu_table(counts: np.ndarray, classes: int) -> np.ndarray:
    present = np.flatnonzero(counts)
    if len(present) <= classes:
        return np.arange(256, dtype=np.float64)  # already as coarse as asked: unchanged
    low, high = int(present[0]), int(present[-1])
    starts = [low + s for s in otsu_segments(counts[low:high + 1], classes)]
    return _lut_from_segments(counts, starts)


def quantization_otsu(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Multi-Otsu classes 15, 11, 8, 5, 3 per channel, each class set to its mean."""
    classes = OTSU_CLASSES[level - 1]
    return _per_channel(image, lambda counts: _otsu_table(counts, classes))


def median_cut_starts(counts: np.ndarray, colours: int) -> list[int]:
    """1-D median cut: split the most populous box at its median until `colours` boxes.

    A box is a range of bins; only boxes holding at least two distinct values can split.
    The cuts for fewer colours are a prefix of those for more, so fewer colours always
    means a coarser partition (and a larger error).
    """
    s0, _, _ = _segment_moments(counts)
    boxes = [(0, len(counts))]  # half-open bin ranges
    while len(boxes) < colours:
        splittable = [b for b in boxes if np.count_nonzero(counts[b[0]:b[1]]) >= 2]
        if not splittable:
            break
        begin, end = max(splittable, key=lambda b: (s0[b[1]] - s0[b[0]], -b[0]))
        occupied = begin + np.flatnonzero(counts[begin:end])
        half = (s0[begin] + s0[end]) / 2.0
        # Cut after the first occupied bin where the box's cumulative count reaches half,
        # but never after the last occupied bin (both halves must hold pixels).
        reached = occupied[s0[occupied + 1] >= half]
        cut = min(int(reached[0]), int(occupied[-2])) + 1
        boxes.remove((begin, end))
        boxes += [(begin, cut), (cut, end)]
    return sorted(b[0] for b in boxes)[1:]


def quantization_median(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Median-cut palette of 20, 15, 10, 6, 3 values per channel, each box at its mean."""
    colours = MEDIAN_CUT_COLOURS[level - 1]
    return _per_channel(
        image, lambda counts: _lut_from_segments(counts, median_cut_starts(counts, colours)))


def equal_count_starts(counts: np.ndarray, bins: int) -> list[int]:
    """Histogram-equalised bins: value v goes to bin floor(bins * F(v)), F the mid-rank CDF.

    Each bin then holds about 1/bins of the pixels; a value is never split between bins,
    so a value holding many pixels can leave neighbouring bins empty (fewer levels).
    """
    total = counts.sum()
    below = np.concatenate([[0.0], np.cumsum(counts)[:-1]])
    mid_rank = (below + counts / 2.0) / total
    bin_of = np.minimum((mid_rank * bins).astype(int), bins - 1)
    bin_of = np.maximum.accumulate(bin_of)
    return [int(v) for v in np.flatnonzero(np.diff(bin_of)) + 1]


def quantization_hist(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """24, 16, 8, 6, 4 equal-population bins per channel, each bin at its mean."""
    bins = HIST_BINS[level - 1]
    return _per_channel(
        image, lambda counts: _lut_from_segments(counts, equal_count_starts(counts, bins)))


def quantization_uniform(image: np.ndarray, level: int,
                         rng: np.random.Generator) -> np.ndarray:
    """floor(x / Q) Q with Q = 2^(8 - n), n = 5 .. 1 bits (Q = 8 .. 128)."""
    step = 2 ** (8 - UNIFORM_BITS[level - 1])
    return apply_lut(image, (np.arange(256) // step) * step)
