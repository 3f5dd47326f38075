"""Exposure and colour families (docs/distortions.md): overexposure (brighten_*), underexposure
(darken_*), high / low contrast (contrast_*) and over / de-saturation (saturate_*).

All of them are point operations or nearly so, which is what makes them cheap: per-value
curves become 256-entry look-up tables, and the HSV operations use closed forms instead of
a round trip through HSV:
- changing only V (= max(R, G, B)) while keeping H and S is scaling the pixel by V'/V;
- changing only S (= (V - min) / V) while keeping H and V moves every channel c to
  V - (V - c) * S'/S.
Both are exact rewrites of the HSV definitions, without the hue quantisation of an 8-bit
HSV image. None of them reads neighbours: a region distortion needs no margin.
"""

from __future__ import annotations

import cv2
import numpy as np

from synth.distortions._pixels import (
    apply_lut,
    lut_from_unit_curve,
    rgb_to_ycbcr,
    round_to_uint8,
    unit_levels,
    ycbcr_to_rgb,
)

BRIGHTEN_HSV_SHIFTS = (0.1, 0.2, 0.3, 0.4, 0.5)
BRIGHTEN_RGB_SHIFTS = (0.10, 0.15, 0.20, 0.27, 0.35)
BRIGHTEN_HSV_GAMMAS = (0.70, 0.58, 0.47, 0.36, 0.25)
BRIGHTEN_RGB_GAMMAS = (0.8, 0.7, 0.6, 0.45, 0.3)
DARKEN_HSV_SHIFTS = BRIGHTEN_HSV_SHIFTS
DARKEN_RGB_SHIFTS = BRIGHTEN_RGB_SHIFTS
DARKEN_HSV_GAMMAS = (1.5, 1.8, 2.2, 2.7, 3.5)
DARKEN_RGB_GAMMAS = (1.4, 1.7, 2.1, 2.6, 3.2)
CONTRAST_STRENGTHEN_FACTORS = (1.4, 1.7, 2.1, 2.6, 4.0)
CONTRAST_STRENGTHEN_EXPONENTS = (2.0, 4.0, 6.0, 8.0, 10.0)
CONTRAST_WEAKEN_FACTORS = (0.75, 0.6, 0.45, 0.3, 0.2)
CONTRAST_WEAKEN_EXPONENTS = (1.0, 0.9, 0.8, 0.6, 0.4)
SATURATE_STRENGTHEN_HSV = (3.0, 6.0, 12.0, 20.0, 64.0)
SATURATE_STRENGTHEN_YCBCR = (2.0, 3.0, 5.0, 8.0, 16.0)
SATURATE_WEAKEN_HSV = (0.7, 0.55, 0.4, 0.2, 0.0)
SATURATE_WEAKEN_YCBCR = (0.6, 0.4, 0.2, 0.1, 0.0)

NO_MARGINS = (0, 0, 0, 0, 0)


# ---- HSV value and saturation -------------------------------------------------------

def _channel_max_min(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Pairwise over channel views: several times faster than a reduction over axis 2.
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return (np.maximum(np.maximum(red, green), blue),
            np.minimum(np.minimum(red, green), blue))


def _with_new_value(image: np.ndarray, value_curve: np.ndarray) -> np.ndarray:
    """Replace V by value_curve[V] (a float curve on 0..255) keeping hue and saturation."""
    value, _ = _channel_max_min(image)
    new_value = value_curve.astype(np.float32)[value]
    ratio = new_value / np.maximum(value, 1).astype(np.float32)
    out = image.astype(np.float32) * ratio[..., None]
    # Black has no hue and S = 0 by convention: it becomes the grey of the new V.
    black = value == 0
    out[black] = new_value[black][:, None]
    return round_to_uint8(out)


def _with_scaled_saturation(image: np.ndarray, scale: float) -> np.ndarray:
    """S' = min(1, scale * S) at the same H and V."""
    rgb = image.astype(np.float32)
    value, minimum = _channel_max_min(rgb)
    value = value[..., None]
    spread = value - minimum[..., None]  # V - min = V * S
    # S'/S = min(scale, 1/S) = min(scale, V / (V - min)); greys (spread 0) stay as they are.
    ratio = np.minimum(np.float32(scale), value / np.maximum(spread, np.float32(1e-6)))
    return round_to_uint8(value - (value - rgb) * ratio)


def _hsv_curve(shift: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    """New V (0..255 scale) for every old V: (V/255) ** gamma + shift, clipped to [0, 1]."""
    return np.clip(unit_levels() ** gamma + shift, 0.0, 1.0) * 255.0


def brighten_shift_hsv(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """V + .1 .. .5 in HSV (clipped at 1)."""
    return _with_new_value(image, _hsv_curve(shift=BRIGHTEN_HSV_SHIFTS[level - 1]))


def brighten_gamma_hsv(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """V ** gamma in HSV, gamma < 1."""
    return _with_new_value(image, _hsv_curve(gamma=BRIGHTEN_HSV_GAMMAS[level - 1]))


def darken_shift_hsv(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """V - .1 .. .5 in HSV (clipped at 0)."""
    return _with_new_value(image, _hsv_curve(shift=-DARKEN_HSV_SHIFTS[level - 1]))


def darken_gamma_hsv(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """V ** gamma in HSV, gamma > 1."""
    return _with_new_value(image, _hsv_curve(gamma=DARKEN_HSV_GAMMAS[level - 1]))


def saturate_strengthen_hsv(image: np.ndarray, level: int,
                            rng: np.random.Generator) -> np.ndarray:
    """S x 3 .. 64 in HSV (clipped at 1)."""
    return _with_scaled_saturation(image, SATURATE_STRENGTHEN_HSV[level - 1])


def saturate_weaken_hsv(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """S x .7 .. 0 in HSV (0 leaves the grey of V = max(R, G, B))."""
    return _with_scaled_saturation(image, SATURATE_WEAKEN_HSV[level - 1])


# ---- RGB curves ----------------------------------------------------------------------

def brighten_shift_rgb(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """RGB + .10 .. .35."""
    curve = unit_levels() + BRIGHTEN_RGB_SHIFTS[level - 1]
    return apply_lut(image, lut_from_unit_curve(curve))


def brighten_gamma_rgb(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """RGB ** gamma, gamma .8 .. .3."""
    curve = unit_levels() ** BRIGHTEN_RGB_GAMMAS[level - 1]
    return apply_lut(image, lut_from_unit_curve(curve))


def darken_shift_rgb(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """RGB - .10 .. .35."""
    curve = unit_levels() - DARKEN_RGB_SHIFTS[level - 1]
    return apply_lut(image, lut_from_unit_curve(curve))


def darken_gamma_rgb(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """RGB ** gamma, gamma 1.4 .. 3.2."""
    curve = unit_levels() ** DARKEN_RGB_GAMMAS[level - 1]
    return apply_lut(image, lut_from_unit_curve(curve))


# ---- contrast ------------------------------------------------------------------------

def _channel_means(image: np.ndarray) -> np.ndarray:
    return np.array(cv2.mean(image)[:3], dtype=np.float64)


def _mean_grey(image: np.ndarray) -> int:
    """Mean of the ITU-R 601 luma, rounded to an integer grey as PIL's Contrast enhancer does.

    The luma is linear in R, G, B, so its mean is the same weighting of the channel means.
    """
    return int(_channel_means(image) @ np.array([0.299, 0.587, 0.114]) + 0.5)


def _contrast_scale(image: np.ndarray, factor: float) -> np.ndarray:
    # PIL ImageEnhance.Contrast: blend with a flat image of the mean grey.
    grey = _mean_grey(image)
    curve = grey + factor * (np.arange(256, dtype=np.float64) - grey)
    return apply_lut(image, np.clip(np.rint(curve), 0, 255))


def _contrast_stretch(image: np.ndarray, exponent: float) -> np.ndarray:
    """y = 1 / (1 + (m / x) ** f) per channel, m = the channel's mean (the curve's mid-point)."""
    means = _channel_means(image) / 255.0
    levels = unit_levels()[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = 1.0 / (1.0 + (means[None, :] / levels) ** exponent)
    # x = 0 gives m / 0 = inf -> 0 (and 0 / 0 for an all-black channel): black stays black.
    curve[0, :] = 0.0
    return apply_lut(image, lut_from_unit_curve(curve))


def contrast_strengthen_scale(image: np.ndarray, level: int,
                              rng: np.random.Generator) -> np.ndarray:
    """Contrast x 1.4 .. 4.0 around the mean grey."""
    return _contrast_scale(image, CONTRAST_STRENGTHEN_FACTORS[level - 1])


def contrast_weaken_scale(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast x .75 .. .2 around the mean grey."""
    return _contrast_scale(image, CONTRAST_WEAKEN_FACTORS[level - 1])


def contrast_strengthen_stretch(image: np.ndarray, level: int,
                                rng: np.random.Generator) -> np.ndarray:
    """Sigmoid stretch about the channel mean, exponent 2 .. 10 (steeper, harder)."""
    return _contrast_stretch(image, CONTRAST_STRENGTHEN_EXPONENTS[level - 1])


def contrast_weaken_stretch(image: np.ndarray, level: int,
                            rng: np.random.Generator) -> np.ndarray:
    """The same curve with exponent 1.0 .. 0.4 (flatter, everything pulled towards 0.5)."""
    return _contrast_stretch(image, CONTRAST_WEAKEN_EXPONENTS[level - 1])


# ---- YCbCr saturation ----------------------------------------------------------------

def _scale_chroma(image: np.ndarray, scale: float) -> np.ndarray:
    ycc = rgb_to_ycbcr(image)
    ycc[..., 1:] = np.clip(128.0 + (ycc[..., 1:] - 128.0) * np.float32(scale), 0.0, 255.0)
    return round_to_uint8(ycbcr_to_rgb(ycc))


def saturate_strengthen_ycbcr(image: np.ndarray, level: int,
                              rng: np.random.Generator) -> np.ndarray:
    """Cb, Cr = 128 + (C - 128) x 2 .. 16 (chroma clipped to its 0..255 range)."""
    return _scale_chroma(image, SATURATE_STRENGTHEN_YCBCR[level - 1])


def saturate_weaken_ycbcr(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Cb, Cr = 128 + (C - 128) x .6 .. 0 (0 is the luma grey)."""
    return _scale_chroma(image, SATURATE_WEAKEN_YCBCR[level - 1])
