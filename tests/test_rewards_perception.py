"""Stage-1 rewards: multi-choice answers, IoU and grounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rewards import (
    choice_reward,
    grounding_reward,
    iou,
    parse_box,
    perception_format_reward,
    stage1_rewards,
)

GOLD = "dog / high contrast / slight"


@pytest.mark.parametrize(("text", "mean", "all_"), [
    ("[answer]dog / high contrast / slight[/answer]", 1.0, 1.0),
    ("[answer] Dog/HIGH  Contrast /  Slight [/answer]", 1.0, 1.0),  # case and spaces
    ("[answer]dog / highcontrast / slight[/answer]", 1.0, 1.0),      # spaces ignored
    ("[answer]dog / blur / slight[/answer]", 2 / 3, 0.0),
    ("[answer]cat / blur / slight[/answer]", 1 / 3, 0.0),
    ("[answer]cat / blur / severe[/answer]", 0.0, 0.0),
    ("[answer]slight / high contrast / dog[/answer]", 1 / 3, 0.0),   # positions matter
    ("[answer]dog / high contrast[/answer]", 0.0, 0.0),              # a part missing
    ("[answer]dog / high contrast / slight / blur[/answer]", 0.0, 0.0),
    ("dog / high contrast / slight", 0.0, 0.0),                      # no answer block
    ("[answer]dog / high contrast / slight[/answer][answer]x / y / z[/answer]", 0.0, 0.0),
    ("I think: [answer]dog / high contrast / slight[/answer].", 1.0, 1.0),
    ("", 0.0, 0.0),
])
def test_choice_reward(text, mean, all_):
    assert choice_reward(text, GOLD, "mean") == pytest.approx(mean)
    assert choice_reward(text, GOLD, "all") == all_


def test_choice_reward_gold_as_list_and_errors():
    text = "[answer]dog / blur / slight[/answer]"
    assert choice_reward(text, ["Dog", "blur", "slight"]) == 1.0
    assert choice_reward(text, ["blur"]) == 0.0  # 3 parts against 1
    with pytest.raises(ValueError, match="mode"):
        choice_reward(text, GOLD, "any")
    with pytest.raises(ValueError, match="non-empty"):
        choice_reward(text, "dog /  / slight")
    with pytest.raises(TypeError, match="str"):
        choice_reward(None, GOLD)


@pytest.mark.parametrize(("a", "b", "expected"), [
    # Hand-worked: overlap 5x5 = 25, union 100 + 100 - 25 = 175.
    ((0, 0, 10, 10), (5, 5, 15, 15), 25 / 175),
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (0, 0, 5, 5), 25 / 100),   # contained
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),     # touching edge, no area in common
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
    ((10, 10, 0, 0), (0, 0, 10, 10), 1.0),      # reversed corners
    ((10, 0, 0, 10), (5, 5, 15, 15), 25 / 175),
    ((0, 0, 0, 10), (0, 0, 10, 10), 0.0),       # zero width
    ((5, 5, 5, 5), (5, 5, 5, 5), 0.0),          # a point
])
def test_iou_hand_worked(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [(0, 0, 10), (0, 0, 10, 10, 1), (0, math.nan, 1, 1),
                                 (0, 0, math.inf, 1), "0,0,1,1"])
def test_iou_bad_boxes_raise(bad):
    with pytest.raises(ValueError, match="box_a"):
        iou(bad, (0, 0, 1, 1))


coords = st.floats(-1e6, 1e6, allow_nan=False)
boxes = st.tuples(coords, coords, coords, coords)


@settings(deadline=None, max_examples=300)
@given(boxes, boxes)
def test_iou_symmetric_and_bounded(a, b):
    value = iou(a, b)
    assert 0.0 <= value <= 1.0
    assert value == iou(b, a)


@settings(deadline=None, max_examples=200)
@given(boxes)
def test_iou_with_itself_is_one_unless_degenerate(a):
    # Boxes are pixel boxes; a 1e-227-wide box has an area that underflows to 0 and counts
    # as degenerate, so widths below a thousandth of a pixel are left out.
    assume(abs(a[0] - a[2]) > 1e-3 and abs(a[1] - a[3]) > 1e-3)
    assert iou(a, a) == pytest.approx(1.0)


@settings(deadline=None, max_examples=100)
@given(st.tuples(*[st.floats(-1e300, 1e300, allow_nan=False)] * 4), boxes)
def test_iou_huge_coordinates_stay_finite(a, b):
    value = iou(a, b)
    assert 0.0 <= value <= 1.0 and value == iou(b, a)


GT = (10, 20, 30, 40)


@pytest.mark.parametrize(("text", "expected"), [
    ("[answer] 10,20,30,40 [/answer]", 1.0),
    ("[answer]10, 20, 30, 40[/answer]", 1.0),
    ("[answer] 30,40,10,20 [/answer]", 1.0),                 # reversed corners
    ("[answer] 20,30,40,50 [/answer]", 100 / 700),           # 10x10 overlap, union 400+400-100
    ("[answer] 10.5,20,30,40 [/answer]", 0.0),               # not integers
    ("[answer] 10,20,30,40,50 [/answer]", 0.0),
    ("[answer] (10,20),(30,40) [/answer]", 0.0),
    ("[answer] 10,20,10,40 [/answer]", 0.0),                 # zero width
    ("[answer] 1\u0660,20,30,40 [/answer]", 0.0),            # Arabic-Indic zero
    ("[answer] 1234567890123,20,30,40 [/answer]", 0.0),      # 13 digits
    ("10,20,30,40", 0.0),                                    # no answer block
    ("[answer] 10,20,30,40 [/answer][answer] 1,2,3,4 [/answer]", 0.0),
    ("[answer] -5,20,30,40 [/answer]", 400 / 700),           # hand-worked: 20x20 in 35x20
    ("", 0.0),
])
def test_grounding_reward(text, expected):
    assert grounding_reward(text, GT) == pytest.approx(expected)


def test_parse_box():
    assert parse_box("[answer] 1, 2 ,3,4 [/answer]") == (1, 2, 3, 4)
    assert parse_box("[answer] 1,2,3 [/answer]") is None


@pytest.mark.parametrize("gt", [(10, 20, 10, 40), (10, 20, math.nan, 40), (1, 2, 3)])
def test_grounding_bad_ground_truth_raises(gt):
    with pytest.raises(ValueError, match="gt_box"):
        grounding_reward("[answer] 10,20,30,40 [/answer]", gt)


# Stage-1 format and batch rewards (hand-worked examples).
@pytest.mark.parametrize("text, expected", [
    ("[answer]cat / blur / slight[/answer]", 1.0),
    ("  [answer] 1,2,3,4 [/answer]\n", 1.0),
    ("Sure! [answer]cat / blur / slight[/answer]", 0.0),
    ("[answer]a[/answer][answer]b[/answer]", 0.0),
    ("[think]x[/think][answer]cat / blur / slight[/answer]", 0.0),
    ("[answer]cat / blur / slight", 0.0),
    ("", 0.0),
    # Judged as Stage-2 judges: a think tag inside the answer, or a full-width space
    # (U+3000, which str.strip() would take for whitespace) around it, is not the format.
    ("[answer]cat [think]hm[/think] / blur / slight[/answer]", 0.0),
    ("\u3000[answer]cat / blur / slight[/answer]", 0.0),
    ("[answer]cat / blur / slight[/answer]\u3000", 0.0),
])
def test_perception_format_reward(text, expected):
    assert perception_format_reward(text) == expected


def test_stage1_rewards_mix_choice_and_grounding():
    texts = [["[answer]cat / blur / slight[/answer]", "[answer]dog / blur / severe[/answer]"],
             ["[answer] 0,0,10,10 [/answer]", "the box is 0,0,10,10"]]
    out = stage1_rewards(texts, ["choice", "grounding"],
                         ["cat / blur / slight", [0, 0, 10, 20]])
    # choice "mean": 3/3 and 1/3 right; grounding IoU of a 10x10 box in a 10x20 box = 0.5.
    np.testing.assert_allclose(out["task"], [[1.0, 1 / 3], [0.5, 0.0]])
    np.testing.assert_allclose(out["fmt"], [[1, 1], [1, 0]])
    np.testing.assert_allclose(out["final"], out["task"] + out["fmt"])
    with pytest.raises(ValueError, match="tasks\\[0\\]"):
        stage1_rewards([["x"]], ["score"], [None])
