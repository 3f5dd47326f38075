"""The 36 distortion types of docs/distortions.md, grouped into the 12 classes of the Stage-1 prompt.

The class words are not written here: they are read from conf/prompts.yaml
(`class_words`), the one place the prompt and the rewards also read them from. The groups
below follow that list's order; a conf that adds, drops or reorders classes fails at
import (count check) or in tests/test_distortions.py (the spec's type -> class table).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from conf.prompts import default_prompts
from synth.distortions import artifacts, blur, exposure_color, noise, quantization

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

DistortionFunction = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class DistortionType:
    """One distortion type: how to apply it and what a region distortion needs around it.

    apply:   (uint8 RGB HxWx3 of any size >= 1x1, level, generator) -> uint8 RGB HxWx3.
    params:  the spec's parameter for each level 1..5 (recorded, e.g., in manifests).
    margins: pixels of context around a region that the operation reads, per level.
    grid:    the crop around a region starts on multiples of this (JPEG's block grid).
    random:  whether the output depends on the seed.
    """

    name: str
    class_word: str
    apply: DistortionFunction
    params: tuple
    margins: tuple[int, ...]
    random: bool = False
    grid: int = 1


def _entry(apply: DistortionFunction, params: tuple, margins: tuple[int, ...],
           random: bool = False, grid: int = 1) -> dict:
    return {"apply": apply, "params": tuple(params), "margins": tuple(margins),
            "random": random, "grid": grid}


_b, _n, _e, _a, _q = blur, noise, exposure_color, artifacts, quantization

# One dict per class, in the order of conf/prompts.yaml `class_words`.
_GROUPS: tuple[dict[str, dict], ...] = (
    {  # blur
        "blur_gaussian": _entry(_b.blur_gaussian, _b.GAUSSIAN_SIGMAS, _b.GAUSSIAN_MARGINS),
        "blur_motion": _entry(_b.blur_motion, _b.MOTION_RADIUS_SIGMA, _b.MOTION_MARGINS,
                              random=True),
        "blur_glass": _entry(_b.blur_glass, _b.GLASS_SIGMA_SHIFT_ITERATIONS, _b.GLASS_MARGINS,
                             random=True),
        "blur_lens": _entry(_b.blur_lens, _b.LENS_RADII, _b.LENS_MARGINS),
        "blur_zoom": _entry(_b.blur_zoom, _b.ZOOM_ENDS, _b.ZOOM_MARGINS),
        "blur_jitter": _entry(_b.blur_jitter, _b.JITTER_SHIFTS, _b.JITTER_MARGINS, random=True),
    },
    {  # noise
        "noise_gaussian_rgb": _entry(_n.noise_gaussian_rgb, _n.GAUSSIAN_RGB_SIGMAS,
                                     _n.NO_MARGINS, random=True),
        "noise_gaussian_ycbcr": _entry(
            _n.noise_gaussian_ycbcr,
            tuple(zip(_n.YCBCR_LUMA_SIGMAS, _n.YCBCR_CHROMA_RATIOS)), _n.NO_MARGINS,
            random=True),
        "noise_speckle": _entry(_n.noise_speckle, _n.SPECKLE_SCALES, _n.NO_MARGINS,
                                random=True),
        "noise_correlated": _entry(_n.noise_correlated, _n.CORRELATED_SIGMAS,
                                   _n.CORRELATED_MARGINS, random=True),
        "noise_poisson": _entry(_n.noise_poisson, _n.POISSON_FACTORS, _n.NO_MARGINS,
                                random=True),
        "noise_impulse": _entry(_n.noise_impulse, _n.IMPULSE_DENSITIES, _n.NO_MARGINS,
                                random=True),
    },
    {  # compression
        "jpeg": _entry(_a.jpeg, _a.JPEG_QUALITIES, _a.JPEG_MARGINS, grid=_a.JPEG_BLOCK),
        "jpeg2000": _entry(_a.jpeg2000, _a.JPEG2000_TARGETS_DB, _a.JPEG2000_MARGINS),
    },
    {  # overexposure
        "brighten_shift_hsv": _entry(_e.brighten_shift_hsv, _e.BRIGHTEN_HSV_SHIFTS,
                                     _e.NO_MARGINS),
        "brighten_shift_rgb": _entry(_e.brighten_shift_rgb, _e.BRIGHTEN_RGB_SHIFTS,
                                     _e.NO_MARGINS),
        "brighten_gamma_hsv": _entry(_e.brighten_gamma_hsv, _e.BRIGHTEN_HSV_GAMMAS,
                                     _e.NO_MARGINS),
        "brighten_gamma_rgb": _entry(_e.brighten_gamma_rgb, _e.BRIGHTEN_RGB_GAMMAS,
                                     _e.NO_MARGINS),
    },
    {  # underexposure
        "darken_shift_hsv": _entry(_e.darken_shift_hsv, _e.DARKEN_HSV_SHIFTS, _e.NO_MARGINS),
        "darken_shift_rgb": _entry(_e.darken_shift_rgb, _e.DARKEN_RGB_SHIFTS, _e.NO_MARGINS),
        "darken_gamma_hsv": _entry(_e.darken_gamma_hsv, _e.DARKEN_HSV_GAMMAS, _e.NO_MARGINS),
        "darken_gamma_rgb": _entry(_e.darken_gamma_rgb, _e.DARKEN_RGB_GAMMAS, _e.NO_MARGINS),
    },
    {  # high contrast
        "contrast_strengthen_scale": _entry(
            _e.contrast_strengthen_scale, _e.CONTRAST_STRENGTHEN_FACTORS, _e.NO_MARGINS),
        "contrast_strengthen_stretch": _entry(
            _e.contrast_strengthen_stretch, _e.CONTRAST_STRENGTHEN_EXPONENTS, _e.NO_MARGINS),
    },
    {  # low contrast
        "contrast_weaken_scale": _entry(
            _e.contrast_weaken_scale, _e.CONTRAST_WEAKEN_FACTORS, _e.NO_MARGINS),
        "contrast_weaken_stretch": _entry(
            _e.contrast_weaken_stretch, _e.CONTRAST_WEAKEN_EXPONENTS, _e.NO_MARGINS),
    },
    {  # oversaturate
        "saturate_strengthen_hsv": _entry(
            _e.saturate_strengthen_hsv, _e.SATURATE_STRENGTHEN_HSV, _e.NO_MARGINS),
        "saturate_strengthen_ycbcr": _entry(
            _e.saturate_strengthen_ycbcr, _e.SATURATE_STRENGTHEN_YCBCR, _e.NO_MARGINS),
    },
    {  # desaturate
        "saturate_weaken_hsv": _entry(
            _e.saturate_weaken_hsv, _e.SATURATE_WEAKEN_HSV, _e.NO_MARGINS),
        "saturate_weaken_ycbcr": _entry(
            _e.saturate_weaken_ycbcr, _e.SATURATE_WEAKEN_YCBCR, _e.NO_MARGINS),
    },
    {  # oversharpen
        "oversharpen": _entry(_a.oversharpen, _a.OVERSHARPEN_AMOUNTS, _a.OVERSHARPEN_MARGINS),
    },
    {  # pixelate
        "pixelate": _entry(_a.pixelate, _a.PIXELATE_SCALES, _a.PIXELATE_MARGINS),
    },
    {  # quantization
        "quantization_otsu": _entry(_q.quantization_otsu, _q.OTSU_CLASSES, _q.NO_MARGINS),
        "quantization_median": _entry(_q.quantization_median, _q.MEDIAN_CUT_COLOURS,
                                      _q.NO_MARGINS),
        "quantization_hist": _entry(_q.quantization_hist, _q.HIST_BINS, _q.NO_MARGINS),
        "quantization_uniform": _entry(_q.quantization_uniform, _q.UNIFORM_BITS,
                                       _q.NO_MARGINS),
    },
)


def _build_types() -> dict[str, DistortionType]:
    class_words = [str(word) for word in default_prompts().class_words]
    if len(class_words) != len(_GROUPS):
        raise RuntimeError(
            f"conf/prompts.yaml lists {len(class_words)} class_words but synth.distortions "
            f"defines {len(_GROUPS)} distortion classes; update synth/distortions/registry.py "
            "together with the prompt's class list.")
    types = {}
    for class_word, group in zip(class_words, _GROUPS):
        for name, entry in group.items():
            types[name] = DistortionType(name=name, class_word=class_word, **entry)
    return types


TYPES: Mapping[str, DistortionType] = MappingProxyType(_build_types())
# The public mapping: type name -> the class word the Stage-1 prompt offers.
DISTORTIONS: Mapping[str, str] = MappingProxyType(
    {name: spec.class_word for name, spec in TYPES.items()})
CLASSES: tuple[str, ...] = tuple(dict.fromkeys(DISTORTIONS.values()))
RANDOM_TYPES: frozenset[str] = frozenset(name for name, t in TYPES.items() if t.random)


def types_of_class(class_word: str) -> tuple[str, ...]:
    """The type names of one class word, in registry order."""
    if class_word not in CLASSES:
        raise ValueError(f"class_word must be one of {list(CLASSES)}, got {class_word!r}")
    return tuple(name for name, word in DISTORTIONS.items() if word == class_word)


def type_stream_key(name: str) -> int:
    """A stable number per type name, mixed into the seed so that two types given the same
    seed draw independent random numbers (crc32: the same on every run and machine)."""
    return zlib.crc32(name.encode("utf-8"))
