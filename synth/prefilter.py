"""The input side of the perception builder: what comes in, and what is filtered out.

- `load_annotations`: the COCO-style object annotation file (shape: synth.perception) ->
  source images with their candidate objects; box filters (over 90% of the image, too
  thin, outside the image) and bad entries become `Skip` records with a reason.
- `load_rgb`: decodes a source photo; missing, unreadable, truncated or < 32 px images
  raise `BadImage` with a reason.
- the quality pre-filter (below).

The paper keeps a source image only when three IQA models (Q-Align, DBCNN, Hyper-IQA) all
score it above 80, so that the distortion added later is the only one in the picture. This
project cannot ship those models, so the built-in default is a model-free stand-in with the
same purpose, rejecting what is visibly not clean:

- sharpness: variance of the Laplacian of the grey image, computed after scaling the long
  side down to at most 512 px (the measure grows with resolution; a fixed scale makes one
  threshold work for all sizes). Clean photos score hundreds; a Gaussian blur of sigma 3
  drops them below 10.
- exposure: mean luminance inside [40, 215] (0..255), and at most 25% of the pixels
  clipped (luminance <= 2 or >= 253).

A pre-filter is any picklable callable ``f(image_uint8_rgb) -> str | None`` returning None
to keep the image or a short reason to drop it. Name one on the command line as
``module:function`` (e.g. a wrapper around a real IQA model), or ``none`` to keep all.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# The library's own bounds: a photo it cannot distort, or a level it does not have, is
# skipped here with a reason instead of failing every distortion of that item later.
from synth.distortions import LEVELS, MIN_SIDE
from synth.images import UnreadableImage, open_rgb

QualityFilter = Callable[[np.ndarray], "str | None"]


class BadImage(Exception):
    """An input image that cannot be used: `kind` is counted in summaries, the message logged."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file fully into uint8 RGB HxWx3, as synth.images.open_rgb reads
    every image (orientation, bit depth and transparency handled).

    Raises BadImage for a missing, unreadable, truncated or too small file.
    """
    path = Path(path)
    try:
        arr = np.asarray(open_rgb(path), dtype=np.uint8)
    except UnreadableImage as err:
        raise BadImage(err.reason, str(err)) from None
    if min(arr.shape[:2]) < MIN_SIDE:
        raise BadImage("image too small", f"image {path.name} is {arr.shape[1]}x"
                       f"{arr.shape[0]}, smaller than {MIN_SIDE} px on a side")
    return arr


def sharpness(image: np.ndarray, max_side: int = 512) -> float:
    """Variance of the Laplacian of the grey image scaled to at most `max_side` px."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = max_side / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F).var())


def default_quality_filter(image: np.ndarray, min_sharpness: float = 50.0,
                           luma_range: tuple[float, float] = (40.0, 215.0),
                           max_clipped: float = 0.25) -> str | None:
    """The model-free stand-in for the paper's three-IQA-model filter (module docstring)."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    mean = float(grey.mean())
    if not luma_range[0] <= mean <= luma_range[1]:
        return f"badly exposed (mean luminance {mean:.1f} outside {list(luma_range)})"
    clipped = float(np.mean((grey <= 2) | (grey >= 253)))
    if clipped > max_clipped:
        return f"badly exposed ({clipped:.0%} of the pixels clipped > {max_clipped:.0%})"
    sharp = sharpness(image)
    if sharp < min_sharpness:
        return f"too blurry (Laplacian variance {sharp:.1f} < {min_sharpness:g})"
    return None


def keep_all(image: np.ndarray) -> str | None:
    """A pre-filter that keeps every image."""
    return None


def load_prefilter(spec: str) -> QualityFilter:
    """'default', 'none', or 'module:function' -> the pre-filter callable."""
    if spec == "default":
        return default_quality_filter
    if spec == "none":
        return keep_all
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"prefilter must be 'default', 'none' or 'module:function', "
                         f"got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"prefilter {spec!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise ValueError(f"prefilter {spec!r} is not callable")
    return fn


@dataclass(frozen=True)
class Skip:
    """An input item left out, and why (`kind` is counted in the builder's summary)."""

    item: str
    kind: str
    detail: str


@dataclass(frozen=True)
class SourceObject:
    index: int                        # position among the image's annotations
    name: str
    box: tuple[int, int, int, int]    # x1, y1, x2, y2; x2, y2 exclusive
    distortion: str | None = None     # pinned by the annotation, else drawn
    level: int | None = None


@dataclass(frozen=True)
class SourceImage:
    file_name: str
    width: int
    height: int
    objects: tuple[SourceObject, ...]  # the objects that may be distorted
    candidates: tuple[str, ...]        # distinct object names, annotation order


def slug(file_name: str) -> str:
    """A file name made safe for ids and output file names."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", file_name)


def _parse_object(ann: dict, width: int, height: int, categories: dict, max_box_fraction: float,
                  min_box_side: int, known_types: Collection[str],
                  ) -> tuple[str | None, tuple[int, int, int, int] | Skip]:
    """(name if the box lies in the image, else None; the box or why it is skipped)."""
    name = ann.get("name") or categories.get(ann.get("category_id"))
    if not isinstance(name, str) or not name.strip():
        return None, Skip("", "no object name", "neither a 'name' nor a known category_id")
    name = name.strip()
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in bbox)):
        return None, Skip("", "bad bbox", f"bbox must be [x, y, w, h] numbers, got {bbox!r}")
    x, y, w, h = bbox
    box = (math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h))
    # one pixel of slack: COCO's float boxes round past the border
    if w <= 0 or h <= 0 or box[0] < -1 or box[1] < -1 or box[2] > width + 1 \
            or box[3] > height + 1:
        return None, Skip("", "box outside the image",
                          f"bbox {bbox} does not fit the {width}x{height} image")
    box = (max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height))
    area = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
    if area > max_box_fraction:
        return name, Skip("", "box too large",
                          f"box covers {area:.0%} of the image (> {max_box_fraction:.0%})")
    if min(box[2] - box[0], box[3] - box[1]) < min_box_side:
        return name, Skip("", "box too small",
                          f"box {list(box)} is thinner than {min_box_side} px")
    dist, level = ann.get("distortion"), ann.get("level")
    if dist is not None and dist not in known_types:
        return name, Skip("", "unknown type", f"unknown distortion type {dist!r}")
    if level is not None and (isinstance(level, bool) or level not in LEVELS):
        return name, Skip("", "unknown level", f"level must be one of {LEVELS}, got {level!r}")
    return name, box


def load_annotations(path: str | Path, *, known_types: Collection[str], min_objects: int = 2,
                     max_box_fraction: float = 0.9, min_box_side: int = 8,
                     ) -> tuple[list[SourceImage], list[Skip]]:
    """Parse a COCO-style annotation file into source images with their objects.

    A malformed file raises ValueError; a bad entry in it becomes a Skip with its reason.
    Candidates are the distinct names of the objects whose box lies in the image (also
    those too large or too small to be distorted: they are still in the picture).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"annotation file {path} cannot be read as JSON: {e}") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise ValueError(f"annotation file {path}: expected a COCO-style object with "
                         "'images' and 'annotations' lists (python -m synth.perception --help)")
    categories = {c.get("id"): c.get("name") for c in data.get("categories") or []
                  if isinstance(c, dict)}
    by_image: dict[object, list[dict]] = {}
    skips: list[Skip] = []
    for k, ann in enumerate(data["annotations"]):
        if isinstance(ann, dict) and "image_id" in ann:
            by_image.setdefault(ann["image_id"], []).append(ann)
        else:
            skips.append(Skip(f"annotations[{k}]", "bad annotation", "no image_id"))
    sources: list[SourceImage] = []
    slugs: set[str] = set()
    for k, im in enumerate(data["images"]):
        im = im if isinstance(im, dict) else {}
        file_name, width, height = im.get("file_name"), im.get("width"), im.get("height")
        if not (isinstance(file_name, str) and file_name and isinstance(width, int)
                and isinstance(height, int) and width > 0 and height > 0):
            skips.append(Skip(f"images[{k}]", "bad image entry",
                              "needs file_name and positive integer width, height"))
            continue
        if slug(file_name) in slugs:
            skips.append(Skip(file_name, "duplicate file name", "listed twice (or clashes "
                              "with another name after replacing special characters)"))
            continue
        slugs.add(slug(file_name))
        objects, names = [], []
        for i, ann in enumerate(by_image.get(im.get("id"), [])):
            name, got = _parse_object(ann, width, height, categories, max_box_fraction,
                                      min_box_side, known_types)
            if name is not None and name not in names:
                names.append(name)
            if isinstance(got, Skip):
                skips.append(Skip(f"{file_name}#{i}", got.kind, got.detail))
            else:
                objects.append(SourceObject(i, name, got, ann.get("distortion"),
                                            ann.get("level")))
        if len(names) < min_objects or not objects:
            skips.append(Skip(file_name, "too few objects", f"{len(names)} distinct object "
                              f"names, {len(objects)} usable boxes (need {min_objects} names "
                              "and one box)"))
            continue
        sources.append(SourceImage(file_name, width, height, tuple(objects), tuple(names)))
    return sources, skips
