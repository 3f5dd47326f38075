"""Blur family: Gaussian, motion, glass, lens, zoom and jitter blur (docs/distortions.md, "blur").

Each function maps (uint8 RGB HxWx3, level 1..5, numpy Generator) to uint8 RGB HxWx3 and
works on any size from 1x1 up. `*_MARGINS` give, per level, how many pixels of context
around a region the operation reads, so that a region distortion sees real neighbours at
the box edge instead of padding.

The definitions are DepictQA-V2's (XPixelGroup/DepictQA, build_datasets/x_distortion/
blur.py and helper.py, commit 22f5795), whose severities the paper's appendix adopts; where
the appendix prints a different parameter, the appendix wins (lens radii). Severities are
checked against DepictQA's PSNRs in tests/data/depictqa_psnr_astronaut.json.
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
# The appendix's radii; DepictQA's blur.py uses 2, 3, 4, 6, 8 (levels 1-2 harsher there).
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


def _shuffle_margin(shift: int) -> int:
    # The scan leaves a border of shift + 1 px unvisited and a copy reaches shift px: with
    # 2 shift + 1 px of context every pixel of a box is visited and copies a real pixel.
    return 2 * shift + 1


GAUSSIAN_MARGINS = tuple(gaussian_kernel_size(s) // 2 for s in GAUSSIAN_SIGMAS)
MOTION_MARGINS = tuple(2 * r + 1 for r, _ in MOTION_RADIUS_SIGMA)
GLASS_MARGINS = tuple(2 * _opencv_gaussian_radius(s) + n * _shuffle_margin(shift)
                      for s, shift, n in GLASS_SIGMA_SHIFT_ITERATIONS)
LENS_MARGINS = LENS_RADII
# Zoom is taken about the centre of what it is given; every sample lies inside it.
ZOOM_MARGINS = (0, 0, 0, 0, 0)
JITTER_MARGINS = tuple(_shuffle_margin(shift) for shift in JITTER_SHIFTS)


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


def raster_copy_sources(height: int, width: int, shift: int, dy: np.ndarray,
                        dx: np.ndarray) -> np.ndarray:
    """Where each pixel's value comes from after DepictQA's local pixel shuffle.

    helper.py `shuffle_pixels_njit` visits rows height - shift down to shift + 1, and in
    each row columns width - shift down to shift + 1, and "swaps" the pixel with the one
    (dy, dx) away, dy and dx in [-shift, shift - 1] (numpy's randint excludes the high
    end). On an RGB array `img[h, w], img[h2, w2] = img[h2, w2], img[h, w]` assigns views,
    so it copies: the visited pixel takes the partner's current value and the partner
    keeps its own (ImageNet-C's glass blur, which this comes from, does the same). A
    partner visited earlier already holds a copied value, so values travel further than
    `shift`: the mean squared displacement is about 1, 4, 9, 17, 27 px^2 for shift 1..5
    (one independent offset per pixel would give 1, 3, 6, 11, 17).

    dy, dx: (rows, cols) offsets of the visited pixels, in visiting order. Returns `source`
    with out.flat = in.flat[source]. The reference loops over the pixels (numba); here a
    pixel's source is its partner's source when the partner was visited earlier, else the
    partner itself, and those chains are followed by pointer doubling, all pixels at once.
    The result is the sequential one, exactly (tests/test_distortions.py).
    """
    source = np.arange(height * width, dtype=np.int64)
    rows = np.arange(height - shift, shift, -1)
    cols = np.arange(width - shift, shift, -1)
    if not len(rows) or not len(cols):
        return source
    visited = (rows[:, None] * width + cols[None, :]).ravel()
    partner = ((rows[:, None] + dy) * width + (cols[None, :] + dx)).ravel()
    turn = np.full(height * width, len(visited))  # pixels never visited are never written
    turn[visited] = np.arange(len(visited))
    source[visited] = partner
    # follow[p]: the pixel whose final value p copies (itself where the chain ends).
    follow = np.arange(height * width, dtype=np.int64)
    earlier = turn[partner] < turn[visited]
    follow[visited[earlier]] = partner[earlier]
    while True:
        jumped = follow[follow]
        if np.array_equal(jumped, follow):
            break
        follow = jumped
    return source[follow]


def _shuffle_offsets(shape: tuple[int, int], shift: int, uniform: np.ndarray) -> tuple:
    """Offsets in [-shift, shift - 1] for the visited pixels, from uniform draws in [0, 1).

    floor(u 2 shift) - shift is uniform on the 2 shift integers. A pixel keeps its draw u
    from level to level (one seed), so its offset is the same quantile of a wider range,
    as the noise types scale one draw.
    """
    height, width = shape
    inner = uniform[:, height - shift:shift:-1, width - shift:shift:-1]
    offsets = np.floor(inner * (2 * shift)).astype(np.int64) - shift
    return offsets[0], offsets[1]


def _shuffle(values: np.ndarray, shift: int, iterations: int,
             rng: np.random.Generator) -> np.ndarray:
    """`iterations` passes of the shuffle over an HxWxC array (a new array)."""
    height, width = values.shape[:2]
    flat = values.reshape(height * width, -1)
    for _ in range(iterations):
        dy, dx = _shuffle_offsets((height, width), shift, rng.random((2, height, width)))
        flat = flat[raster_copy_sources(height, width, shift, dy, dx)]
    return flat.reshape(values.shape)


def blur_glass(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, the local pixel shuffle (1 or 2 passes), Gaussian blur again."""
    sigma, shift, iterations = GLASS_SIGMA_SHIFT_ITERATIONS[level - 1]
    values = cv2.GaussianBlur(to_unit(image), (0, 0), sigmaX=sigma, sigmaY=sigma,
                              borderType=cv2.BORDER_REFLECT_101)
    values = _shuffle(values.reshape(image.shape), shift, iterations, rng)
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
    """numpy's arange(1, end, step), as DepictQA's blur.py writes it.

    Float rounding makes arange include the end 1.06 and 1.10 (4 and 6 factors for levels
    2 and 3, not 3 and 5): that is the reference's definition, and its PSNRs, so it stays.
    """
    return np.arange(1.0, end, step)


def blur_zoom(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of the image and its magnifications about the centre by `zoom_factors(end)`.

    The unmagnified image counts once more, as in DepictQA (`(img + sum of zooms) /
    (len(factors) + 1)`, the first factor being 1): at level 1 (factors 1, 1.02) two of
    the three frames averaged are the sharp image.
    """
    height, width = image.shape[:2]
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    total = image.astype(np.float32)
    factors = zoom_factors(ZOOM_ENDS[level - 1])
    for factor in factors:
        if factor == 1.0:
            total += image
            continue
        # dst(p) = src(c + (p - c) / factor): a magnification about c, samples stay inside.
        matrix = np.array([[factor, 0.0, (1.0 - factor) * centre_x],
                           [0.0, factor, (1.0 - factor) * centre_y]], dtype=np.float64)
        zoomed = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        total += zoomed.reshape(image.shape)
    return round_to_uint8(total / np.float32(len(factors) + 1))


def blur_jitter(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """One pass of the local pixel shuffle, shift p = 1..5 (DepictQA's blur_jitter).

    The appendix's "offset by randint(-p, p)" is the reference's numpy call, whose high end
    is excluded: offsets -p .. p - 1, applied in the scan order of `raster_copy_sources`.
    """
    return _shuffle(image, JITTER_SHIFTS[level - 1], 1, rng)
