"""Pixel helpers shared by the distortion families: [0,1] floats, look-up tables, YCbCr.

Every distortion takes and returns uint8 RGB HxWx3. Families that work "in [0,1]" (the
spec's wording) convert with `to_unit` and back with `from_unit`, which rounds to nearest
(the reference code truncates; rounding keeps a no-op operation a no-op).
"""

from __future__ import annotations

import cv2
import numpy as np

# JPEG/JFIF full-range BT.601 (the YCbCr of the JPEG standard, chroma centred on 128).
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114],
     [-0.168736, -0.331264, 0.5],
     [0.5, -0.418688, -0.081312]],
    dtype=np.float64,
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR.astype(np.float64))
_CHROMA_OFFSET = np.array([0.0, 128.0, 128.0])
# 3x4 affine matrices for cv2.transform (one SIMD pass instead of a matmul per row).
_RGB_TO_YCBCR_AFFINE = np.hstack([_RGB_TO_YCBCR, _CHROMA_OFFSET[:, None]]).astype(np.float32)
_YCBCR_TO_RGB_AFFINE = np.hstack(
    [_YCBCR_TO_RGB, -(_YCBCR_TO_RGB @ _CHROMA_OFFSET)[:, None]]).astype(np.float32)


def to_unit(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]."""
    return image.astype(np.float32) * np.float32(1.0 / 255.0)


def from_unit(values: np.ndarray) -> np.ndarray:
    """float in [0, 1] (values outside are clipped) -> uint8, rounded to nearest."""
    scaled = np.asarray(values, dtype=np.float32) * np.float32(255.0)
    scaled += np.float32(0.5)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8)


def lut_from_unit_curve(curve_values: np.ndarray) -> np.ndarray:
    """A 256-entry uint8 table from a curve evaluated at v/255 for v = 0..255.

    `curve_values` has shape (256,) for one curve or (256, 3) for one curve per channel.
    """
    return from_unit(curve_values)


def apply_lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Apply a (256,) table to every channel or a (256, 3) table channel by channel."""
    table = np.ascontiguousarray(table, dtype=np.uint8)
    if table.shape == (256,):
        return cv2.LUT(image, table)
    if table.shape == (256, 3):
        return cv2.LUT(image, table.reshape(1, 256, 3))
    raise ValueError(f"a look-up table has shape (256,) or (256, 3), got {table.shape}")


def unit_levels() -> np.ndarray:
    """The 256 uint8 values as float64 in [0, 1], the domain of every look-up table."""
    return np.arange(256, dtype=np.float64) / 255.0


def rgb_to_ycbcr(image: np.ndarray) -> np.ndarray:
    """uint8 (or float 0..255) RGB -> float32 YCbCr on the 0..255 scale, chroma centred on 128."""
    return cv2.transform(image.astype(np.float32), _RGB_TO_YCBCR_AFFINE)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """float YCbCr on the 0..255 scale -> float32 RGB on the 0..255 scale (not clipped)."""
    return cv2.transform(ycc.astype(np.float32), _YCBCR_TO_RGB_AFFINE)


def round_to_uint8(values: np.ndarray) -> np.ndarray:
    """float on the 0..255 scale -> uint8, clipped and rounded to nearest."""
    shifted = np.asarray(values, dtype=np.float32) + np.float32(0.5)
    np.clip(shifted, 0.0, 255.0, out=shifted)
    return shifted.astype(np.uint8)
