"""The one way an image file becomes pixels: 8-bit RGB, as a person sees the image.

Every part that reads an image goes through `open_rgb`: the prompt builder (rollout
engines, scoring actor, learner, evaluations), the dataset builders and the training data
checks, so all of them see the same pixels.

- EXIF orientation is applied (`ImageOps.exif_transpose`): the image as a viewer shows it,
  not as the sensor stored it.
- Deeper than 8 bits: 16-bit integers ("I;16*", and "I" holding 16-bit data) are scaled
  by 255 / 65535; 32-bit integers beyond 16 bits by their own maximum; floats ("F") are
  taken as 0..1 when their maximum is at most 1 (the usual convention of float TIFFs),
  else as 0..255, and clipped.
- Transparency (RGBA, LA, PA, palettes with a transparent colour) is composited over white,
  the page a viewer shows behind a transparent image.
- Palette and grey images become RGB.

A file that cannot be decoded (missing, truncated, not an image, a decompression bomb
beyond Pillow's limit) raises UnreadableImage, whose message names the file and the cause.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)


class UnreadableImage(ValueError):
    """An image file that cannot be decoded; `reason` is a short category for counts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _to_8bit(im: Image.Image) -> Image.Image:
    """A deep grey image ("I;16*", "I", "F") as 8-bit "L"."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif im.mode == "I":
        top = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / 65535.0 if top <= 65535 else 255.0 / max(top, 1.0)
    else:   # "F"
        top = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0
        arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")


def as_rgb(im: Image.Image) -> Image.Image:
    """An opened (and loaded) Pillow image as 8-bit RGB (module docstring)."""
    im = ImageOps.exif_transpose(im) or im
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        page = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(page, rgba).convert("RGB")
    return im.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully into 8-bit RGB (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage("missing image", f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()   # truncated files raise only when the pixels are decoded
            return as_rgb(im)
    except Image.DecompressionBombError as err:
        raise UnreadableImage("decompression bomb", f"image {path} is too large to "
                              f"decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage("unreadable image", f"unreadable or truncated image {path}: "
                              f"{err}") from None


# EXIF orientations 5-8 turn the stored image by 90 degrees: width and height swap.
_TURNED = (5, 6, 7, 8)


def displayed_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image as `open_rgb` returns it, from the file's header
    alone (no pixel decoding): the stored size, swapped when EXIF turns it by 90 degrees.
    Raises UnreadableImage like `open_rgb` (a truncated file may still pass here)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage("missing image", f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as err:
        raise UnreadableImage("decompression bomb", f"image {path} is too large to "
                              f"decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage("unreadable image", f"unreadable image {path}: {err}") from None
    return (height, width) if orientation in _TURNED else (width, height)
