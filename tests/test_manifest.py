"""The manifest format (synth.manifest): validation, reading, resumable appends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conf.prompts import stage1_choice_prompt, stage1_grounding_prompt
from synth.manifest import (
    append_samples,
    choice_answer,
    existing_ids,
    read_manifest,
    resolve_images,
    stage1_samples,
    validate_sample,
    write_manifest,
)


def score_sample(sid: str = "s1", mos: float = 3.2) -> dict:
    return {"id": sid, "task": "score", "images": ["img/a.png"], "question": None,
            "answer": None, "mos": mos, "bbox": None, "image_size": [64, 48],
            "source": "koniq10k", "split": "train", "meta": {}}


def choice_sample(sid: str = "c1") -> dict:
    return {"id": sid, "task": "choice", "images": ["ref.png", "dist.png"],
            "question": stage1_choice_prompt(["dog", "red car"], True),
            "answer": "dog / noise / severe", "mos": None, "bbox": [1, 2, 30, 40],
            "image_size": [64, 48], "source": "refine-perception", "split": "test",
            "meta": {"level": 4}}


def grounding_sample(sid: str = "g1") -> dict:
    return {**choice_sample(sid), "task": "grounding", "images": ["dist.png"],
            "question": stage1_grounding_prompt(False), "answer": "1,2,30,40"}


def test_valid_samples_of_every_task_pass_unchanged():
    for sample in (score_sample(), choice_sample(), grounding_sample()):
        assert validate_sample(sample) == sample


@pytest.mark.parametrize("change, field", [
    ({"task": "rank"}, "task"),
    ({"images": []}, "images"),
    ({"question": "rate it"}, "question"),          # score questions come from conf
    ({"mos": 5.0}, "mos"),                          # [0, 5): the top is excluded
    ({"mos": -0.1}, "mos"),
    ({"mos": None}, "mos"),
    ({"image_size": [64]}, "image_size"),
    ({"split": "dev"}, "split"),           # train, val, test only
    ({"source": ""}, "source"),
    ({"meta": []}, "meta"),
    ({"extra": 1}, "extra"),
])
def test_bad_score_fields_are_named(change, field):
    with pytest.raises(ValueError, match=f"field '{field}'"):
        validate_sample({**score_sample(), **change}, "m.jsonl:3")


@pytest.mark.parametrize("sample, field", [
    ({**choice_sample(), "answer": "dog / noise / very severe"}, "answer"),  # dataset word
    ({**choice_sample(), "answer": "dog / fog / severe"}, "answer"),         # not a class
    ({**choice_sample(), "answer": "dog / noise"}, "answer"),
    ({**choice_sample(), "bbox": [1, 2, 65, 40]}, "bbox"),                   # x2 > width
    ({**choice_sample(), "bbox": [5, 2, 5, 40]}, "bbox"),                    # empty
    ({**choice_sample(), "mos": 3.0}, "mos"),
    ({**choice_sample(), "question": None}, "question"),
    ({**grounding_sample(), "answer": "1,2,30"}, "answer"),
    ({**grounding_sample(), "answer": "1,2,30,49"}, "answer"),              # y2 > height
])
def test_bad_stage1_fields_are_named(sample, field):
    with pytest.raises(ValueError, match=f"field '{field}'"):
        validate_sample(sample)


def test_missing_field_is_named():
    sample = score_sample()
    del sample["image_size"]
    with pytest.raises(ValueError, match="x.jsonl:7: field 'image_size': missing"):
        validate_sample(sample, "x.jsonl:7")


def test_choice_answer_uses_conf_separator_and_rejects_it_inside_a_part():
    assert choice_answer("red car", "low contrast", "slight") == "red car / low contrast / slight"
    with pytest.raises(ValueError, match="object"):
        choice_answer("car/truck", "blur", "slight")


def test_read_manifest_names_file_and_line(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(score_sample()) + "\n\n"
                    + json.dumps({**score_sample("s2"), "mos": 7}) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:3: field 'mos'"):
        read_manifest(path)
    path.write_text(json.dumps(score_sample()) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:2: not valid JSON"):
        read_manifest(path)


def test_bytes_that_are_not_utf8_are_named_by_file_and_line(tmp_path: Path):
    """A 0xff byte on line 2 (a Latin-1 edit, say): read_manifest used to fail with the
    codec's "can't decode byte 0xff in position N" naming neither file nor line, and
    existing_ids (a builder's resume) with a bare UnicodeDecodeError."""
    path = tmp_path / "m.jsonl"
    good = json.dumps(score_sample("a")) + "\n"
    bad = json.dumps(score_sample("b")).replace('"koniq10k"', '"koniq\xff"')
    path.write_bytes(good.encode() + bad.encode("latin-1") + b"\n"
                     + json.dumps(score_sample("c")).encode() + b"\n")
    column = bad.index("\xff") + 1
    with pytest.raises(ValueError, match=rf"m\.jsonl:2: not UTF-8 text \(byte 0xff at "
                                         rf"column {column}\)"):
        read_manifest(path)
    with pytest.raises(ValueError, match=r"m\.jsonl:2: not a valid sample line"):
        existing_ids(path)
    # A byte-order mark (some editors write one) is not an error.
    path.write_bytes(b"\xef\xbb\xbf" + good.encode())
    assert [s["id"] for s in read_manifest(path)] == ["a"]


def test_line_separators_inside_strings_are_escaped(tmp_path: Path):
    """U+2028 is valid inside a JSON string, but str.splitlines (and JavaScript) break a
    line there: written raw, the sample would read back as two lines elsewhere."""
    path = tmp_path / "m.jsonl"
    sample = {**score_sample("a"), "meta": {"note": "one\u2028two\u2029three"}}
    append_samples(path, [sample])
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1 and "\\u2028" in text and "\\u2029" in text
    assert read_manifest(path) == [sample]


def test_read_manifest_rejects_duplicate_ids(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    append_samples(path, [score_sample("a"), score_sample("b"), score_sample("a")])
    with pytest.raises(ValueError, match="'a' already used on line 1"):
        read_manifest(path)


def test_append_then_read_round_trips(tmp_path: Path):
    path = tmp_path / "sub" / "m.jsonl"
    samples = [score_sample(), choice_sample(), grounding_sample()]
    assert append_samples(path, samples[:1]) == 1
    assert append_samples(path, samples[1:]) == 2
    assert read_manifest(path) == samples
    assert existing_ids(path) == {"s1", "c1", "g1"}


def test_append_validates_before_writing(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    with pytest.raises(ValueError, match="field 'mos'"):
        append_samples(path, [score_sample("a"), score_sample("b", mos=9.0)])
    assert not path.exists()  # nothing of the bad batch was written


def test_existing_ids_cuts_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    append_samples(path, [score_sample("a"), score_sample("b")])
    whole = path.read_bytes()
    path.write_bytes(whole + json.dumps(score_sample("c")).encode()[:25])  # killed mid-write
    assert existing_ids(path) == {"a", "b"}
    assert path.read_bytes() == whole
    append_samples(path, [score_sample("c")])
    assert [s["id"] for s in read_manifest(path)] == ["a", "b", "c"]


def test_existing_ids_refuses_a_bad_line_in_the_middle(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(score_sample("a")) + "\ngarbage\n"
                    + json.dumps(score_sample("b")) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        existing_ids(path)


def test_write_manifest_replaces_the_file(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [score_sample("a"), score_sample("b")])
    write_manifest(path, [score_sample("c")])
    assert [s["id"] for s in read_manifest(path)] == ["c"]
    write_manifest(path, [])
    assert read_manifest(path) == []


def test_resolve_images_relative_to_the_manifest_folder(tmp_path: Path):
    manifest = tmp_path / "data" / "m.jsonl"
    sample = {**choice_sample(), "images": ["refs/r.png", str(tmp_path / "abs.png")]}
    assert resolve_images(sample, manifest) == [
        (tmp_path / "data" / "refs" / "r.png").resolve(), tmp_path / "abs.png"]


def test_stage1_samples_make_four_valid_variants():
    samples = stage1_samples("img-o0-v0", "dog", ["dog", "red car"], "blur", 5, [1, 2, 30, 40],
                             "refs/a.png", "images/b.png", [64, 48], "refine-perception",
                             "train", {"seed": 3})
    assert [s["id"] for s in samples] == ["img-o0-v0-choice-fr", "img-o0-v0-choice-nr",
                                          "img-o0-v0-grounding-fr", "img-o0-v0-grounding-nr"]
    for s in samples:
        validate_sample(s)
        # the judged (distorted) image is always the last one
        assert s["images"][-1] == "images/b.png"
        assert len(s["images"]) == (2 if s["meta"]["reference"] == "fr" else 1)
    assert samples[0]["answer"] == "dog / blur / catastrophic"  # level 5: conf's prompt word
    assert samples[2]["answer"] == "1,2,30,40"
    assert "[Ref.]" in samples[0]["question"] and "[Ref.]" not in samples[1]["question"]
