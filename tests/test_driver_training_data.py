"""driver.training_data: several manifests, no leakage by default, the data fingerprint."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from driver.training_data import (
    DataError,
    fingerprint,
    fingerprint_changes,
    load_training_data,
    manifest_paths,
)


def _manifest(folder, name, rows):
    """A score manifest in `folder` with images in its own images/ subfolder; rows are
    (id, split)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for sid, split in rows:
        Image.new("RGB", (40, 40), (len(sid) * 9 % 255, 50, 90)).save(
            folder / "images" / f"{sid}.png")
        sample = {"id": sid, "task": "score", "images": [f"images/{sid}.png"],
                  "question": None, "answer": None, "mos": 2.5, "bbox": None,
                  "image_size": [40, 40], "source": name, "split": split, "meta": {}}
        lines.append(json.dumps(sample))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_two_manifests_resolve_their_own_paths_and_mix(tmp_path):
    koniq = _manifest(tmp_path / "koniq", "koniq", [("k1", "train"), ("k2", "train")])
    spaq = _manifest(tmp_path / "spaq", "spaq", [("s1", "train"), ("s2", "train")])
    data = load_training_data([str(koniq), str(spaq)], None, False, ("score",))
    assert [s["id"] for s in data.train] == ["k1", "k2", "s1", "s2"]
    # Each image path resolves against its own manifest's folder.
    assert data.train[0]["images"] == [str(tmp_path / "koniq" / "images" / "k1.png")]
    assert data.train[2]["images"] == [str(tmp_path / "spaq" / "images" / "s1.png")]
    assert data.test == [] and data.manifests == [koniq, spaq]


def test_test_samples_in_training_are_refused_unless_dropped(tmp_path):
    mixed = _manifest(tmp_path, "mixed", [("a", "train"), ("b", "test"), ("c", "test"),
                                          ("d", "train")])
    with pytest.raises(DataError, match="2 samples marked split=test.*drop_test_split"):
        load_training_data(str(mixed), None, False, ("score",))
    data = load_training_data(str(mixed), str(mixed), True, ("score",))
    assert [s["id"] for s in data.train] == ["a", "d"]
    assert [s["id"] for s in data.test] == ["b", "c"]
    assert "dropped 2 split=test samples" in data.notes[0]
    # A test manifest that lists a training image (here "d", marked test there) is refused.
    other = tmp_path / "other.jsonl"
    other.write_text(mixed.read_text().replace('"split": "train"', '"split": "test"'))
    with pytest.raises(DataError, match="2 test images are also training images"):
        load_training_data(str(mixed), str(other), True, ("score",))


def test_validation_reads_the_test_split_of_a_combined_manifest(tmp_path):
    train = _manifest(tmp_path / "tr", "train", [("a", "train"), ("b", "train")])
    both = _manifest(tmp_path / "both", "both", [("x", "train"), ("y", "test"), ("z", "test")])
    data = load_training_data(str(train), str(both), False, ("score",))
    assert [s["id"] for s in data.test] == ["y", "z"]


def test_ids_must_be_unique_and_shared_images_are_reported(tmp_path):
    one = _manifest(tmp_path / "one", "one", [("a", "train"), ("b", "train")])
    two = _manifest(tmp_path / "two", "two", [("a", "train")])
    with pytest.raises(DataError, match="sample id 'a' names different images"):
        load_training_data([str(one), str(two)], None, False, ("score",))
    # Another manifest whose samples (other ids) point at one's images: reported.
    again = tmp_path / "again" / "again.jsonl"
    again.parent.mkdir()
    again.write_text(one.read_text().replace('"images/', '"../one/images/')
                     .replace('"id": "', '"id": "again-'))
    data = load_training_data([str(one), str(again)], None, False, ("score",))
    assert len(data.train) == 4 and "2 images appear in more than one" in data.notes[0]


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        manifest_paths(str(tmp_path / "nope.jsonl"), "data.train_manifest")
    with pytest.raises(DataError, match="data.test_manifest must be a manifest path"):
        manifest_paths([], "data.test_manifest")
    with pytest.raises(DataError, match="this stage trains on"):
        load_training_data(str(_manifest(tmp_path, "s", [("a", "train")])), None, False,
                           ("choice", "grounding"))


def test_fingerprint_changes_are_named(tmp_path):
    path = _manifest(tmp_path, "m", [("a", "train"), ("b", "train")])
    first = fingerprint([path], 8, True, 1234, False)
    assert fingerprint_changes(first, fingerprint([path], 8, True, 1234, False)) == []
    assert fingerprint_changes(first, fingerprint([path], 4, True, 1234, False)) == [
        "samples_per_step 8 -> 4"]
    path.write_text(path.read_text().replace('"mos": 2.5', '"mos": 3.5', 1))
    assert fingerprint_changes(first, fingerprint([path], 8, True, 1234, False)) == [
        f"{path.resolve()} changed content"]
    assert json.loads(json.dumps(first)) == first   # stored in trainer_state.json
