"""The tiny model's warm-up (learner/cold_start.py) teaches the answer format and the
distortion class, never severity or the score: its examples, checked without training."""

from __future__ import annotations

import numpy as np
import pytest

from conf import prompts as P
from learner.cold_start import (
    _distorted,
    _next_example,
    class_question,
    class_sample,
    class_target,
    cold_start,
)
from synth.manifest import read_manifest
from synth.mini_dataset import build_mini_dataset
from tests.conftest import TEST_CACHE

SEVERITY_WORDS = set(P.default_prompts().severity_prompt_words)


def _score_sample(level: int, cls: str | None) -> dict:
    return {"id": f"s{level}{cls}", "task": "score", "images": ["x.png"], "question": None,
            "answer": None, "mos": 4.5 - 0.8 * level, "bbox": None, "image_size": [8, 8],
            "split": "train", "meta": {"class": cls, "level": level}}


def test_class_question_lists_the_twelve_classes_and_asks_for_one():
    question = class_question()
    words = P.default_prompts().class_words
    assert len(words) == 12 and all(f"'{w}'" in question for w in words)
    assert "[answer]" in question and not any(w in question for w in SEVERITY_WORDS)


def test_class_examples_name_the_class_and_nothing_of_the_level():
    sample = _score_sample(4, "noise")
    example = class_sample(sample)
    assert example["task"] == "choice" and example["mos"] is None
    assert example["answer"] == "noise" and example["id"] != sample["id"]
    assert class_target(sample) == "[answer]noise[/answer]"
    # Only distorted images of a known class are asked about: a clean image named
    # "clean" would teach level 0 apart from the others (severity).
    pool = [_score_sample(0, None), _score_sample(2, "blur"), _score_sample(5, "noise")]
    assert [s["meta"]["level"] for s in _distorted(pool)] == [2, 5]


def test_every_example_target_is_independent_of_the_level():
    # Two pools that differ only in the levels (and so the MOS) of their images draw the
    # same targets with the same generator: no target can depend on severity or score.
    def pool(levels):
        return [_score_sample(lv, c) for lv, c in zip(levels, ["blur", "noise", "pixelate"])]

    by_level = []
    for levels in ([1, 2, 3], [5, 4, 1]):
        samples = pool(levels)
        rng = np.random.default_rng(7)
        drawn = [_next_example({"score": samples}, _distorted(samples), rng, 0.6)
                 for _ in range(200)]
        by_level.append([(s["id"][2:], mode, target) for s, mode, target in drawn])
    assert [x[1:] for x in by_level[0]] == [x[1:] for x in by_level[1]]
    targets = [t for _, _, t in by_level[0] if t is not None]
    assert 0.45 < len(targets) / 200 < 0.75   # class_share 0.6 of the examples
    assert {t for t in targets} <= {"[answer]blur[/answer]", "[answer]noise[/answer]",
                                    "[answer]pixelate[/answer]"}


def test_warm_up_refuses_test_split_samples(tmp_path):
    mini = build_mini_dataset(TEST_CACHE / "mini")
    with pytest.raises(ValueError, match="training manifests only"):
        cold_start(tmp_path / "no-model", [mini["stage2_test"]], tmp_path)
    assert read_manifest(mini["stage2_test"])[0]["split"] == "test"
