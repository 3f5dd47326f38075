"""Stage-2 rewards: Eq. 1 (answer), Eqs. 2-4 (PD), mos_digits, Eq. 5 (final), the batch form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import (
    answer_reward,
    answer_rewards,
    batch_pd_rewards,
    combine_rewards,
    digit_weights,
    extract_score,
    final_reward,
    format_reward,
    mos_digits,
    pd_reward,
    pd_weight_vector,
    stage2_rewards,
)

probs = st.floats(0, 1)


# ---- Eq. 1 -------------------------------------------------------------------------------

@pytest.mark.parametrize(("pred", "mos", "eps", "expected"), [
    (3.7, 3.5, 0.5, 1.0),
    (3.0, 3.5, 0.5, 0.0),    # exactly eps away: Eq. 1 is strict
    (4.1, 3.6, 0.5, 0.0),    # exactly eps away in decimals (floats say 0.4999999999999996)
    (3.11, 3.6, 0.5, 1.0),   # 0.49 away
    (3.6, 3.6, 0.1, 1.0),
    (3.75, 3.6, 0.1, 0.0),
    (None, 3.6, 0.5, 0.0),
    (math.nan, 3.6, 0.5, 0.0),
    (math.inf, 3.6, 0.5, 0.0),
    (-0.2, 0.1, 0.5, 1.0),   # a negative prediction is a number like any other
])
def test_answer_reward(pred, mos, eps, expected):
    assert answer_reward(pred, mos, eps) == expected


def test_answer_reward_pred_types():
    assert answer_reward(np.float32(3.5), 3.6) == 1.0
    assert answer_reward(np.array(3.5), 3.6) == 1.0
    for bad in ("3.5", True, [3.5]):
        with pytest.raises(TypeError, match="pred"):
            answer_reward(bad, 3.6)


def test_answer_reward_float_trap_is_real():
    # Independent check that the decimal comparison matters: the float distance is < 0.5.
    assert abs(4.1 - 3.6) < 0.5


def test_answer_rewards_equal_the_scalar_form():
    # Every one-decimal prediction against every one-decimal MOS on [0, 5): many pairs are
    # exactly 0.5 apart, where float subtraction lands on either side of eps.
    grid = np.round(np.arange(0, 50) / 10, 1)
    preds = np.concatenate([grid, [np.nan, np.inf, -np.inf, 1e300]])
    vector = answer_rewards(preds[:, None], grid[None, :])
    for i, p in enumerate(preds):
        for j, m in enumerate(grid):
            assert vector[i, j] == answer_reward(float(p), float(m))
    # Hand count: for MOS 2.0, the predictions 1.6 .. 2.4 earn 1 (9 of them).
    assert vector[:50, 20].sum() == 9
    with pytest.raises(ValueError, match="mos"):
        answer_rewards([1.0], [np.nan])


@pytest.mark.parametrize(("mos", "eps"), [(math.nan, 0.5), (math.inf, 0.5), (3.0, 0.0),
                                          (3.0, -0.5)])
def test_answer_reward_bad_config_raises(mos, eps):
    with pytest.raises(ValueError):
        answer_reward(3.0, mos, eps)


# ---- Eqs. 2-4 ------------------------------------------------------------------------------

def test_digit_weights_follow_eq2():
    # w = [1, 0.1, ..., 10^(1-M)] (Eq. 2).
    assert digit_weights(1) == [1.0]
    assert digit_weights(2) == [1.0, 0.1]
    assert digit_weights(4) == [1.0, 0.1, 0.01, 0.001]
    for bad in (0, -1, 2.0, True, 18):
        with pytest.raises(ValueError):
            digit_weights(bad)


def test_pd_weight_vector_schemes():
    assert pd_weight_vector(2, "paper") == [1.0, 0.1]
    assert pd_weight_vector(2, "reference") == [0.0, 1.0]   # tenths digit only
    assert pd_weight_vector(3, "reference") == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="pd_digits"):
        pd_weight_vector(1, "reference")
    with pytest.raises(ValueError, match="scheme"):
        pd_weight_vector(2, "mine")


@pytest.mark.parametrize(("z_think", "z_ref", "weights", "expected"), [
    # Hand-worked: (0.9 + 0.1*0.5) - (0.3 + 0.1*0.2) = 0.95 - 0.32 = 0.63.
    ([0.9, 0.5], [0.3, 0.2], None, 0.63),
    # Think lowers the ground-truth probability: clipped to 0 (Eq. 3).
    ([0.3, 0.2], [0.9, 0.5], None, 0.0),
    # Largest possible difference 1.1 with w = [1, 0.1]: clipped to 1.
    ([1.0, 1.0], [0.0, 0.0], None, 1.0),
    # Reference weights: 0.5 - 0.2.
    ([0.9, 0.5], [0.3, 0.2], [0.0, 1.0], 0.3),
    # M = 1: 0.7 - 0.4.
    ([0.7], [0.4], None, 0.3),
])
def test_pd_reward_hand_worked(z_think, z_ref, weights, expected):
    assert pd_reward(z_think, z_ref, weights) == pytest.approx(expected, abs=1e-12)


def test_pd_reward_accepts_rounding_above_one():
    # exp(log_softmax) may exceed 1 by a rounding error; it counts as 1.
    assert pd_reward([1 + 1e-9, 0.0], [0.0, 0.0]) == 1.0


@pytest.mark.parametrize(("z_think", "z_ref", "match"), [
    ([0.5, 0.5], [0.5], "equal length"),
    ([], [], "non-empty"),
    ([[0.5, 0.5]], [[0.5, 0.5]], "1-D"),
    ([math.nan, 0.5], [0.5, 0.5], "non-finite"),
    ([0.5, 0.5], [math.inf, 0.5], "non-finite"),
    ([1.2, 0.5], [0.5, 0.5], r"\[0, 1\]"),
    ([0.5, -0.1], [0.5, 0.5], r"\[0, 1\]"),
])
def test_pd_reward_rejects_bad_probabilities(z_think, z_ref, match):
    with pytest.raises(ValueError, match=match):
        pd_reward(z_think, z_ref)


def test_pd_reward_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        pd_reward([0.5, 0.5], [0.1, 0.1], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        pd_reward([0.5, 0.5], [0.1, 0.1], weights=[1.0, math.nan])


@settings(deadline=None, max_examples=200)
@given(st.integers(1, 4).flatmap(
    lambda m: st.tuples(st.lists(probs, min_size=m, max_size=m),
                        st.lists(probs, min_size=m, max_size=m))))
def test_pd_reward_in_unit_interval(pair):
    z_think, z_ref = pair
    r = pd_reward(z_think, z_ref)
    assert 0.0 <= r <= 1.0
    # Identical think and reference probabilities give no PD reward.
    assert pd_reward(z_think, z_think) == 0.0


def test_batch_pd_rewards_equal_the_scalar_form():
    rng = np.random.default_rng(3)
    z_think = rng.random((5, 8, 2))
    z_ref = rng.random((5, 2))
    batch = batch_pd_rewards(z_think, z_ref)
    assert batch.shape == (5, 8)
    for i in range(5):
        for g in range(8):
            assert batch[i, g] == pd_reward(z_think[i, g], z_ref[i])  # to the last bit
    # Per-rollout z_ref of z_think's shape works the same way.
    assert np.array_equal(batch_pd_rewards(z_think, np.repeat(z_ref[:, None], 8, 1)), batch)
    ref = batch_pd_rewards(z_think, z_ref, weights=pd_weight_vector(2, "reference"))
    assert ref[1, 2] == pd_reward(z_think[1, 2], z_ref[1], [0.0, 1.0])


def test_batch_pd_rewards_unscored_rows_may_be_nan():
    z_think = np.array([[[0.9, 0.5], [np.nan, np.nan]]])
    scored = np.array([[True, False]])
    out = batch_pd_rewards(z_think, [[0.3, 0.2]], scored=scored)
    assert out[0, 0] == pytest.approx(0.63) and out[0, 1] == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        batch_pd_rewards(z_think, [[0.3, 0.2]])
    with pytest.raises(ValueError, match="scored"):
        batch_pd_rewards(z_think, [[0.3, 0.2]], scored=[[1, 0]])
    with pytest.raises(ValueError, match="z_ref"):
        batch_pd_rewards(z_think, [[0.3, 0.2, 0.1]])


# ---- mos_digits ------------------------------------------------------------------------------

@pytest.mark.parametrize(("mos", "m", "expected"), [
    (3.71, 2, "3.7"),      # a two-decimal MOS read at the prompt's one decimal
    (3.75, 2, "3.8"),      # half up
    (3.65, 2, "3.7"),      # half up on the written decimal; round(3.65, 1) gives 3.6
    (2.675, 3, "2.68"),    # "%.2f" % 2.675 gives "2.67"
    (3.749, 2, "3.7"),
    (0, 2, "0.0"),
    (-0.0, 2, "0.0"),      # no "-0.0"
    (0.04, 2, "0.0"),
    (0.05, 2, "0.1"),
    (1e-20, 2, "0.0"),
    (4.94, 2, "4.9"),
    (4.95, 2, "4.9"),      # rounds to 5.0, clamped below 5
    (4.96, 2, "4.9"),
    (5, 2, "4.9"),
    (4.999, 3, "4.99"),
    (3.5, 1, "4"),
    (4.5, 1, "4"),         # rounds to 5, clamped
    (2.4, 1, "2"),
    (np.float64(1.25), 2, "1.3"),
    (1e-20, 10, "0.000000000"),  # fixed-point, never "0E-9"
])
def test_mos_digits(mos, m, expected):
    assert mos_digits(mos, m) == expected


@pytest.mark.parametrize(("mos", "m", "error"), [
    (-0.1, 2, ValueError), (5.01, 2, ValueError), (math.nan, 2, ValueError),
    (math.inf, 2, ValueError), ("3.7", 2, TypeError), (True, 2, TypeError),
    (3.7, 0, ValueError), (3.7, 1.5, ValueError),
])
def test_mos_digits_bad_input(mos, m, error):
    with pytest.raises(error, match="mos|m "):
        mos_digits(mos, m)


@settings(deadline=None, max_examples=300)
@given(st.floats(0, 5), st.integers(1, 4))
def test_mos_digits_properties(mos, m):
    s = mos_digits(mos, m)
    digits = s.replace(".", "")
    assert len(digits) == m and digits.isascii() and digits.isdigit()
    value = float(s)
    assert 0 <= value < 5
    half = 0.5 * 10 ** -(m - 1)
    top = 5 - 2 * half
    # Within half a unit of the last digit, or clamped to the top value.
    assert abs(value - mos) <= half + 1e-12 or (value == pytest.approx(top) and mos > top)


# ---- Eq. 5 -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ans", "fmt", "pd", "lambdas", "expected"), [
    (1, 1, 0.3, (1, 1, 1), 2.3),
    (1, 0, 0.9, (1, 1, 1), 1.0),     # not qualified: PD does not count
    (0, 1, 0.9, (1, 1, 1), 1.0),
    (0, 1, None, (1, 1, 1), 1.0),    # PD need not be computed for an unqualified rollout
    (0, 0, math.nan, (1, 1, 1), 0.0),
    (1, 1, 0.25, (1, 0.5, 2), 2.0),  # 1 + 0.5 + 2 * 0.25
    (1, 1, 0.0, (1, 1, 1), 2.0),
])
def test_final_reward(ans, fmt, pd, lambdas, expected):
    assert final_reward(ans, fmt, pd, lambdas) == pytest.approx(expected)


@pytest.mark.parametrize(("ans", "fmt", "pd", "lambdas"), [
    (1, 1, None, (1, 1, 1)), (1, 1, math.nan, (1, 1, 1)), (1, 1, 1.5, (1, 1, 1)),
    (0.5, 1, 0.1, (1, 1, 1)), (1, 1, 0.1, (1, 1)), (1, 1, 0.1, (1, math.inf, 1)),
])
def test_final_reward_bad_input(ans, fmt, pd, lambdas):
    with pytest.raises(ValueError):
        final_reward(ans, fmt, pd, lambdas)


# ---- one step at once --------------------------------------------------------------------------

STEP_TEXTS = [
    ["[think]sharp[/think][answer]Score:3.7[/answer]",
     "[think]sharp[/think][answer]Score:2.0[/answer]",
     "[answer]Score:3.6[/answer]",
     "[think]a[/think][answer]Score:3.7[/answer][answer]Score:3[/answer]"],
    ["[think]noisy[/think][answer]Score: 1.1 [/answer]",
     "",
     "[think]x[/think][answer]Score: \u0661.1[/answer]",
     "[think]noisy[/think][answer]Score:0.9[/answer]"],
]
STEP_MOS = [3.55, 1.2]


def test_stage2_rewards_equal_the_scalar_functions():
    pd = np.array([[0.4, 0.9, 0.9, 0.9], [0.2, np.nan, np.nan, 0.6]])
    lambdas = (1.0, 0.5, 2.0)
    r = stage2_rewards(STEP_TEXTS, STEP_MOS, pd=pd, lambdas=lambdas)
    for i, group in enumerate(STEP_TEXTS):
        for g, text in enumerate(group):
            score = extract_score(text)
            fmt = format_reward(text, "think")
            ans = answer_reward(score, STEP_MOS[i])
            pd_ig = pd[i, g] if ans == fmt == 1 else None
            assert r.fmt[i, g] == fmt and r.ans[i, g] == ans
            assert r.final[i, g] == final_reward(ans, fmt, pd_ig, lambdas)
            assert (math.isnan(r.score[i, g]) if score is None else r.score[i, g] == score)
    # Hand-read: only rollouts (0, 0), (1, 0) and (1, 3) are qualified.
    assert r.qualified.tolist() == [[True, False, False, False], [True, False, False, True]]
    assert r.final[0, 0] == pytest.approx(1 + 0.5 + 2 * 0.4)
    assert r.pd[0, 1] == 0.0 and not np.isnan(r.final).any()


def test_with_pd_equals_passing_pd_up_front():
    pd = np.array([[0.4, 0.9, 0.9, 0.9], [0.2, np.nan, np.nan, 0.6]])
    first = stage2_rewards(STEP_TEXTS, STEP_MOS, lambdas=(1, 1, 3))
    # Before the scoring actor ran, the final reward is ans + fmt alone.
    assert np.array_equal(first.final, first.ans + first.fmt)
    later = first.with_pd(pd)
    direct = stage2_rewards(STEP_TEXTS, STEP_MOS, pd=pd, lambdas=(1, 1, 3))
    assert np.array_equal(later.final, direct.final) and np.array_equal(later.pd, direct.pd)
    assert later.final[1, 3] == pytest.approx(2 + 3 * 0.6)
    with pytest.raises(ValueError, match="pd must be"):
        first.with_pd(np.zeros(8))


def test_stage2_rewards_no_think_mode_and_no_pd():
    r = stage2_rewards(STEP_TEXTS, STEP_MOS, mode="no_think")
    assert r.fmt[0].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert r.final[0, 2] == 2.0  # ans + fmt, PD term 0 before the scoring actor ran


def test_stage2_rewards_bad_input():
    with pytest.raises(ValueError, match="same number"):
        stage2_rewards([["a", "b"], ["c"]], [1.0, 2.0])
    with pytest.raises(ValueError, match="one score per group"):
        stage2_rewards(STEP_TEXTS, [1.0])
    with pytest.raises(TypeError, match=r"texts\[0\]\[1\]"):
        stage2_rewards([["a", None]], [1.0])
    with pytest.raises(ValueError, match="qualified"):
        stage2_rewards(STEP_TEXTS, STEP_MOS, pd=np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="pd must be"):
        stage2_rewards(STEP_TEXTS, STEP_MOS, pd=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mode"):
        stage2_rewards(STEP_TEXTS, STEP_MOS, mode="fast")
    with pytest.raises(ValueError, match="eps"):
        stage2_rewards(STEP_TEXTS, STEP_MOS, eps=0.0)
    with pytest.raises(ValueError, match="lambdas"):
        stage2_rewards(STEP_TEXTS, STEP_MOS, lambdas=(1, 1))


def test_combine_rewards_matches_final_reward():
    ans = np.array([1, 1, 0, 0, 1])
    fmt = np.array([1, 0, 1, 0, 1])
    pd = np.array([0.3, np.nan, np.nan, np.nan, 1.0])
    out = combine_rewards(ans, fmt, pd, (1, 1, 1))
    expected = [final_reward(a, f, None if np.isnan(d) else d) for a, f, d in zip(ans, fmt, pd)]
    assert out.tolist() == expected
    with pytest.raises(ValueError, match="0 or 1"):
        combine_rewards([2], [1], [0.1], (1, 1, 1))
