"""The distortion library: 36 types in 12 classes, 5 levels each (docs/distortions.md).

    from synth.distortions import distort, distort_region, DISTORTIONS
    out = distort(image, "blur_gaussian", level=3, seed=7)          # uint8 RGB HxWx3
    part = distort_region(image, (x1, y1, x2, y2), "jpeg", level=5)  # only the box changes

One module per family: blur, noise, exposure_color (brighten / darken / contrast /
saturate), artifacts (JPEG, JPEG 2000, oversharpen, pixelate), quantization. The registry
maps each type to its class word (read from conf/prompts.yaml) and to what a region
distortion needs (context margin, block grid); api checks arguments and crops regions.
"""

from synth.distortions.api import MIN_SIDE, as_rgb_uint8, distort, distort_region
from synth.distortions.registry import (
    CLASSES,
    DISTORTIONS,
    LEVELS,
    RANDOM_TYPES,
    TYPES,
    DistortionType,
    types_of_class,
)

__all__ = [
    "CLASSES",
    "DISTORTIONS",
    "LEVELS",
    "MIN_SIDE",
    "RANDOM_TYPES",
    "TYPES",
    "DistortionType",
    "as_rgb_uint8",
    "distort",
    "distort_region",
    "types_of_class",
]
