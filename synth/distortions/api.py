"""`distort` and `distort_region`: argument checks, input conversion, seeding, region crops."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from synth.distortions.registry import LEVELS, TYPES, DistortionType, type_stream_key

# The smallest side of an accepted image. The operations run on any size (a region may be
# tiny), but a whole image narrower than the widest context they read (JPEG 2000: 32 px)
# is mostly border to them; the perception builder skips smaller photos by this bound.
MIN_SIDE = 32


def _check_name(name: Any) -> DistortionType:
    if not isinstance(name, str) or name not in TYPES:
        close = difflib.get_close_matches(str(name), list(TYPES), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"name: unknown distortion type {name!r}.{hint} "
                         f"Valid names: {', '.join(TYPES)}.")
    return TYPES[name]


def _check_level(level: Any) -> int:
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, numbers.Integral) \
            or int(level) not in LEVELS:
        raise ValueError(f"level must be an integer in {LEVELS[0]}..{LEVELS[-1]} "
                         f"(1 = slight, 5 = the worst), got {level!r}")
    return int(level)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) \
            or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def as_rgb_uint8(image: Any) -> np.ndarray:
    """The accepted inputs as a C-contiguous uint8 RGB HxWx3 array.

    Accepted: uint8 arrays HxWx3 (RGB), HxW or HxWx1 (grey, copied to three channels) and
    HxWx4 (RGBA: the alpha channel is dropped, the colour values kept as they are), and PIL
    images (converted to RGB by PIL). Anything else, or a side under 32 px, is a ValueError.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy uint8 array (H, W, 3) or a PIL image, "
                         f"got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8 (0..255), got {image.dtype}; convert "
                         "first, e.g. np.clip(x * 255, 0, 255).round().astype(np.uint8) for "
                         "floats in [0, 1]")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got {image.shape}")
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image is {width}x{height} px; both sides must be at least "
                         f"{MIN_SIDE} px")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def _check_box(box: Any, height: int, width: int) -> tuple[int, int, int, int]:
    try:
        coords = list(box)
    except TypeError:
        coords = None
    if coords is None or len(coords) != 4:
        raise ValueError(f"box must be 4 pixel coordinates (x1, y1, x2, y2), got {box!r}")
    as_int = []
    for c in coords:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real) \
                or not math.isfinite(c) or float(c) != int(c):
            raise ValueError(f"box coordinates must be whole pixel numbers, got {box!r}; "
                             "round them first")
        as_int.append(int(c))
    x1, y1, x2, y2 = as_int
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(
            f"box {tuple(as_int)} must satisfy 0 <= x1 < x2 <= {width} and "
            f"0 <= y1 < y2 <= {height} (x2, y2 exclusive) for a {width}x{height} image: "
            "it is empty or reaches outside the image")
    return x1, y1, x2, y2


def _generator(spec: DistortionType, seed: int) -> np.random.Generator:
    # A private generator per call: nothing global is read or changed.
    return np.random.default_rng([seed, type_stream_key(spec.name)])


def _apply(spec: DistortionType, pixels: np.ndarray, level: int, seed: int) -> np.ndarray:
    out = spec.apply(pixels, level, _generator(spec, seed))
    if out.shape != pixels.shape or out.dtype != np.uint8:  # a bug in a family, not in input
        raise RuntimeError(f"{spec.name} returned {out.dtype} {out.shape} for "
                           f"uint8 {pixels.shape}")
    return out


def distort(image: Any, name: str, level: int, seed: int = 0) -> np.ndarray:
    """Apply distortion type `name` at `level` (1..5) to the whole image.

    image: uint8 RGB (H, W, 3); grey (H, W) / (H, W, 1), RGBA (alpha dropped) and PIL images
    are converted; both sides at least 32 px. Returns a new uint8 (H, W, 3) array; the input
    is not modified. The same (image, name, level, seed) always gives the same bytes, and the
    five levels of a type with one seed share their random draws (e.g. the same Gaussian
    noise, scaled).
    Raises ValueError naming the argument that is wrong.
    """
    spec = _check_name(name)
    level = _check_level(level)
    seed = _check_seed(seed)
    pixels = as_rgb_uint8(image)
    return _apply(spec, pixels, level, seed)


def _context_window(box: tuple[int, int, int, int], margin: int, grid: int,
                    height: int, width: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    left = max(0, x1 - margin) // grid * grid
    top = max(0, y1 - margin) // grid * grid
    return left, top, min(width, x2 + margin), min(height, y2 + margin)


def distort_region(image: Any, box: Sequence[int], name: str, level: int,
                   seed: int = 0) -> np.ndarray:
    """Distort only the pixels inside `box` = (x1, y1, x2, y2), x2 and y2 exclusive.

    Pixels outside the box are returned unchanged, bit for bit. Operations that read
    neighbours (blurs, JPEG blocks, the unsharp mask, correlated noise) run on the box plus
    a margin of the surrounding image, so the box edge sees real context, not padding; only
    the box is pasted back. Operations that use image statistics (contrast, quantization)
    take them from the box. Same input conventions and errors as `distort`.
    """
    spec = _check_name(name)
    level = _check_level(level)
    seed = _check_seed(seed)
    pixels = as_rgb_uint8(image)
    height, width = pixels.shape[:2]
    x1, y1, x2, y2 = _check_box(box, height, width)
    left, top, right, bottom = _context_window(
        (x1, y1, x2, y2), spec.margins[level - 1], spec.grid, height, width)
    window = np.ascontiguousarray(pixels[top:bottom, left:right])
    distorted = _apply(spec, window, level, seed)
    out = pixels.copy()
    out[y1:y2, x1:x2] = distorted[y1 - top:y2 - top, x1 - left:x2 - left]
    return out
