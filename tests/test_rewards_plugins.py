"""rewards.plugins: loading `reward.plugins` entries, and the values they add.

Plug-ins here are functions of this module (named by module) and of files written into a
temporary folder (named by path); the expected values are worked by hand beside each
assertion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conf import ConfigError, load_config
from rewards.plugins import load_plugin, load_plugins, plugin_rewards
from rewards.scoring import REWARD_LIMIT

SAMPLES = [{"id": "a", "mos": 3.0}, {"id": "b", "mos": 1.0}]
TEXTS = [["x", "yy"], ["zzz", ""]]
ANSWERS = [[3.5, None], [1.0, 2.0]]


def length(sample, completion, answer):
    return float(len(completion))


def has_answer(sample, completion, answer):
    return 0.0 if answer is None else 1.0


def two_args(sample, completion):
    return 0.0


def test_values_and_weights_add_up_by_hand():
    plugins = load_plugins([f"{__name__}:length", f"{__name__}:has_answer"], [0.5, 2.0])
    total, each = plugin_rewards(plugins, SAMPLES, TEXTS, ANSWERS)
    np.testing.assert_array_equal(each["length"], [[1, 2], [3, 0]])
    np.testing.assert_array_equal(each["has_answer"], [[1, 0], [1, 1]])
    # 0.5 x length + 2 x has_answer: [[2.5, 1], [3.5, 2]]
    np.testing.assert_array_equal(total, [[2.5, 1.0], [3.5, 2.0]])
    assert [p.weight for p in load_plugins([f"{__name__}:length"], [])] == [1.0]


def test_a_file_plugin_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(
        "def shortness(sample, completion, answer):\n    return 1.0 / (1 + len(completion))\n")
    monkeypatch.chdir(tmp_path)
    (plugin,) = load_plugins(["mine.py:shortness"], None)
    total, _ = plugin_rewards([plugin], SAMPLES, TEXTS, ANSWERS)
    np.testing.assert_allclose(total, [[1 / 2, 1 / 3], [1 / 4, 1.0]])


@pytest.mark.parametrize(("spec", "message"), [
    ("nocolon", "must look like 'package.module:function'"),
    ("a.b:", "must look like"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    (f"{__name__}:missing", "has no function missing"),
    (f"{__name__}:two_args", "must take \\(sample, completion, answer\\)"),
    ("no/such/file.py:f", "no file"),
    ("a-b:f", "neither a dotted module name nor a .py file"),
])
def test_bad_entries_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        load_plugin(spec)


def test_weights_and_names_are_checked():
    with pytest.raises(ValueError, match="2 weights for 1 reward.plugins"):
        load_plugins([f"{__name__}:length"], [1.0, 2.0])
    with pytest.raises(ValueError, match="share a function name"):
        load_plugins([f"{__name__}:length", f"{__name__}:length"], None)
    with pytest.raises(ValueError, match="plugin_weights"):
        load_plugins([f"{__name__}:length"], [math.nan])


def test_the_run_refuses_a_bad_plugin_before_anything_starts():
    from driver.experience_maker import reward_plugins

    cfg = load_config("tiny", ["reward.plugins=[no_such_module_xyz:f]"])
    with pytest.raises(ConfigError, match="cannot import no_such_module_xyz"):
        reward_plugins(cfg)
    assert reward_plugins(load_config("tiny")) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "3", None, 10 * REWARD_LIMIT])
def test_a_value_that_is_not_a_bounded_number_is_refused(bad):
    def returns_bad(sample, completion, answer):
        return bad

    from rewards.plugins import RewardPlugin

    plugin = RewardPlugin("returns_bad", 1.0, returns_bad)
    with pytest.raises(ValueError, match="returns_bad on sample 'a', rollout 0"):
        plugin_rewards([plugin], SAMPLES, TEXTS, ANSWERS)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_the_loader_answers_any_spec_with_a_plugin_or_one_clear_error(text):
    # A module part that cannot exist, so no real module is ever imported by the fuzzer;
    # the parser in front of the import sees every shape of string.
    spec = f"refine_iqa_fuzz_{text}"
    try:
        load_plugin(spec)
    except ValueError as err:
        assert str(err).startswith("reward.plugins:")
    else:  # pragma: no cover - nothing of that name can be imported
        pytest.fail(f"{spec!r} loaded")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                 st.text(max_size=3), st.none(), st.booleans()))
def test_plugin_values_are_finite_bounded_numbers_or_refused(value):
    from rewards.plugins import RewardPlugin

    plugin = RewardPlugin("v", 1.0, lambda sample, completion, answer: value)
    try:
        total, _ = plugin_rewards([plugin], SAMPLES, TEXTS, ANSWERS)
    except ValueError as err:
        assert "reward plug-in v on sample" in str(err)
    else:
        assert np.isfinite(total).all() and np.abs(total).max() <= REWARD_LIMIT
        assert not isinstance(value, (str, bool)) and value is not None
