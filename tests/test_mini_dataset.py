"""The embedded mini dataset (synth.mini_dataset): contents, determinism, caching."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synth.manifest import read_manifest, resolve_images
from synth.mini_dataset import STAGE2_SOURCE, build_mini_dataset, synthetic_mos

KEYS = ("stage1_train", "stage1_test", "stage2_train", "stage2_test")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    return build_mini_dataset(tmp_path_factory.mktemp("mini"), seed=0)


def folder_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "summary.json"}


def test_manifests_validate_and_have_the_planned_sizes(built):
    assert built["cached"] is False
    samples = {k: read_manifest(built[k]) for k in KEYS}
    # 15 annotated objects -> 15 distorted images, 4 samples each; a quarter to test
    assert len(samples["stage1_train"]) == 44 and len(samples["stage1_test"]) == 16
    # 5 photos x (clean + one per class of 12) = 65 stage-2 images, less the two saturation
    # classes on the grey camera photo (no visible change); about a fifth to test
    assert len(samples["stage2_train"]) + len(samples["stage2_test"]) == 63
    assert 40 <= len(samples["stage2_train"]) <= 80
    for key in KEYS:
        for s in samples[key]:
            assert s["split"] == key.split("_")[1]
            for path in resolve_images(s, built[key]):
                assert path.is_file()


def test_stage2_mos_is_the_documented_synthetic_formula(built):
    samples = read_manifest(built["stage2_train"]) + read_manifest(built["stage2_test"])
    # clean 4.5, then 0.8 lower per level (module docstring)
    expected = {0: 4.5, 1: 3.7, 2: 2.9, 3: 2.1, 4: 1.3, 5: 0.5}
    for s in samples:
        assert s["source"] == STAGE2_SOURCE == "mini-synthetic-mos"
        assert s["task"] == "score" and s["question"] is None
        assert s["mos"] == expected[s["meta"]["level"]] == synthetic_mos(s["meta"]["level"])
    assert Counter(s["meta"]["level"] for s in samples)[0] == 5  # one clean copy per photo
    assert {s["meta"]["level"] for s in read_manifest(built["stage2_test"])} == set(range(6))
    assert len({s["meta"]["class"] for s in samples if s["meta"]["class"]}) == 12
    camera = {s["meta"]["class"] for s in samples if s["meta"]["photo"] == "camera"}
    assert not camera & {"oversaturate", "desaturate"}


def test_stage2_images_match_their_labels(built):
    samples = read_manifest(built["stage2_train"]) + read_manifest(built["stage2_test"])
    clean = {s["meta"]["photo"]: s for s in samples if s["meta"]["level"] == 0}
    for s in samples:
        (path,) = resolve_images(s, built["stage2_train"])
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert list(pixels.shape[1::-1]) == s["image_size"]
        assert max(s["image_size"]) == 224
        if s["meta"]["level"]:
            (ref,) = resolve_images(clean[s["meta"]["photo"]], built["stage2_train"])
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
    draws = [{s["id"] for s in read_manifest(b["stage2_train"]) + read_manifest(b["stage2_test"])}
             for b in (built, other)]
    assert draws[0] != draws[1]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="seed"):
        build_mini_dataset("/tmp/unused", seed=-1)
    with pytest.raises(ValueError, match="level"):
        synthetic_mos(6)
