"""Sample synthesis: the distortion library (synth.distortions) and the dataset builders.

Importing `synth` loads only numpy, OpenCV, Pillow and the prompt config (omegaconf); the
builders are separate modules, imported on their own.
"""

from synth.distortions import CLASSES, DISTORTIONS, LEVELS, distort, distort_region

__all__ = ["CLASSES", "DISTORTIONS", "LEVELS", "distort", "distort_region"]
