"""The perception builder (synth.perception), its planning (synth.perception_plan) and its input
side (synth.prefilter)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conf.prompts import severity_word
from synth import DISTORTIONS
from synth.manifest import read_manifest, resolve_images
from synth.mini_dataset import ASSET, load_photos
from synth.perception import build_perception, main
from synth.perception_plan import Job, Settings, assign_splits, plan_jobs
from synth.prefilter import (
    SourceImage,
    SourceObject,
    default_quality_filter,
    load_annotations,
    load_prefilter,
)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return load_photos()


def write_sources(folder: Path, photos: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in photos.items():
        Image.fromarray(pixels).save(folder / name)
    return folder


def build(tmp: Path, photos, annotations: Path = ASSET, **kw) -> tuple[dict, Path]:
    images = write_sources(tmp / "src", photos)
    out = tmp / "out"
    settings = kw.pop("settings", Settings(test_size=0.25))
    summary = build_perception(images, annotations, out, settings, workers=kw.pop("workers", 1),
                               progress=False, **kw)
    return summary, out


def manifest_lines(out: Path) -> set[str]:
    return {line for name in ("stage1_train.jsonl", "stage1_test.jsonl")
            for line in (out / name).read_text().splitlines()}


def test_manifest_validates_and_has_four_samples_per_distorted_image(tmp_path, photos):
    summary, out = build(tmp_path, photos)
    annotations = json.loads(ASSET.read_text())
    # the asset annotates 15 objects in 5 photos, every one usable
    assert summary["planned_images"] == summary["written_images"] == 15
    assert summary["skipped"] == {}
    samples = read_manifest(out / "stage1_train.jsonl") + read_manifest(out / "stage1_test.jsonl")
    by_job = defaultdict(list)
    for s in samples:
        by_job[s["meta"]["job_id"]].append(s)
    assert len(by_job) == 15
    boxes = {(im["file_name"], k): a["bbox"] for im in annotations["images"]
             for k, a in enumerate(a for a in annotations["annotations"]
                                   if a["image_id"] == im["id"])}
    for group in by_job.values():
        assert sorted((s["task"], s["meta"]["reference"]) for s in group) == [
            ("choice", "fr"), ("choice", "nr"), ("grounding", "fr"), ("grounding", "nr")]
        first = group[0]
        meta = first["meta"]
        x, y, w, h = boxes[(meta["source_image"], meta["object_index"])]
        assert first["bbox"] == [x, y, x + w, y + h]  # COCO xywh -> x1,y1,x2,y2
        assert {s["split"] for s in group} == {first["split"]}
        choice = next(s for s in group if s["task"] == "choice")
        assert choice["answer"] == (f"{meta['object']} / {DISTORTIONS[meta['distortion']]} / "
                                    f"{severity_word(meta['level'])}")
        grounding = next(s for s in group if s["task"] == "grounding")
        assert grounding["answer"] == ",".join(map(str, first["bbox"]))


def test_distorted_image_differs_only_inside_the_box(tmp_path, photos):
    _, out = build(tmp_path, photos)
    manifest = out / "stage1_train.jsonl"
    for s in read_manifest(manifest):
        if s["task"] != "choice" or s["meta"]["reference"] != "fr":
            continue
        ref_path, dist_path = resolve_images(s, manifest)
        ref = np.asarray(Image.open(ref_path).convert("RGB"))
        dist = np.asarray(Image.open(dist_path).convert("RGB"))
        assert np.array_equal(ref, photos[s["meta"]["source_image"]])
        x1, y1, x2, y2 = s["bbox"]
        outside = np.ones(ref.shape[:2], bool)
        outside[y1:y2, x1:x2] = False
        assert np.array_equal(ref[outside], dist[outside])
        # perceptible: at least min_change (0.5) mean absolute change inside the box
        inside = np.abs(ref[y1:y2, x1:x2].astype(int) - dist[y1:y2, x1:x2]).mean()
        assert inside >= 0.5


def fake_sources(n_images: int, objects: int = 3) -> list[SourceImage]:
    objs = tuple(SourceObject(k, f"obj{k}", (0, 0, 20 + k, 20)) for k in range(objects))
    return [SourceImage(f"img{i}.jpg", 100, 80, objs, tuple(o.name for o in objs))
            for i in range(n_images)]


def class_shares(jobs: list[Job]) -> dict[str, float]:
    counts = Counter(DISTORTIONS[j.distortion] for j in jobs)
    return {c: k / len(jobs) for c, k in counts.items()}


def test_split_keeps_the_class_distribution():
    settings = Settings(seed=3)
    jobs = assign_splits(plan_jobs(fake_sources(400), settings), 150, seed=3)  # 1,200 images
    test = [j for j in jobs if j.split == "test"]
    train = [j for j in jobs if j.split == "train"]
    assert len(test) == 150
    all_shares, test_shares = class_shares(jobs), class_shares(test)
    train_shares = class_shares(train)
    assert set(test_shares) == set(all_shares) == set(train_shares)
    # largest-remainder quotas: each class's test count is within 1 of its exact share,
    # so its test proportion is within 1/150 of the whole set's
    for c, share in all_shares.items():
        assert abs(test_shares[c] - share) <= 1 / 150
        assert abs(train_shares[c] - share) <= 1 / 1050
    # classes are drawn uniformly: 1,200 draws over 12 classes, 100 expected each
    assert all(60 <= share * 1200 <= 140 for share in all_shares.values())


def test_split_is_deterministic_and_seeded():
    jobs = plan_jobs(fake_sources(50), Settings())
    a = [j.split for j in assign_splits(jobs, 0.2, seed=0)]
    assert a == [j.split for j in assign_splits(jobs, 0.2, seed=0)]
    b = [j.split for j in assign_splits(jobs, 0.2, seed=1)]
    assert a != b and a.count("test") == b.count("test") == 30
    with pytest.raises(ValueError, match="only 150 distorted images"):
        assign_splits(jobs, 150, seed=0)


def test_rerun_is_resumable_without_duplicates(tmp_path, photos):
    first, out = build(tmp_path, photos)
    full = manifest_lines(out)
    second, _ = build(tmp_path, photos)
    assert second["already_done"] == 15 and second["written_images"] == 0
    assert manifest_lines(out) == full
    # simulate a kill: the last three samples gone, a torn line, two images deleted
    train = out / "stage1_train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:-3]) + lines[-3][:40])
    for png in sorted((out / "images").glob("*.png"))[:2]:
        png.unlink()
    third, _ = build(tmp_path, photos)
    assert third["written_images"] == 1 and third["already_done"] == 14
    assert manifest_lines(out) == full
    for name in ("stage1_train.jsonl", "stage1_test.jsonl"):
        read_manifest(out / name)  # no duplicate ids, every line valid


def test_changed_settings_refuse_to_resume(tmp_path, photos):
    build(tmp_path, photos)
    with pytest.raises(ValueError, match="test_size"):
        build(tmp_path, photos, settings=Settings(test_size=0.5))


def test_bad_input_is_skipped_and_counted(tmp_path, photos):
    src = write_sources(tmp_path / "src", {"good.png": photos["coffee.png"]})
    (src / "garbage.jpg").write_bytes(b"not an image at all")
    Image.fromarray(photos["rocket.png"]).save(src / "full.png")
    (src / "truncated.png").write_bytes((src / "full.png").read_bytes()[:3000])
    Image.fromarray(photos["rocket.png"][:20, :20]).save(src / "tiny.png")
    entries = [("good.png", 224, 149), ("garbage.jpg", 224, 149), ("truncated.png", 224, 149),
               ("tiny.png", 20, 20), ("missing.png", 224, 149)]
    two = [{"name": "a", "bbox": [1, 1, 8, 8]}, {"name": "b", "bbox": [10, 10, 8, 8]}]
    good = [{"name": "cup", "bbox": [65, 6, 82, 102]},
            {"name": "spoon", "bbox": [117, 24, 43, 98]},
            {"name": "table", "bbox": [0, 0, 224, 149]},                # 100% > 90%
            {"name": "ghost", "bbox": [200, 100, 50, 20]},              # outside the image
            {"name": "saucer", "bbox": [28, 32, 150, 117], "distortion": "fog"},
            {"name": "crema", "bbox": [80, 40, 40, 30], "level": 7}]
    data = {"images": [{"id": k, "file_name": f, "width": w, "height": h}
                       for k, (f, w, h) in enumerate(entries)],
            "annotations": [{**a, "image_id": 0} for a in good]
            + [{**a, "image_id": k} for k in range(1, 5) for a in two]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    summary = build_perception(src, ann, tmp_path / "out", Settings(test_size=0), workers=1,
                               progress=False)
    assert summary["skipped"] == {
        "box too large": 1, "box outside the image": 1, "unknown type": 1, "unknown level": 1,
        "unreadable image": 2, "image too small": 1, "missing image": 1}
    assert summary["written_images"] == 2  # cup and spoon
    skipped = (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()
    assert len(skipped) == 8
    samples = read_manifest(tmp_path / "out" / "stage1_train.jsonl")
    # the candidates still name the too-large "table"; the box outside the image is dropped
    assert samples[0]["meta"]["objects"] == ["cup", "spoon", "table", "saucer", "crema"]


def test_prefilter_rejections_are_counted(tmp_path, photos):
    summary, _ = build(tmp_path, photos, prefilter="tests.test_perception_builder:reject_grey")
    assert summary["skipped"] == {"pre-filter": 1}
    assert summary["planned_images"] == 12


def reject_grey(image: np.ndarray) -> str | None:
    """A pre-filter for the test above: drops grey photos (of the five, only camera)."""
    return "grey" if (image == image[..., :1]).all() else None


def test_two_workers_write_the_same_bytes(tmp_path, photos):
    _, out1 = build(tmp_path / "a", photos)
    summary, out2 = build(tmp_path / "b", photos, workers=2)
    assert summary["workers"] == 2
    files = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file()
                   and p.name != "summary.json")  # the summary holds timings
    assert files == sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file()
                           and p.name != "summary.json")
    assert len([f for f in files if f.parts[0] == "images"]) == 15
    for f in files:  # the manifests too, line order included: results are taken in order
        assert (out1 / f).read_bytes() == (out2 / f).read_bytes(), f


def test_default_quality_filter_keeps_clean_and_drops_blurred_or_dark(photos):
    for name, pixels in photos.items():
        assert default_quality_filter(pixels) is None, name
    blurred = cv2.GaussianBlur(photos["coffee.png"], (0, 0), 4)
    assert default_quality_filter(blurred).startswith("too blurry")
    dark = (photos["coffee.png"] // 8).astype(np.uint8)
    assert default_quality_filter(dark).startswith("badly exposed")


def test_load_prefilter_specs():
    assert load_prefilter("default") is default_quality_filter
    assert load_prefilter("none")(np.zeros((40, 40, 3), np.uint8)) is None
    loaded = load_prefilter("tests.test_perception_builder:reject_grey")
    assert loaded.__qualname__ == "reject_grey"
    assert loaded(np.full((40, 40, 3), 7, np.uint8)) == "grey"
    with pytest.raises(ValueError, match="module:function"):
        load_prefilter("blurry")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_prefilter("tests.test_perception_builder:nothing_here")


def test_annotation_file_errors_are_clear(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="'images' and 'annotations'"):
        load_annotations(bad, known_types=DISTORTIONS)
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        load_annotations(bad, known_types=DISTORTIONS)


def test_category_names_and_float_boxes(tmp_path):
    data = {"images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50}],
            "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
            "annotations": [{"image_id": 7, "category_id": 1, "bbox": [10.4, 5.6, 20.2, 10.1]},
                            {"image_id": 7, "category_id": 2, "bbox": [60, 0, 40.5, 50]},
                            {"image_id": 7, "category_id": 1, "bbox": [0, 30, 20, 20]}]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    (src,), skips = load_annotations(path, known_types=DISTORTIONS)
    assert skips == []
    assert src.candidates == ("dog", "cat")  # distinct names, annotation order
    # floor(x), floor(y), ceil(x + w), ceil(y + h); the half pixel past the edge is clipped
    assert [o.box for o in src.objects] == [(10, 5, 31, 16), (60, 0, 100, 50), (0, 30, 20, 50)]


def test_cli_help_and_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "COCO" in capsys.readouterr().out
    code = main(["--images", str(tmp_path), "--annotations", str(ASSET), "--out",
                 str(tmp_path / "o"), "--types", "jpeg,fog", "--quiet"])
    assert code == 2
    assert "unknown distortion type(s) ['fog']" in capsys.readouterr().err
