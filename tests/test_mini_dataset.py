"""The embedded mini dataset (synth.mini_dataset): contents, split by photo, determinism,
caching."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synth.manifest import read_manifest, resolve_images
from synth.mini_dataset import (
    CROPS_TEST,
    CROPS_TRAIN,
    PHOTOS,
    STAGE2_SOURCE,
    TEST_PHOTOS,
    build_mini_dataset,
    synthetic_mos,
)

KEYS = ("stage1_train", "stage1_test", "stage2_train", "stage2_test")
GREY = {"camera", "brick", "grass", "gravel", "moon", "coins", "text"}   # saturation: no change


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    return build_mini_dataset(tmp_path_factory.mktemp("mini"), seed=0)


def folder_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "summary.json"}


def stage2(built) -> list[dict]:
    return read_manifest(built["stage2_train"]) + read_manifest(built["stage2_test"])


def test_manifests_validate_and_have_the_planned_sizes(built):
    assert built["cached"] is False
    samples = {k: read_manifest(built[k]) for k in KEYS}
    # Stage-1: 15 annotated objects x 3 variants x 4 samples; the test photos (chelsea,
    # camera) hold 6 of the objects: 6 x 3 x 4 = 72 test samples, 9 x 3 x 4 = 108 train.
    assert len(samples["stage1_train"]) == 108 and len(samples["stage1_test"]) == 72
    # Stage-2: crops x (clean + 12 classes), less the 2 saturation classes on grey crops:
    # train 13 photos x 6 crops x 13 - 6 grey photos x 6 x 2 = 942;
    # test 2 photos x 4 crops x 13 - 1 grey photo x 4 x 2 = 96.
    assert len(samples["stage2_train"]) == 942 and len(samples["stage2_test"]) == 96
    for key in KEYS:
        for s in samples[key]:
            assert s["split"] == key.split("_")[1]
            for path in resolve_images(s, built[key]):
                assert path.is_file()


def test_test_split_is_by_source_photo_in_both_stages(built):
    train2, test2 = read_manifest(built["stage2_train"]), read_manifest(built["stage2_test"])
    assert {s["meta"]["photo"] for s in test2} == set(TEST_PHOTOS)
    assert {s["meta"]["photo"] for s in train2} == set(PHOTOS) - set(TEST_PHOTOS)
    test_files = {f"{p}.png" for p in TEST_PHOTOS}
    train1, test1 = read_manifest(built["stage1_train"]), read_manifest(built["stage1_test"])
    assert {s["meta"]["source_image"] for s in test1} == test_files
    assert not {s["meta"]["source_image"] for s in train1} & test_files


def test_stage2_mos_is_the_documented_synthetic_formula(built):
    samples = stage2(built)
    # clean 4.5, then 0.8 lower per level (module docstring)
    expected = {0: 4.5, 1: 3.7, 2: 2.9, 3: 2.1, 4: 1.3, 5: 0.5}
    for s in samples:
        assert s["source"] == STAGE2_SOURCE == "mini-synthetic-mos"
        assert s["task"] == "score" and s["question"] is None
        assert s["mos"] == expected[s["meta"]["level"]] == synthetic_mos(s["meta"]["level"])
    crops = (len(PHOTOS) - len(TEST_PHOTOS)) * CROPS_TRAIN + len(TEST_PHOTOS) * CROPS_TEST
    assert Counter(s["meta"]["level"] for s in samples)[0] == crops  # one clean per crop
    assert {s["meta"]["level"] for s in read_manifest(built["stage2_test"])} == set(range(6))
    assert len({s["meta"]["class"] for s in samples if s["meta"]["class"]}) == 12
    grey = {s["meta"]["class"] for s in samples if s["meta"]["photo"] in GREY}
    assert not grey & {"oversaturate", "desaturate"}


def test_levels_are_balanced_within_every_crop(built):
    # A colour crop's 12 classes take the levels 1..5 in turn: each level 2 or 3 times.
    by_crop: dict[tuple, Counter] = {}
    for s in stage2(built):
        if s["meta"]["level"] and s["meta"]["photo"] not in GREY:
            by_crop.setdefault((s["meta"]["photo"], s["meta"]["crop"]), Counter())[
                s["meta"]["level"]] += 1
    assert by_crop
    for counts in by_crop.values():
        assert sorted(counts) == [1, 2, 3, 4, 5] and set(counts.values()) <= {2, 3}
        assert sum(counts.values()) == 12


def test_stage2_images_match_their_labels(built):
    samples = stage2(built)
    clean = {(s["meta"]["photo"], s["meta"]["crop"]): s for s in samples
             if s["meta"]["level"] == 0}
    for s in samples[::7]:
        (path,) = resolve_images(s, built["stage2_train"])
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert list(pixels.shape[1::-1]) == s["image_size"] == [224, 224]
        if s["meta"]["level"]:
            (ref,) = resolve_images(clean[(s["meta"]["photo"], s["meta"]["crop"])],
                                    built["stage2_train"])
            assert not np.array_equal(pixels, np.asarray(Image.open(ref).convert("RGB")))


def test_second_call_reuses_and_same_seed_rebuilds_identically(built, tmp_path):
    root = built["stage2_train"].parent
    again = build_mini_dataset(root.parent, seed=0)
    assert again["cached"] is True
    assert all(again[k] == built[k] for k in KEYS)
    fresh = build_mini_dataset(tmp_path, seed=0)
    assert fresh["cached"] is False
    assert folder_digest(fresh["stage2_train"].parent) == folder_digest(root)


def test_other_seed_gives_other_draws(built, tmp_path):
    other = build_mini_dataset(tmp_path, seed=1)
    assert other["stage2_train"].parent.name != built["stage2_train"].parent.name
    pixels = [hashlib.sha256(Path(resolve_images(s, b["stage2_train"])[0]).read_bytes())
              .hexdigest() for b in (built, other) for s in read_manifest(b["stage2_test"])[:1]]
    assert pixels[0] != pixels[1]   # other crops


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="seed"):
        build_mini_dataset("/tmp/unused", seed=-1)
    with pytest.raises(ValueError, match="level"):
        synthetic_mos(6)
