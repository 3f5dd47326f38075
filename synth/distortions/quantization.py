"""Quantization family (docs/distortions.md, "quantization"): multi-Otsu, median cut, histogram
equalisation and uniform bit-depth reduction.

The first three are DepictQA-V2's definitions (XPixelGroup/DepictQA, build_datasets/
x_distortion/quantization.py, commit 22f5795), which the paper's appendix follows; their
PSNRs are checked in tests/data/depictqa_psnr_astronaut.json. DepictQA has no uniform
quantization: that one is the appendix's own. Otsu, histogram and uniform are look-up
tables (per channel, or one for the image) computed from the 256-value histogram, so their
cost hardly grows with the number of classes; median cut is PIL's. Outputs are rounded to
the nearest grey level where the reference truncates, as everywhere in this library.

Statistics come from the pixels given: for a region distortion, the box alone.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from synth.distortions._pixels import apply_lut

OTSU_CLASSES = (15, 11, 8, 5, 3)
OTSU_BINS = 30
MEDIAN_CUT_COLOURS = (20, 15, 10, 6, 3)
HIST_BINS = (24, 16, 8, 6, 4)
# The appendix prints Q 32, 64, 96, 128, 256 beside n = 5..1 bits; Q = 2^(8 - n) follows
# the bit counts (Q = 256 would make the image black), see docs/distortions.md.
UNIFORM_BITS = (5, 4, 3, 2, 1)
NO_MARGINS = (0, 0, 0, 0, 0)
_VALUES = np.arange(256)


def _histogram(values: np.ndarray) -> np.ndarray:
    return np.bincount(values.ravel(), minlength=256)


def otsu_histogram(counts: np.ndarray,
                   bins: int = OTSU_BINS) -> tuple[np.ndarray, np.ndarray]:
    """The histogram skimage's threshold_multiotsu(x.astype(float32), nbins=bins) builds.

    `counts` is the 256-value histogram of a uint8 channel. numpy's histogram of a float32
    array spans [min, max] with float32 edges (a single value: +-0.5 around it). Returns
    (edges, bin counts).
    """
    present = np.flatnonzero(counts)
    low, high = float(present[0]), float(present[-1])
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(np.float32(low), np.float32(high), bins + 1, dtype=np.float32)
    bin_of = np.clip(np.searchsorted(edges, _VALUES.astype(np.float32), side="right") - 1,
                     0, bins - 1)
    return edges, np.bincount(bin_of, weights=counts, minlength=bins)


def otsu_threshold_bins(counts: np.ndarray, classes: int) -> np.ndarray:
    """The last bin of each class but the last, maximising Otsu's between-class sum.

    The optimum skimage's exhaustive search finds (sum over classes of S^2 / P, S and P the
    class's first and zeroth moments, bin i valued i), by dynamic programming over
    suffixes: O(classes bins^2) instead of bins^(classes - 1), which for 15 classes of 30
    bins is seconds per channel. Ties go to the smallest thresholds, as skimage's strict
    `>` over its lexicographic search. skimage counts bin 0 with value 1 in the moments and
    scores a class made of bin 0 alone as 0: both kept, so the thresholds are its own.
    With no more occupied bins than classes every occupied bin is a class (skimage raises
    when there are fewer; a small region may have fewer).
    """
    counts = np.asarray(counts, dtype=np.float64)
    occupied = np.flatnonzero(counts)
    if len(occupied) <= classes:
        return occupied[:-1]
    n = len(counts)
    values = np.arange(n, dtype=np.float64)
    values[0] = 1.0
    p0 = np.concatenate([[0.0], np.cumsum(counts)])
    p1 = np.concatenate([[0.0], np.cumsum(counts * values)])
    start, stop = np.arange(n)[:, None], np.arange(n)[None, :] + 1  # bins start..stop-1
    weight, first = p0[stop] - p0[start], p1[stop] - p1[start]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(weight > 0, first * first / weight, 0.0)
    score[0, 0] = 0.0
    score[start >= stop] = -np.inf
    # suffix[m][a]: best sum for bins a..n-1 in m classes (-inf where impossible).
    suffix = [None, np.append(score[:, n - 1], -np.inf)]
    for _ in range(2, classes):
        suffix.append(np.append(np.max(score + suffix[-1][1:][None, :], axis=1), -np.inf))
    thresholds, begin = [], 0
    for m in range(classes - 1, 0, -1):
        last = int(np.argmax(score[begin] + suffix[m][1:]))  # first maximum: smallest bin
        thresholds.append(last)
        begin = last + 1
    return np.array(thresholds, dtype=np.int64)


def _otsu_table(counts: np.ndarray, classes: int) -> np.ndarray:
    edges, bin_counts = otsu_histogram(counts)
    present = np.flatnonzero(counts)
    low, high = int(present[0]), int(present[-1])
    centres = (edges[:-1] + edges[1:]) / np.float32(2.0)
    thresholds = centres[otsu_threshold_bins(bin_counts, classes)]
    # np.digitize: a value at or above a threshold (a bin centre) is in the class above.
    label = np.searchsorted(thresholds, _VALUES.astype(np.float32), side="right")
    return np.rint(low + label * (high - low) / classes)


def quantization_otsu(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Multi-Otsu classes 15, 11, 8, 5, 3 per channel on a 30-bin histogram; class k becomes
    min + k (max - min) / classes, evenly spaced from the channel's minimum (DepictQA)."""
    classes = OTSU_CLASSES[level - 1]
    tables = [_otsu_table(_histogram(image[..., c]), classes) for c in range(3)]
    return apply_lut(image, np.stack(tables, axis=1))


def quantization_median(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """PIL's median-cut quantizer per channel, 20, 15, 10, 6, 3 grey levels (DepictQA).

    PIL itself, as the reference: its median cut (box order, split rule, box averages) has
    details no short reimplementation reproduces, and it costs about 20 ms a channel at
    512x512.
    """
    colours = MEDIAN_CUT_COLOURS[level - 1]
    out = np.empty_like(image)
    for c in range(3):
        grey = Image.fromarray(np.ascontiguousarray(image[..., c]))
        quantized = grey.quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
        out[..., c] = np.asarray(quantized.convert("L"))
    return out


def hist_table(counts: np.ndarray, bins: int) -> np.ndarray:
    """DepictQA's quantization_hist as a table, from the 256-value histogram of the image.

    The histogram of all values has `bins` bins over [0, 255]; its cumulative counts,
    stretched so that the first non-empty bin maps to 0 and the last to 255, are the output
    levels; a value v takes the level of bin round(v (bins - 1) / 255) (numpy rounds half
    to even). Bins before the first non-empty one map to 0, as the reference's masked
    array fills them; if a single bin holds every pixel, everything maps to 0 (the
    reference's 0 / 0 is masked too).
    """
    edges = np.linspace(0.0, 255.0, bins + 1)
    bin_of = np.minimum(np.searchsorted(edges, _VALUES, side="right") - 1, bins - 1)
    cumulative = np.cumsum(np.bincount(bin_of, weights=counts, minlength=bins))
    occupied = cumulative > 0
    low, high = cumulative[occupied].min(), cumulative.max()
    levels = np.zeros(bins)
    if high > low:
        levels[occupied] = (cumulative[occupied] - low) * 255.0 / (high - low)
    index = np.round(_VALUES / 255 * (bins - 1)).astype(np.int64)
    return np.rint(levels[index])


def quantization_hist(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """24, 16, 8, 6, 4 levels through the equalising CDF of the whole image's histogram."""
    return apply_lut(image, hist_table(_histogram(image), HIST_BINS[level - 1]))


def quantization_uniform(image: np.ndarray, level: int,
                         rng: np.random.Generator) -> np.ndarray:
    """floor(x / Q) Q with Q = 2^(8 - n), n = 5 .. 1 bits (Q = 8 .. 128)."""
    step = 2 ** (8 - UNIFORM_BITS[level - 1])
    return apply_lut(image, (_VALUES // step) * step)
