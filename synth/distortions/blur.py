"""Blur family: Gaussian, motion, glass, lens, zoom and jitter blur (synth-spec.md, "blur").

Each function maps (uint8 RGB HxWx3, level 1..5, numpy Generator) to uint8 RGB HxWx3 and
works on any size from 1x1 up. `*_MARGINS` give, per level, how many pixels of context
around a region the operation reads, so that a region distortion sees real neighbours at
the box edge instead of padding.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from synth.distortions._pixels import from_unit, round_to_uint8, to_unit

GAUSSIAN_SIGMAS = (1.0, 2.0, 3.0, 4.0, 5.0)
MOTION_RADIUS_SIGMA = ((5, 3.0), (10, 5.0), (15, 7.0), (15, 9.0), (20, 12.0))
MOTION_ANGLE_RANGE = (-90.0, 90.0)
GLASS_SIGMA_SHIFT_ITERATIONS = ((0.7, 1, 1), (0.9, 2, 1), (1.2, 2, 2), (1.4, 3, 2), (1.6, 4, 2))
LENS_RADII = (1, 2, 4, 6, 8)
ZOOM_ENDS = (1.03, 1.06, 1.10, 1.15, 1.21)
ZOOM_STEP = 0.02
JITTER_SHIFTS = (1, 2, 3, 4, 5)


def gaussian_kernel_size(sigma: float) -> int:
    """The paper's kernel size floor(4 sigma) + 1, made odd (a centred kernel needs it)."""
    size = int(math.floor(4 * sigma)) + 1
    return size if size % 2 else size + 1


def _opencv_gaussian_radius(sigma: float) -> int:
    # OpenCV's automatic kernel (ksize 0) for float images spans round(4 sigma) each side.
    return int(round(4 * sigma)) + 1


GAUSSIAN_MARGINS = tuple(gaussian_kernel_size(s) // 2 for s in GAUSSIAN_SIGMAS)
MOTION_MARGINS = tuple(2 * r + 1 for r, _ in MOTION_RADIUS_SIGMA)
GLASS_MARGINS = tuple(2 * _opencv_gaussian_radius(s) + shift * n
                      for s, shift, n in GLASS_SIGMA_SHIFT_ITERATIONS)
LENS_MARGINS = LENS_RADII
# Zoom is taken about the centre of what it is given; every sample lies inside it.
ZOOM_MARGINS = (0, 0, 0, 0, 0)
JITTER_MARGINS = JITTER_SHIFTS


def blur_gaussian(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian filter, sigma 1..5, kernel floor(4 sigma) + 1."""
    sigma = GAUSSIAN_SIGMAS[level - 1]
    size = gaussian_kernel_size(sigma)
    return cv2.GaussianBlur(image, (size, size), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT_101)


def motion_kernel(radius: int, sigma: float, angle_degrees: float) -> tuple[np.ndarray, tuple]:
    """A one-sided motion kernel and its anchor, for cv2.filter2D.

    As in ImageMagick's -motion-blur (radius x sigma + angle), which the reference follows:
    the output at p is the weighted sum of the input at p + i*u for i = 0..2*radius, with u
    the unit vector of the angle and half-Gaussian weights exp(-i^2 / 2 sigma^2).
    """
    taps = 2 * radius + 1
    weights = np.exp(-np.arange(taps, dtype=np.float64) ** 2 / (2.0 * sigma * sigma))
    weights /= weights.sum()
    angle = math.radians(angle_degrees)
    steps = np.arange(taps, dtype=np.float64)
    offset_x = np.rint(steps * math.cos(angle)).astype(int)
    offset_y = np.rint(steps * math.sin(angle)).astype(int)
    x0, y0 = offset_x.min(), offset_y.min()
    kernel = np.zeros((offset_y.max() - y0 + 1, offset_x.max() - x0 + 1), dtype=np.float32)
    # Two taps may round onto the same pixel: accumulate instead of overwriting.
    np.add.at(kernel, (offset_y - y0, offset_x - x0), weights.astype(np.float32))
    # filter2D correlates: dst(p) = sum_q k(q) src(p + q - anchor), so the anchor is the
    # kernel cell of offset (0, 0).
    return kernel, (int(-x0), int(-y0))


def blur_motion(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur at a random angle in [-90, 90] degrees (the first draw of rng)."""
    radius, sigma = MOTION_RADIUS_SIGMA[level - 1]
    angle = float(rng.uniform(*MOTION_ANGLE_RANGE))
    kernel, anchor = motion_kernel(radius, sigma, angle)
    blurred = cv2.filter2D(image.astype(np.float32), -1, kernel, anchor=anchor,
                           borderType=cv2.BORDER_REPLICATE)
    return round_to_uint8(blurred)


def _swap_locally(values: np.ndarray, shift: int, rng: np.random.Generator) -> None:
    """Every pixel swaps places with a random pixel at most `shift` away (in place).

    The reference swaps pixel by pixel in raster order (a Python/numba loop). Here the
    pixels take their turn in (2 shift + 1)^2 interleaved lattices: within one lattice the
    initiating pixels are 2 shift + 1 apart, so no two swaps touch the same pixel and a
    whole lattice swaps at once. Each pixel still starts exactly one swap per pass and the
    swaps of later lattices move pixels that earlier ones moved, as in the sequential scan.
    """
    height, width = values.shape[:2]
    flat = values.reshape(height * width, -1)
    dy, dx = rng.integers(-shift, shift + 1, size=(2, height, width), dtype=np.int32)
    rows = np.arange(height, dtype=np.int32)[:, None]
    cols = np.arange(width, dtype=np.int32)[None, :]
    target = (np.clip(rows + dy, 0, height - 1) * width + np.clip(cols + dx, 0, width - 1))
    source = rows * width + cols + np.zeros_like(dy)
    step = 2 * shift + 1
    for phase_y in range(min(step, height)):
        for phase_x in range(min(step, width)):
            initiators = source[phase_y::step, phase_x::step].ravel()
            partners = target[phase_y::step, phase_x::step].ravel()
            taken = flat[initiators]
            flat[initiators] = flat[partners]
            flat[partners] = taken


def blur_glass(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, random local pixel swaps (repeated), Gaussian blur again."""
    sigma, shift, iterations = GLASS_SIGMA_SHIFT_ITERATIONS[level - 1]
    values = cv2.GaussianBlur(to_unit(image), (0, 0), sigmaX=sigma, sigmaY=sigma,
                              borderType=cv2.BORDER_REFLECT_101)
    values = np.ascontiguousarray(values)
    for _ in range(iterations):
        _swap_locally(values, shift, rng)
    values = cv2.GaussianBlur(values, (0, 0), sigmaX=sigma, sigmaY=sigma,
                              borderType=cv2.BORDER_REFLECT_101)
    return from_unit(values)


def disk_kernel(radius: int) -> np.ndarray:
    """Circular mean filter: 1 on the pixels with x^2 + y^2 <= r^2, normalised to sum 1."""
    span = np.arange(-radius, radius + 1)
    inside = (span[None, :] ** 2 + span[:, None] ** 2) <= radius * radius
    kernel = inside.astype(np.float32)
    return kernel / kernel.sum()


def blur_lens(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Lens (defocus) blur: a disk mean filter of radius 1, 2, 4, 6, 8."""
    kernel = disk_kernel(LENS_RADII[level - 1])
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def zoom_factors(end: float, step: float = ZOOM_STEP) -> np.ndarray:
    """1, 1 + step, ... strictly below `end` (half-open, like arange).

    Counted in integers: numpy's arange(1, 1.06, 0.02) lets float rounding include 1.06 (and
    1.10 for end 1.10), which would make levels 2 and 3 one factor longer than intended.
    """
    count = int(math.floor((end - 1.0) / step - 1e-9)) + 1
    return 1.0 + step * np.arange(count)


def blur_zoom(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of the image magnified about its centre by each of `zoom_factors(end)`."""
    height, width = image.shape[:2]
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    total = np.zeros(image.shape, dtype=np.float32)
    factors = zoom_factors(ZOOM_ENDS[level - 1])
    for factor in factors:
        # dst(p) = src(c + (p - c) / factor): a magnification about c, samples stay inside.
        matrix = np.array([[factor, 0.0, (1.0 - factor) * centre_x],
                           [0.0, factor, (1.0 - factor) * centre_y]], dtype=np.float64)
        zoomed = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        total += zoomed.reshape(image.shape)
    return round_to_uint8(total / np.float32(len(factors)))


def blur_jitter(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Every pixel takes the value of the pixel randint(-p, p) away in x and y (p = 1..5)."""
    shift = JITTER_SHIFTS[level - 1]
    height, width = image.shape[:2]
    dy, dx = rng.integers(-shift, shift + 1, size=(2, height, width), dtype=np.int32)
    rows = np.clip(np.arange(height, dtype=np.int32)[:, None] + dy, 0, height - 1)
    cols = np.clip(np.arange(width, dtype=np.int32)[None, :] + dx, 0, width - 1)
    return image[rows, cols]
