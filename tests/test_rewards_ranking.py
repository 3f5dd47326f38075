"""The optional PreResQ-style ranking reward."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import ranking_reward


def _brute_force(preds, mos):
    """The rule of the docstring, written as plain loops."""
    b, g = len(preds), len(preds[0])
    means = []
    for row in preds:
        usable = [p for p in row if p is not None and math.isfinite(p)]
        means.append(sum(usable) / len(usable) if usable else None)
    out = [[0.0] * g for _ in range(b)]
    for i in range(b):
        for k in range(g):
            p = preds[i][k]
            if p is None or not math.isfinite(p):
                continue
            agree = total = 0
            for j in range(b):
                if j == i or mos[j] == mos[i] or means[j] is None:
                    continue
                total += 1
                truth = (mos[i] > mos[j]) - (mos[i] < mos[j])
                said = (p > means[j]) - (p < means[j])
                agree += said == truth
            out[i][k] = agree / total if total else 0.0
    return out


def test_hand_worked_example():
    # Group means: 1.5, 3.0 (the None is left out), 4.25; MOS 1 < 2 < 3.
    preds = [[1.0, 2.0], [3.0, None], [4.0, 4.5]]
    out = ranking_reward(preds, [1.0, 2.0, 3.0])
    # Every usable prediction sits on the right side of both other images' means; the
    # missing one earns 0.
    assert out.tolist() == [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]


def test_partial_agreement():
    # Image 0 (MOS 1) predicts 3.5: above image 1's mean 3 (wrong, MOS 1 < 2) and below
    # image 2's mean 4 (right, MOS 1 < 3): one of two pairs agrees.
    out = ranking_reward([[3.5], [3.0], [4.0]], [1.0, 2.0, 3.0])
    assert out[0, 0] == 0.5


def test_reversed_order_earns_nothing():
    out = ranking_reward([[3.0, 3.2], [2.0, 2.1], [1.0, 0.9]], [1.0, 2.0, 3.0])
    assert out.tolist() == [[0.0, 0.0]] * 3


def test_ties():
    # Images 0 and 1 share MOS 2: that pair is excluded, so each counts only image 2.
    out = ranking_reward([[1.0], [1.5], [4.0]], [2.0, 2.0, 3.0])
    assert out[:, 0].tolist() == [1.0, 1.0, 1.0]
    # A prediction equal to the other image's mean states no order: no credit.
    assert ranking_reward([[2.0], [2.0]], [1.0, 3.0]).tolist() == [[0.0], [0.0]]
    # All MOS equal, or a single image: nothing to compare with.
    assert ranking_reward([[1.0], [4.0]], [2.0, 2.0]).tolist() == [[0.0], [0.0]]
    assert ranking_reward([[1.0, 2.0]], [3.0]).tolist() == [[0.0, 0.0]]


def test_image_without_predictions_is_no_comparator():
    # Image 1 has no usable prediction: image 0 is compared with image 2 only.
    out = ranking_reward([[1.0], [math.nan], [4.0]], [1.0, 2.0, 3.0])
    assert out.tolist() == [[1.0], [0.0], [1.0]]
    out = ranking_reward([[1.0], [math.inf], [4.0]], [1.0, 2.0, 3.0])
    assert out.tolist() == [[1.0], [0.0], [1.0]]


def test_matches_brute_force_on_random_batches():
    rng = np.random.default_rng(11)
    for _ in range(20):
        b, g = rng.integers(1, 9), rng.integers(1, 6)
        mos = rng.choice([1.0, 2.0, 2.5, 3.0, 4.0], size=b).tolist()
        preds = rng.choice([0.5, 1.0, 2.0, 2.5, 3.0, 4.5, np.nan], size=(b, g)).tolist()
        preds = [[None if math.isnan(p) else p for p in row] for row in preds]
        np.testing.assert_allclose(ranking_reward(preds, mos), _brute_force(preds, mos),
                                   rtol=0, atol=1e-12)


@settings(deadline=None, max_examples=150)
@given(st.integers(1, 6).flatmap(lambda b: st.tuples(
    st.lists(st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=3, max_size=3),
             min_size=b, max_size=b),
    st.lists(st.floats(0, 5), min_size=b, max_size=b))))
def test_bounded_and_never_nan(case):
    preds, mos = case
    out = ranking_reward(preds, mos)
    assert out.shape == (len(mos), 3)
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


@pytest.mark.parametrize(("preds", "mos", "match"), [
    ([[1.0], [2.0]], [1.0], "shapes"),
    ([1.0, 2.0], [1.0, 2.0], "shapes"),
    ([[1.0], [2.0]], [1.0, math.nan], r"mos\[1\]"),
])
def test_bad_input_raises(preds, mos, match):
    with pytest.raises(ValueError, match=match):
        ranking_reward(preds, mos)
