"""Noise family (docs/distortions.md, "noise"): Gaussian RGB / YCbCr, speckle, correlated,
Poisson and impulse noise, all on [0,1] values.

Each level draws the same random numbers from a given generator and scales them by the
level's strength, so with one seed the five levels are the same noise, stronger and
stronger (what makes severity monotone image by image, not only on average).
"""

from __future__ import annotations

import cv2
import numpy as np

from synth.distortions._pixels import from_unit, rgb_to_ycbcr, round_to_uint8, to_unit, ycbcr_to_rgb

GAUSSIAN_RGB_SIGMAS = (0.05, 0.10, 0.15, 0.20, 0.25)
YCBCR_LUMA_SIGMAS = (0.05, 0.06, 0.07, 0.08, 0.09)
YCBCR_CHROMA_RATIOS = (1.0, 1.45, 1.9, 2.35, 2.8)
SPECKLE_SCALES = (0.14, 0.21, 0.28, 0.35, 0.42)
CORRELATED_SIGMAS = (0.08, 0.11, 0.14, 0.18, 0.22)
POISSON_FACTORS = (80, 60, 40, 25, 15)
IMPULSE_DENSITIES = (0.01, 0.03, 0.05, 0.07, 0.10)

NO_MARGINS = (0, 0, 0, 0, 0)
CORRELATED_MARGINS = (1, 1, 1, 1, 1)  # the 3x3 mean filter reads one pixel around


def _standard_normal(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def noise_gaussian_rgb(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Additive N(0, sigma) on every RGB value, sigma .05 .. .25 of the full range."""
    sigma = np.float32(GAUSSIAN_RGB_SIGMAS[level - 1])
    return from_unit(to_unit(image) + sigma * _standard_normal(rng, image.shape))


def noise_gaussian_ycbcr(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise in YCbCr, stronger on the chroma channels than on luma."""
    sigma_luma = YCBCR_LUMA_SIGMAS[level - 1]
    sigma_chroma = sigma_luma * YCBCR_CHROMA_RATIOS[level - 1]
    # Sigmas are fractions of the full range; YCbCr is kept on the 0..255 scale here.
    sigmas = np.array([sigma_luma, sigma_chroma, sigma_chroma], dtype=np.float32) * 255.0
    ycc = rgb_to_ycbcr(image) + _standard_normal(rng, image.shape) * sigmas
    return round_to_uint8(ycbcr_to_rgb(ycc))


def noise_speckle(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise x + x * N(0, s)."""
    scale = np.float32(SPECKLE_SCALES[level - 1])
    values = to_unit(image)
    return from_unit(values * (1.0 + scale * _standard_normal(rng, image.shape)))


def noise_correlated(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Additive N(0, sigma), then a 3x3 mean filter (spatially correlated noise)."""
    sigma = np.float32(CORRELATED_SIGMAS[level - 1])
    noisy = to_unit(image) + sigma * _standard_normal(rng, image.shape)
    return from_unit(cv2.blur(noisy, (3, 3), borderType=cv2.BORDER_REFLECT_101))


def noise_poisson(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Photon noise Poisson(x * f) / f: fewer photons f, stronger noise."""
    factor = POISSON_FACTORS[level - 1]
    counts = rng.poisson(to_unit(image) * np.float32(factor))
    return from_unit(counts.astype(np.float32) / np.float32(factor))


def noise_impulse(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: a fraction `density` of the pixels turns black or white (half each).

    Whole pixels, as in the classic bipolar impulse noise (the reference flips channels
    independently, which makes coloured specks). One uniform draw per pixel: the pixels hit
    at a lower density are a subset of those hit at a higher one.
    """
    density = IMPULSE_DENSITIES[level - 1]
    draw = rng.random(image.shape[:2])
    out = image.copy()
    out[draw < density / 2.0] = 0
    out[(draw >= density / 2.0) & (draw < density)] = 255
    return out
