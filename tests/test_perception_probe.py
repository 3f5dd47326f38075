"""The linear probe of `make reproduce` (benchmarks/perception_probe.py): its pieces on
hand-made inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.perception_probe import image_statistics, ridge_srcc


def test_ridge_probe_recovers_a_linear_target_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 0.0])
    # An exact linear target: the fit ranks the held-out rows as the target does.
    assert ridge_srcc(x[:150], y[:150], x[150:], y[150:]) > 0.99
    # A target independent of the features: no better than chance on 50 rows
    # (|SRCC| < 0.35 is beyond 2.4 standard errors of 1/sqrt(49)).
    noise = rng.normal(size=200)
    assert abs(ridge_srcc(x[:150], noise[:150], x[150:], noise[150:])) < 0.35


def test_image_statistics_of_flat_and_checkered_images():
    flat = np.full((32, 32, 3), 128, np.uint8)
    stats = image_statistics(flat)
    assert len(stats) == 11
    # Grey mean 128, no spread, no edges, no saturation, nothing clipped, one grey level.
    assert stats[0] == pytest.approx(128.0)
    assert stats[1:8] == pytest.approx([0.0] * 7)
    assert stats[8] == 0.0 and stats[9] == 1.0 and stats[10] == 0.0
    checker = np.indices((32, 32)).sum(0) % 2 * 255
    checker = np.repeat(checker[:, :, None], 3, axis=2).astype(np.uint8)
    stats = image_statistics(checker)
    # Half the pixels black, half white: both clipped shares 0.5, two grey levels, and
    # every horizontal neighbour differs by 255.
    assert stats[7] == stats[8] == pytest.approx(0.5)
    assert stats[9] == 2.0 and stats[10] == pytest.approx(255.0)
