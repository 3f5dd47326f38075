"""Parsers of rewards/: extract_score, format_reward, answer_content, custom tag sets.

The literal outputs below follow the paper's appendix syntax
"[think]Your think[/think][answer]Score:Your score[/answer]"; test_paper_tag_syntax pins
conf/prompts.yaml to it, so a changed template fails there first, with a clear message.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conf.prompts import default_prompts, score_answer, tags
from rewards import (
    answer_content,
    extract_score,
    format_reward,
    grammar,
    mos_digits,
    think_content,
)

GOOD = "[think]The sky is sharp, slight noise.[/think][answer]Score:3.7[/answer]"

# 10 kB of printable noise without brackets (seeded, so the table is fixed).
_rng = random.Random(0)
NOISE_10K = "".join(_rng.choice("abcdefghij klmnop:.,0123456789\n") for _ in range(10_000))
# 10 kB made of answer fragments: hundreds of answer blocks, so no single answer to read.
TAG_SOUP_10K = ("[think]x[/think][answer]Score:3.7[/answer]" * 250)[:10_000]

# (output, mode, format reward, extracted score); the expectations follow the format rules of
# rewards/parsing.py's docstring (the prompt's answer template, one decimal, 0..5).
ADVERSARIAL = [
    ("", "think", 0.0, None),
    ("", "no_think", 0.0, None),
    (GOOD, "think", 1.0, 3.7),
    ("[think]ok[/think][answer] Score: 3.7 [/answer]", "think", 1.0, 3.7),
    ("[think]ok[/think]\n[answer]Score:\t3.7\n[/answer]\n", "think", 1.0, 3.7),
    # The prompt asks for "a float between 0 and 5, rounded to one decimal place": other
    # numbers are read (Eq. 1 judges them) but are not the format.
    ("[think]ok[/think][answer]Score:-1.5[/answer]", "think", 0.0, -1.5),
    ("[think]ok[/think][answer]Score:4[/answer]", "think", 0.0, 4.0),
    ("[think]ok[/think][answer]Score: 12.0[/answer]", "think", 0.0, 12.0),
    ("[think]ok[/think][answer]Score:-0.5[/answer]", "think", 0.0, -0.5),
    ("[think]ok[/think][answer]Score:3.456[/answer]", "think", 0.0, 3.456),
    ("[think]ok[/think][answer]Score:5.1[/answer]", "think", 0.0, 5.1),
    ("[think]ok[/think][answer]Score:5.0[/answer]", "think", 1.0, 5.0),
    ("[think]ok[/think][answer]Score:0.0[/answer]", "think", 1.0, 0.0),
    ("[think][/think][answer]Score:3.7[/answer]", "think", 0.0, 3.7),       # empty think
    ("[think] \n\t [/think][answer]Score:3.7[/answer]", "think", 0.0, 3.7),  # blank think
    ("[think]a[think]b[/think][/think][answer]Score:3.7[/answer]", "think", 0.0, 3.7),
    ("[think]a[/think][answer][answer]Score:3.7[/answer][/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score:3.7[/answer][answer]Score:1.0[/answer]", "think", 0.0, None),
    ("[think]I say [answer]Score:1[/answer][/think][answer]Score:3.7[/answer]", "think", 0.0,
     None),
    ("[think]a[/think][answer]Score: 3.7.1[/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score: \u0663.\u0667[/answer]", "think", 0.0, None),  # Arabic-Indic
    ("[think]a[/think][answer]Score: \uff13.\uff17[/answer]", "think", 0.0, None),  # fullwidth
    ("[think]a[/think][answer]Score: 3.\u0667[/answer]", "think", 0.0, None),
    ("Sure! [think]a[/think][answer]Score:3.7[/answer]", "think", 0.0, 3.7),
    ("[think]a[/think][answer]Score:3.7[/answer] Thanks", "think", 0.0, 3.7),
    ("[think]a[/think] so [answer]Score:3.7[/answer]", "think", 0.0, 3.7),
    ("[think]a[answer]Score:3.7[/answer]", "think", 0.0, 3.7),              # no [/think]
    ("[think]a[/think][answer]Score:3.7", "think", 0.0, None),               # no [/answer]
    ("[think]a[/think][/answer]Score:3.7[answer]", "think", 0.0, None),      # reversed
    ("[answer]Score:3.7[/answer][think]a[/think]", "think", 0.0, 3.7),       # wrong order
    ("[think]a[/think][answer]3.7[/answer]", "think", 0.0, None),            # no "Score:"
    ("[think]a[/think][answer]score: 3.7[/answer]", "think", 0.0, None),     # case
    ("[think]a[/think][answer]Score: 3.[/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score: .5[/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score: 1e3[/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score: nan[/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score: inf[/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score: 3.7/5[/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score: 3.7 out of 5[/answer]", "think", 0.0, None),
    ("[think]a[/think][answer]Score: " + "9" * 400 + "[/answer]", "think", 0.0, None),  # inf
    ("[answer]Score: 4.2[/answer]", "no_think", 1.0, 4.2),
    (" [answer] Score:4.2 [/answer]\n", "no_think", 1.0, 4.2),
    ("[answer]Score: 4.2[/answer]", "think", 0.0, 4.2),                      # think missing
    (GOOD, "no_think", 0.0, 3.7),                                            # think present
    ("[think][answer]Score: 4.2[/answer]", "no_think", 0.0, 4.2),
    (NOISE_10K, "think", 0.0, None),
    (TAG_SOUP_10K, "think", 0.0, None),
    (NOISE_10K + GOOD, "think", 0.0, 3.7),
]


def test_paper_tag_syntax():
    # The appendix prompts (paper, "Prompts Used for Training and Evaluation").
    t = tags()
    assert (t.think_open, t.think_close, t.answer_open, t.answer_close, t.score_prefix,
            t.choice_separator) == ("[think]", "[/think]", "[answer]", "[/answer]", "Score:", "/")


@pytest.mark.parametrize(("text", "mode", "fmt", "score"), ADVERSARIAL)
def test_adversarial_outputs(text, mode, fmt, score):
    assert format_reward(text, mode) == fmt
    assert extract_score(text) == score


def test_what_score_answer_writes_is_accepted():
    # conf.prompts.score_answer writes the cold-start targets; the parsers must accept them.
    think = score_answer("2.3", "think", think="blurry, low contrast")
    assert format_reward(think, "think") == 1.0 and extract_score(think) == 2.3
    no_think = score_answer("2.3", "no_think")
    assert format_reward(no_think, "no_think") == 1.0 and extract_score(no_think) == 2.3
    assert format_reward(think, "no_think") == 0.0


@settings(deadline=None, max_examples=200)
@given(think=st.text(min_size=1, max_size=80).filter(lambda s: "[" not in s and s.strip()),
       mos=st.floats(0, 5), m=st.integers(1, 3))
def test_round_trip_with_mos_digits(think, mos, m):
    # Any non-blank think without tags and any ground-truth string reads back as the same
    # number; it is the required format exactly when it has one decimal (M = 2, the
    # paper's), and with strict=False whatever its digits.
    digits = mos_digits(mos, m)
    text = score_answer(digits, "think", think=think)
    assert format_reward(text, "think") == (1.0 if m == 2 else 0.0)
    assert format_reward(text, "think", strict=False) == 1.0
    assert extract_score(text) == float(digits)


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=st.sampled_from(list("[]/thinkanswerScore: 3.7\u0663\uff13")),
               max_size=120))
def test_random_tag_soup_never_crashes(text):
    score = extract_score(text)
    assert score is None or isinstance(score, float)
    for mode in ("think", "no_think"):
        fmt = format_reward(text, mode)
        assert fmt in (0.0, 1.0)
        # A well-formed output always carries a readable score.
        assert fmt == 0.0 or score is not None


def test_answer_content():
    assert answer_content(GOOD) == "Score:3.7"
    assert answer_content("x[answer] a / b [/answer]y") == " a / b "
    assert answer_content("[answer]a[/answer][answer]b[/answer]") is None
    assert answer_content("[/answer]a[answer]") is None
    assert answer_content("no tags") is None


def _custom_prompts():
    node = OmegaConf.to_container(default_prompts())
    node["tags"].update(think_open="<think>", think_close="</think>",
                        answer_open="<answer>", answer_close="</answer>",
                        score_prefix="Rating=")
    return OmegaConf.create(node)


def test_overridden_tags_change_the_parsers():
    custom = _custom_prompts()
    text = score_answer("1.5", "think", think="dark", prompts=custom)
    assert text == "<think>dark</think><answer>Rating=1.5</answer>"
    assert format_reward(text, "think", prompts=custom) == 1.0
    assert extract_score(text, prompts=custom) == 1.5
    # The default grammar does not read the custom syntax, and vice versa.
    assert format_reward(text, "think") == 0.0 and extract_score(text) is None
    assert format_reward(GOOD, "think", prompts=custom) == 0.0
    # One compiled grammar per tag set.
    assert grammar(custom) is grammar(_custom_prompts())


def test_bad_tag_sets_are_rejected():
    node = OmegaConf.to_container(default_prompts())
    node["tags"]["answer_close"] = "[answer]]"  # contains answer_open
    with pytest.raises(ValueError, match="answer_open"):
        grammar(OmegaConf.create(node))
    node = OmegaConf.to_container(default_prompts())
    # "<a>" ends with "a>", the start of "a>b": in "<a>b" the scan could see only one.
    node["tags"].update(answer_open="<a>", answer_close="a>b")
    with pytest.raises(ValueError, match="overlaps"):
        grammar(OmegaConf.create(node))
    node = OmegaConf.to_container(default_prompts())
    del node["tags"]["score_prefix"]
    with pytest.raises(ValueError, match="score_prefix"):
        grammar(OmegaConf.create(node))
    node = OmegaConf.to_container(default_prompts())
    node["tags"]["think_open"] = ""
    with pytest.raises(ValueError, match="think_open"):
        grammar(OmegaConf.create(node))
    with pytest.raises(ValueError, match="tags"):
        grammar(OmegaConf.create({"no_tags": 1}))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode"):
        format_reward(GOOD, "fast")
    with pytest.raises(TypeError, match="str"):
        extract_score(None)
    with pytest.raises(TypeError, match="str"):
        format_reward(b"[answer]Score:1[/answer]", "no_think")


# The think block the think-length metric reads (hand-worked examples).
@pytest.mark.parametrize("text, expected", [
    ("[think]sharp, bright[/think][answer]Score:3.7[/answer]", "sharp, bright"),
    ("[think][/think][answer]Score:3.7[/answer]", ""),
    ("[answer]Score:3.7[/answer]", None),
    ("[think]a[/think][think]b[/think]", None),
    ("[/think]a[think]", None),
    ("[think]unclosed", None),
])
def test_think_content(text, expected):
    assert think_content(text) == expected
