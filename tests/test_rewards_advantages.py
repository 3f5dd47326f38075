"""Group advantages: Eq. 6 (clipped-positive / shifted-negative) and plain GRPO."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import batch_advantages, group_advantages

SHIFT, EPS = 2e-5, 1e-4


def _independent(rewards, qualified, mode, shift=SHIFT, eps=EPS, kind="sample"):
    """Eq. 6 written out with the standard library (sample std by default, as torch.std)."""
    mean = statistics.fmean(rewards)
    if kind == "population" or len(rewards) == 1:
        std = statistics.pstdev(rewards)
    else:
        std = statistics.stdev(rewards)
    if mode == "standard":
        return [(r - mean) / (std + eps) for r in rewards]
    if any(qualified):
        return [max((r - mean) / (std + eps), 0.0) for r in rewards]
    return [(r - mean - shift) / (std + eps) for r in rewards]


def test_appendix_worked_example():
    # Supp. of the paper: with format reward 1 everywhere, a hard sample gives rewards
    # [2,1,1,1,1,1,1,1] and an easy one [2.1,2,2,2,2,2,2,1]; the correct rollout of the hard
    # one must get the larger advantage.
    hard = [2, 1, 1, 1, 1, 1, 1, 1]
    easy = [2.1, 2, 2, 2, 2, 2, 2, 1]
    a_hard = group_advantages(hard, [r >= 2 for r in hard])
    a_easy = group_advantages(easy, [r >= 2 for r in easy])
    # By hand, sample std (n - 1 = 7): mean 1.125, sum of squares 0.875^2 + 7 * 0.125^2 =
    # 0.875, std sqrt(0.875 / 7) = 0.3535534, A = 0.875 / (0.3535534 + 1e-4) = 2.47417.
    assert a_hard[0] == pytest.approx(2.47417, abs=1e-5)
    # By hand: mean 1.8875, sum of squares 0.90875, std sqrt(0.90875 / 7) = 0.3603074,
    # A(2.1) = 0.2125 / 0.3604074 = 0.58961, A(2) = 0.1125 / 0.3604074 = 0.31215.
    assert a_easy[0] == pytest.approx(0.58961, abs=1e-5)
    assert a_easy[1] == pytest.approx(0.31215, abs=1e-5)
    assert a_hard[0] > 4 * a_easy[0]
    # Wrong rollouts are not pushed down while a right one exists.
    assert a_hard[1:].tolist() == [0.0] * 7 and a_easy[7] == 0.0
    assert a_hard == pytest.approx(_independent(hard, [r >= 2 for r in hard], "clipped"))


def test_population_std_is_one_config_value_away():
    # reward.adv_std=population, by hand: variance 0.875 / 8 = 0.109375, std 0.3307189,
    # A = 0.875 / 0.3308189 = 2.64495; the ratio to the sample form is sqrt(8/7) for ties
    # aside (eps is tiny).
    hard = [2, 1, 1, 1, 1, 1, 1, 1]
    pop = group_advantages(hard, [r >= 2 for r in hard], std="population")
    assert pop[0] == pytest.approx(2.64495, abs=1e-5)
    sample = group_advantages(hard, [r >= 2 for r in hard])
    assert pop[0] / sample[0] == pytest.approx((8 / 7) ** 0.5, rel=1e-3)
    assert group_advantages([3.0], [True], std="sample") == pytest.approx([0.0])   # G = 1


def test_no_qualified_rollout_gets_the_shifted_negative_form():
    rewards = [1, 1, 1, 0, 1, 0, 1, 1]  # format only, every answer wrong
    adv = group_advantages(rewards, [False] * 8)
    assert adv == pytest.approx(_independent(rewards, [False] * 8, "clipped"))
    assert (adv[np.array(rewards) == 0] < 0).all()
    # All tied and none qualified: every rollout gets -shift / eps = -0.2 (finite).
    tied = group_advantages([1.0] * 8, [False] * 8)
    assert tied == pytest.approx([-0.2] * 8)
    # The paper's printed shift 0.02 is a config value away.
    assert group_advantages([1.0] * 8, [False] * 8, shift=0.02) == pytest.approx([-200.0] * 8)


def test_standard_grpo():
    rewards = [2.0, 1.0, 0.0, 1.0]
    adv = group_advantages(rewards, None, mode="standard")
    assert adv == pytest.approx(_independent(rewards, None, "standard"))
    assert adv[2] < 0  # plain GRPO does push wrong rollouts down
    # The qualified mask does not change plain GRPO.
    assert np.array_equal(adv, group_advantages(rewards, [1, 0, 0, 0], mode="standard"))


def test_batch_rows_are_eq6_of_each_group():
    # The batch form against Eq. 6 written out per group with the standard library: each
    # row must use its own group's mean, std and qualified flags, never another row's.
    rng = np.random.default_rng(7)
    rewards = rng.choice([0.0, 1.0, 2.0], size=(16, 8)) + rng.random((16, 8)) * 0.3
    qualified = rewards >= 2.0
    qualified[3] = False  # at least one group with no qualified rollout
    assert qualified.any(axis=1).sum() not in (0, 16)   # both branches of Eq. 6 occur
    for mode in ("clipped_positive", "standard"):
        batch = batch_advantages(rewards, qualified, mode=mode)
        for i in range(16):
            assert batch[i] == pytest.approx(
                _independent(list(rewards[i]), list(qualified[i]), mode), rel=1e-12)


@pytest.mark.parametrize(("rewards", "qualified", "kwargs", "match"), [
    ([1.0, np.nan], [True, False], {}, "non-finite"),
    ([1.0, np.inf], [True, False], {}, "non-finite"),
    ([1.0, 2.0], [True], {}, "shape"),
    ([1.0, 2.0], [2, 0], {}, "0/1"),
    ([], [], {}, "non-empty"),
    ([1.0, 2.0], [True, False], {"eps": 0.0}, "eps"),
    ([1.0, 2.0], [True, False], {"mode": "dapo"}, "mode"),
    ([1.0, 2.0], None, {}, "qualified"),
    ([1.0, 2.0], [True, False], {"std": "biased"}, "adv_std"),
])
def test_bad_input_raises(rewards, qualified, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, qualified, **kwargs)


def test_batch_rejects_one_dimensional_input():
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        batch_advantages([1.0, 2.0], [True, False])


group_size = st.integers(1, 16)
reward = st.floats(-1e3, 1e3, allow_nan=False)


@settings(deadline=None, max_examples=300)
@given(group_size.flatmap(lambda g: st.tuples(st.lists(reward, min_size=g, max_size=g),
                                              st.lists(st.booleans(), min_size=g,
                                                       max_size=g))))
def test_clipped_positive_never_negative_when_some_qualified(case):
    rewards, qualified = case
    adv = group_advantages(rewards, qualified)
    assert np.isfinite(adv).all()
    if any(qualified):
        assert (adv >= 0).all()
    else:
        assert adv == pytest.approx(_independent(rewards, qualified, "clipped"), abs=1e-6)


@settings(deadline=None, max_examples=200)
@given(reward, group_size, st.lists(st.booleans(), min_size=16, max_size=16),
       st.sampled_from(["clipped_positive", "standard"]))
def test_all_tied_groups_are_finite(value, g, flags, mode):
    adv = group_advantages([value] * g, flags[:g], mode=mode)
    assert np.isfinite(adv).all()
    # Tied rewards carry no preference: no rollout is favoured over another.
    assert np.ptp(adv) == 0.0


def test_an_overflowing_advantage_is_refused_not_infinite():
    # Found by the fuzz test: one all-wrong rollout, shift 1e77 over std 0 + eps 6e-232 is
    # about -1.8e308, beyond a float: refused with the settings to change, never -inf.
    # (Plain GRPO cannot overflow: |r - mean| / std is at most sqrt(G - 1).)
    with pytest.raises(ValueError, match="advantages overflow a float.*reward.adv_shift"):
        group_advantages([0.0], [False], shift=1.089259350597393e77,
                         eps=6.059206265371974e-232)
