"""driver.data_splits and driver.training_data: three splits from several files, no leakage
by default, validation carved by source image, every sample checked up front, the data
fingerprint."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conf import load_config
from driver import metrics as M
from driver.data_splits import carve, file_list, load_splits
from driver.training_data import DataError, fingerprint, fingerprint_changes, run_data
from driver.validation import Validator


def _manifest(folder, name, rows, photo=None):
    """A score manifest in `folder` with images in its own images/ subfolder; rows are
    (id, split); `photo(id)` names each sample's source photo (meta.photo)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for sid, split in rows:
        Image.new("RGB", (40, 40), (len(sid) * 9 % 255, 50, 90)).save(
            folder / "images" / f"{sid}.png")
        sample = {"id": sid, "task": "score", "images": [f"images/{sid}.png"],
                  "question": None, "answer": None, "mos": 2.5, "bbox": None,
                  "image_size": [40, 40], "source": name, "split": split,
                  "meta": {"photo": photo(sid)} if photo else {}}
        lines.append(json.dumps(sample))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(train, val=None, test=None, *overrides):
    """conf=tiny on these files, no validation carved unless an override asks for it."""
    files = [f"data.{key}_files={value}" for key, value in
             (("train", train), ("val", val), ("test", test)) if value is not None]
    return load_config("tiny", [*files, "data.val_fraction=0", *overrides])


def _splits(train, val=None, test=None, *overrides, tasks=("score",)):
    cfg = _cfg(train, val, test, *overrides)
    return load_splits(cfg, cfg.data.train_files, cfg.data.val_files, cfg.data.test_files,
                       tasks)


def test_two_manifests_resolve_their_own_paths_and_mix(tmp_path):
    koniq = _manifest(tmp_path / "koniq", "koniq", [("k1", "train"), ("k2", "train")])
    spaq = _manifest(tmp_path / "spaq", "spaq", [("s1", "train"), ("s2", "train")])
    data = _splits(f"[{koniq},{spaq}]")
    assert [s["id"] for s in data.train] == ["k1", "k2", "s1", "s2"]
    # Each image path resolves against its own manifest's folder.
    assert data.train[0]["images"] == [str(tmp_path / "koniq" / "images" / "k1.png")]
    assert data.train[2]["images"] == [str(tmp_path / "spaq" / "images" / "s1.png")]
    assert data.val == data.test == [] and data.files == [koniq, spaq]


def test_test_samples_in_training_are_refused_unless_dropped(tmp_path):
    mixed = _manifest(tmp_path, "mixed", [("a", "train"), ("b", "test"), ("c", "test"),
                                          ("d", "train")])
    with pytest.raises(DataError, match="2 samples marked split=test.*drop_test_split"):
        _splits(str(mixed))
    data = _splits(str(mixed), None, str(mixed), "data.drop_test_split=true")
    assert [s["id"] for s in data.train] == ["a", "d"]
    assert [s["id"] for s in data.test] == ["b", "c"]
    assert "dropped 2 split=test samples" in data.notes[0]
    # A test file that lists a training image (here "d", marked test there) is refused.
    other = tmp_path / "other.jsonl"
    other.write_text(mixed.read_text().replace('"split": "train"', '"split": "test"'))
    with pytest.raises(DataError, match="2 test images are also training images"):
        _splits(str(mixed), None, str(other), "data.drop_test_split=true")


def test_test_reads_the_test_split_of_a_combined_manifest(tmp_path):
    train = _manifest(tmp_path / "tr", "train", [("a", "train"), ("b", "train")])
    both = _manifest(tmp_path / "both", "both", [("x", "train"), ("y", "test"), ("z", "test")])
    assert [s["id"] for s in _splits(str(train), None, str(both)).test] == ["y", "z"]


def test_validation_comes_from_val_files_or_val_marks_or_is_carved_by_source(tmp_path):
    # 8 samples of 4 photos, 2 crops each; val_fraction 0.5 carves 2 photos: every crop of
    # a photo lands on one side, and the same seed draws the same photos.
    rows = [(f"p{p}c{c}", "train") for p in range(4) for c in range(2)]
    train = _manifest(tmp_path / "tr", "train", rows, photo=lambda sid: sid[:2])
    cfg = _cfg(str(train), None, None, "data.val_fraction=0.5")
    data = load_splits(cfg, str(train), None, None, ("score",))
    photos = {s["meta"]["photo"] for s in data.val}
    assert len(photos) == 2 and len(data.val) == 4 and len(data.train) == 4
    assert not photos & {s["meta"]["photo"] for s in data.train}
    again = load_splits(cfg, str(train), None, None, ("score",))
    assert [s["id"] for s in again.val] == [s["id"] for s in data.val]
    # ...and the seed does draw: some other run.seed picks other photos (of 6 pairs).
    drawn = {frozenset(s["meta"]["photo"] for s in load_splits(
        _cfg(str(train), None, None, "data.val_fraction=0.5", f"run.seed={seed}"),
        str(train), None, None, ("score",)).val) for seed in range(8)}
    assert len(drawn) > 1
    # Val-marked samples of a training file are the validation set, none carved.
    marked = _manifest(tmp_path / "mk", "marked", [("m1", "train"), ("m2", "val")])
    data = load_splits(_cfg(str(marked)), str(marked), None, None, ("score",))
    assert ([s["id"] for s in data.train], [s["id"] for s in data.val]) == (["m1"], ["m2"])
    # Validation files win; their test-marked samples are refused (model selection must
    # not read the test split); a validation image that is also a training image too.
    val = _manifest(tmp_path / "va", "val", [("v1", "train")])
    data = _splits(str(marked), str(val))
    assert [s["id"] for s in data.val] == ["v1"]
    with pytest.raises(DataError, match="data.val_files hold samples marked split=test"):
        _splits(str(marked), str(_manifest(tmp_path / "vt", "vt", [("t", "test")])))
    with pytest.raises(DataError, match="1 validation images are also training images"):
        _splits(str(marked), str(marked))


def test_carve_keeps_at_least_one_source_on_each_side():
    samples = [{"id": str(i), "images": [f"/x/{i}.png"], "meta": {"photo": str(i % 3)}}
               for i in range(6)]
    train, val = carve(samples, 0.01, seed=1)   # 0.01 of 3 photos rounds to 0: 1 is carved
    assert len({s["meta"]["photo"] for s in val}) == 1 and len(train) == 4
    train, val = carve(samples, 0.99, seed=1)   # never all: one photo stays for training
    assert len({s["meta"]["photo"] for s in train}) == 1
    assert carve(samples, 0.0, seed=1) == (samples, [])


def test_a_csv_and_a_parquet_train_with_their_own_column_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "img").mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (60, 60), (10, 20, 30)).save(tmp_path / "img" / f"{name}.png")
    (tmp_path / "one.csv").write_text("path,q\nimg/a.png,80\nimg/b.png,20\n")
    pq.write_table(pa.table({"path": ["img/c.png"], "q": [50.0]}), tmp_path / "two.parquet")
    cfg = _cfg(f"[{tmp_path / 'one.csv'},{tmp_path / 'two.parquet'}]", None, None,
               "data.image_key=path", "data.mos_key=q", "data.mos_range=[0,100]")
    data = load_splits(cfg, [str(tmp_path / "one.csv"), str(tmp_path / "two.parquet")], None,
                       None, ("score",))
    # 5 x 80 / 100 = 4.0, 5 x 20 / 100 = 1.0, 5 x 50 / 100 = 2.5
    assert [(s["id"], s["mos"]) for s in data.train] == [("one-0", 4.0), ("one-1", 1.0),
                                                         ("two-0", 2.5)]


def test_ids_must_be_unique_and_shared_images_are_reported(tmp_path):
    one = _manifest(tmp_path / "one", "one", [("a", "train"), ("b", "train")])
    two = _manifest(tmp_path / "two", "two", [("a", "train")])
    with pytest.raises(DataError, match="sample id 'a' names different images"):
        _splits(f"[{one},{two}]")
    # Another manifest whose samples (other ids) point at one's images: reported.
    again = tmp_path / "again" / "again.jsonl"
    again.parent.mkdir()
    again.write_text(one.read_text().replace('"images/', '"../one/images/')
                     .replace('"id": "', '"id": "again-'))
    data = _splits(f"[{one},{again}]")
    assert len(data.train) == 4 and "2 images appear in more than one" in data.notes[0]


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data.train_files: .*nope.jsonl.* does not exist"):
        _splits(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="data.test_files must be a file or a list"):
        file_list([], "data.test_files")
    with pytest.raises(DataError, match="this stage trains on"):
        _splits(str(_manifest(tmp_path, "s", [("a", "train")])),
                tasks=("choice", "grounding"))


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


def test_held_out_samples_are_checked_before_the_run(tmp_path):
    """A good training manifest and a validation manifest with one missing image: before,
    the missing image reached an engine at the first validation, after the cluster had
    started (FileNotFoundError from RolloutEngine.generate, a traceback, no metrics).
    Now it is left out up front and counted, and validation runs on the rest."""
    train = _manifest(tmp_path / "tr", "train", [(f"t{i}", "train") for i in range(4)])
    val = _manifest(tmp_path / "te", "val", [("x", "val"), ("y", "val"), ("z", "val")])
    (tmp_path / "te" / "images" / "y.png").unlink()
    data = run_data(_cfg(train, val))
    assert [s["id"] for s in data.val] == ["x", "z"]
    assert list(data.val_skipped) == ["y"] and "does not exist" in data.val_skipped["y"]
    # A file removed after the start is left out at the next validation; with none left
    # the counts are still logged (no engine is asked anything: it holds None here).
    validator = Validator(_cfg(train, val), None, None, None, data.val, check=data.check,
                          skipped=data.val_skipped)
    for sid in ("x", "z"):
        (tmp_path / "te" / "images" / f"{sid}.png").unlink()
    assert validator.due(0, 10)
    got = validator.run()
    assert (got[M.VAL_SAMPLES], got[M.VAL_SKIPPED]) == (0.0, 3.0)


def test_too_few_usable_samples_are_refused_before_the_run(tmp_path):
    """3 usable of 5 with 4 per step: before, run_data accepted it and the data stream
    raised a plain ValueError at the first step, after the cluster had started (a
    traceback); a batch size above the sample count (train.batch_size=10**23 passes the
    config checks) hung the stream for ever."""
    train = _manifest(tmp_path, "train", [(f"t{i}", "train") for i in range(5)])
    for sid in ("t1", "t3"):
        (tmp_path / "images" / f"{sid}.png").unlink()
    with pytest.raises(DataError, match=r"3 of 5 training samples are usable, fewer than one "
                                        r"step takes \(train.batch_size x train.grad_accum = "
                                        r"4 x 1 = 4\); 2 skipped, the first: sample t1"):
        run_data(_cfg(train))
    with pytest.raises(DataError, match="= 99999999999999999999999"):
        run_data(_cfg(train, None, None, "train.batch_size=99999999999999999999999"))


def test_a_one_pixel_image_is_skipped_and_counted(tmp_path):
    """A 1x1 PNG was trained on silently (blown up to 56x56 of one colour)."""
    train = _manifest(tmp_path, "train", [(f"t{i}", "train") for i in range(5)])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "images" / "t2.png")
    path = tmp_path / "train.jsonl"   # the manifest states the size the file has
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    (t2,) = [s for s in samples if s["id"] == "t2"]
    t2["image_size"] = [1, 1]
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    data = run_data(_cfg(train))
    assert list(data.stream.skipped) == ["t2"]
    assert "1x1 is below 28 pixels on a side" in data.stream.skipped["t2"]
    drawn = {s["id"] for _ in range(3) for s in data.stream.next_batch()[1]}
    assert drawn == {"t0", "t1", "t3", "t4"}


def test_prompts_longer_than_the_model_length_are_refused_before_the_run(tmp_path,
                                                                         tiny_model_dir):
    """rollout.max_model_len=100 with rollout.max_new_tokens=64 leaves 36 tokens for a
    prompt whose 40x40 image alone takes 4 (56x56 at min_pixels: 2 x 2 tokens) and whose
    think template takes more than 32: every sample would have failed inside vLLM at the
    first step. The sample check counts the prompt with the model's own processor."""
    train = _manifest(tmp_path, "train", [(f"t{i}", "train") for i in range(4)])
    with pytest.raises(DataError, match=r"prompt takes \d+ tokens, more than the 36 that "
                                        r"rollout.max_model_len leaves"):
        run_data(_cfg(train, None, None, "rollout.max_model_len=100"), str(tiny_model_dir))
    assert len(run_data(_cfg(train), str(tiny_model_dir)).stream.skipped) == 0
