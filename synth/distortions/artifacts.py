"""Compression (JPEG, JPEG 2000), oversharpening and pixelation (docs/distortions.md).

JPEG 2000 is specified by a target quality in dB, not by a rate. OpenJPEG (through Pillow)
can allocate the rate for a target PSNR itself ("dB" quality mode) but its own distortion
estimate misses the PSNR measured on the decoded 8-bit image by a few tenths of a dB, so
`jpeg2000_at_psnr` corrects the request with secant steps on the measured PSNR until it
lands within `JPEG2000_TOLERANCE_DB` (on photos from 64 to 512 px: one encode for most
levels, at most three).
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image

JPEG_QUALITIES = (25, 18, 12, 8, 5)
JPEG2000_TARGETS_DB = (29.0, 27.5, 26.0, 24.5, 23.0)
JPEG2000_TOLERANCE_DB = 0.25
JPEG2000_MAX_ENCODES = 3
# OpenJPEG's estimate runs optimistic by about 0.2-0.4 dB on photos (measured with the 9/7
# wavelet on skimage's astronaut and chelsea): asking for that much more usually lands
# within the tolerance at the first encode.
JPEG2000_FIRST_REQUEST_BIAS_DB = 0.3
OVERSHARPEN_AMOUNTS = (2.0, 2.8, 4.0, 6.0, 8.0)
OVERSHARPEN_KERNEL = 5
PIXELATE_SCALES = (0.5, 0.4, 0.3, 0.25, 0.2)

# JPEG codes 8x8 blocks of luma and, with 4:2:0 chroma subsampling, 16x16 of chroma; a
# region is compressed with at least one block of real context around it, on the image's
# own block grid (the crop's origin is aligned to it), so blocks straddle the box edge as
# they would in a whole-image compression.
JPEG_BLOCK = 16
JPEG_MARGINS = (JPEG_BLOCK,) * 5
JPEG2000_MARGINS = (32,) * 5
OVERSHARPEN_MARGINS = (OVERSHARPEN_KERNEL // 2,) * 5
# Pixel blocks start at the box corner: the pixelated region is the box itself.
PIXELATE_MARGINS = (0, 0, 0, 0, 0)


def jpeg(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG at quality 25, 18, 12, 8, 5 (libjpeg scaling, 4:2:0 chroma, as Pillow writes)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITIES[level - 1])
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def psnr(reference: np.ndarray, distorted: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when they are equal)."""
    error = reference.astype(np.float64) - distorted.astype(np.float64)
    mse = float(np.mean(error * error))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0 * 255.0 / mse)


def _jpeg2000_round_trip(image: np.ndarray, request_db: float) -> np.ndarray:
    height, width = image.shape[:2]
    # OpenJPEG needs every resolution level to keep at least one pixel; small crops get
    # fewer wavelet levels than its default of 6.
    resolutions = max(1, min(6, int(math.log2(min(height, width))) + 1))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG2000", quality_mode="dB",
                                quality_layers=[request_db], irreversible=True,
                                num_resolutions=resolutions)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def jpeg2000_at_psnr(image: np.ndarray, target_db: float,
                     tolerance_db: float = JPEG2000_TOLERANCE_DB,
                     max_encodes: int = JPEG2000_MAX_ENCODES) -> tuple[np.ndarray, float]:
    """JPEG 2000 (9/7 wavelet) whose decoded PSNR is as close to `target_db` as found.

    Returns the decoded image and its PSNR. Stops at the first result within the
    tolerance; otherwise returns the closest of `max_encodes` tries. An image that
    compresses losslessly at the requested quality (e.g. a flat one) returns at once.
    """
    request = target_db + JPEG2000_FIRST_REQUEST_BIAS_DB
    best, best_db = None, math.nan
    for _ in range(max_encodes):
        decoded = _jpeg2000_round_trip(image, request)
        achieved = psnr(image, decoded)
        if best is None or abs(achieved - target_db) < abs(best_db - target_db):
            best, best_db = decoded, achieved
        if not math.isfinite(achieved) or abs(achieved - target_db) <= tolerance_db:
            break
        # PSNR moves about one for one with the requested dB: a secant step of slope 1.
        request += target_db - achieved
    return best, best_db


def jpeg2000(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG 2000 at a decoded PSNR of 29, 27.5, 26, 24.5, 23 dB."""
    decoded, _ = jpeg2000_at_psnr(image, JPEG2000_TARGETS_DB[level - 1])
    return decoded


def oversharpen(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Unsharp mask I (1 + a) - blur(I) a with a 5x5 Gaussian, a = 2 .. 8."""
    amount = OVERSHARPEN_AMOUNTS[level - 1]
    size = OVERSHARPEN_KERNEL
    # sigma 0: OpenCV derives it from the kernel size (1.1 for 5x5), as the reference does.
    blurred = cv2.GaussianBlur(image, (size, size), 0, borderType=cv2.BORDER_REFLECT_101)
    # addWeighted computes in float and saturates with rounding to uint8.
    return cv2.addWeighted(image, 1.0 + amount, blurred, -amount, 0.0)


def pixelate(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Box-filter down to scale .5 .. .2, nearest-neighbour back up."""
    scale = PIXELATE_SCALES[level - 1]
    height, width = image.shape[:2]
    small_size = (max(1, int(width * scale)), max(1, int(height * scale)))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    # INTER_NEAREST_EXACT samples pixel centres (as PIL's NEAREST); plain INTER_NEAREST is
    # shifted by half a pixel.
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return big.reshape(image.shape)
