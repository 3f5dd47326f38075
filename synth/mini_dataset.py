"""The embedded mini dataset of `conf=tiny` and the tests, built on the spot in seconds.

Photos: scikit-image's astronaut, chelsea, coffee, rocket and camera (grey, made RGB),
CC0 / public domain, shipped with the package (no download), scaled to 224 px on the long
side. Object boxes: synth/assets/mini_objects.json, placed by hand for this project.

- Stage-1 (stage1_train / stage1_test): the perception builder (synth.perception) on those
  photos, one distorted object per annotation, four samples per distorted image.
- Stage-2 (stage2_train / stage2_test, task "score"): every photo clean and once per
  distortion class (type drawn within the class, levels cycling 1..5; a class that
  leaves the photo unchanged, such as saturation on the grey camera photo, is left out). Its MOS is
  SYNTHETIC, a stand-in and not human opinion: MOS = 4.5 - 0.8 * level (clean = level 0:
  4.5; levels 1..5: 3.7, 2.9, 2.1, 1.3, 0.5). The manifests name it as such
  (source "mini-synthetic-mos"). About a fifth of each level goes to the test split.

The result lives in OUT/mini-v<version>-seed<seed>-<key>/, where the key hashes the
settings, the annotation file, the prompts and the source of the code that builds it: a
second call with the same settings reuses the files, a change to any of them rebuilds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from synth import DISTORTIONS, distort
from synth.manifest import write_manifest
from synth.perception import build_perception, write_png
from synth.perception_plan import Settings

MINI_VERSION = 1
ASSET = Path(__file__).resolve().parent / "assets" / "mini_objects.json"
STAGE2_SOURCE = "mini-synthetic-mos"
CLEAN_MOS, MOS_STEP = 4.5, 0.8
STAGE1_TEST_FRACTION = 0.25
STAGE2_TEST_FRACTION = 0.2
MIN_CHANGE = 0.5  # mean |distorted - clean|, 0..255: less is no visible distortion
_ROOT = Path(__file__).resolve().parents[1]
_KEYED_SOURCES = ("synth/mini_dataset.py", "synth/perception.py", "synth/perception_plan.py",
                  "synth/prefilter.py",
                  "synth/manifest.py", "conf/prompts.yaml")


def synthetic_mos(level: int) -> float:
    """The stand-in MOS of a whole-image distortion level (0 = clean), on [0, 5)."""
    if not 0 <= level <= 5:
        raise ValueError(f"level must be 0 (clean) .. 5, got {level}")
    return round(CLEAN_MOS - MOS_STEP * level, 2)


def _cache_key(seed: int) -> str:
    h = hashlib.sha256(f"v{MINI_VERSION}:seed{seed}".encode())
    files = [_ROOT / f for f in _KEYED_SOURCES] + [ASSET]
    files += sorted((_ROOT / "synth" / "distortions").glob("*.py"))
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def load_photos() -> dict[str, np.ndarray]:
    """The mini dataset's photos, uint8 RGB at the annotation file's sizes."""
    spec = json.loads(ASSET.read_text(encoding="utf-8"))
    photos = {}
    for im in spec["images"]:
        pixels = getattr(skimage.data, im["skimage"])()
        pil = Image.fromarray(pixels).convert("RGB")
        pil = pil.resize((im["width"], im["height"]), Image.Resampling.LANCZOS)
        photos[im["file_name"]] = np.asarray(pil)
    return photos


def _stage2_samples(photos: dict[str, np.ndarray], out: Path, seed: int) -> list[dict]:
    """Whole-image distortions of every photo with their synthetic MOS."""
    classes: dict[str, list[str]] = {}
    for name, cls in DISTORTIONS.items():
        classes.setdefault(cls, []).append(name)
    (out / "stage2").mkdir()
    rng = np.random.default_rng(seed)
    samples = []
    for p, (file_name, photo) in enumerate(sorted(photos.items())):
        stem = Path(file_name).stem
        items = [(None, None, 0, None, photo)]
        for c, (cls, types) in enumerate(classes.items()):
            level, image_seed = 1 + (p + c) % 5, seed * 1000 + p * 100 + c
            for dist in rng.permutation(types):  # the first type of the class that shows
                image = distort(photo, str(dist), level, seed=image_seed)
                if np.abs(image.astype(np.int16) - photo).mean() >= MIN_CHANGE:
                    items.append((str(dist), cls, level, image_seed, image))
                    break
        for dist, cls, level, image_seed, image in items:
            sid = f"mini-{stem}-{dist or 'clean'}-l{level}"
            write_png(out / "stage2" / f"{sid}.png", image)
            samples.append({
                "id": sid, "task": "score", "images": [f"stage2/{sid}.png"], "question": None,
                "answer": None, "mos": synthetic_mos(level), "bbox": None,
                "image_size": [photo.shape[1], photo.shape[0]], "source": STAGE2_SOURCE,
                "split": "train",
                "meta": {"photo": stem, "distortion": dist, "class": cls, "level": level,
                         "seed": image_seed,
                         "synthetic_mos": f"{CLEAN_MOS} - {MOS_STEP} * level"}})
    # test: about a fifth of every level, picked by the seeded generator
    for level in range(6):
        group = [s for s in samples if s["meta"]["level"] == level]
        n_test = max(1, round(STAGE2_TEST_FRACTION * len(group)))
        for i in rng.permutation(len(group))[:n_test]:
            group[i]["split"] = "test"
    return samples


def _build(root: Path, seed: int) -> None:
    photos = load_photos()
    photo_dir = root / "photos"
    photo_dir.mkdir(parents=True)
    for file_name, photo in photos.items():
        write_png(photo_dir / file_name, photo)
    settings = Settings(seed=seed, test_size=STAGE1_TEST_FRACTION,
                        dataset_name="mini-refine-perception")
    summary = build_perception(photo_dir, ASSET, root / "stage1", settings, workers=1,
                               progress=False)
    if summary["skipped"]:
        raise RuntimeError(f"the mini dataset lost items: {summary['skipped']}; see "
                           f"{root / 'stage1' / 'skipped.jsonl'}")
    samples = _stage2_samples(photos, root, seed)
    for split in ("train", "test"):
        write_manifest(root / f"stage2_{split}.jsonl",
                       [s for s in samples if s["split"] == split])


def build_mini_dataset(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, Path | bool]:
    """Build (or reuse) the mini dataset under `out_dir`.

    Returns the manifest paths (stage1_train, stage1_test, stage2_train, stage2_test) and
    `cached`: True when an earlier build with the same settings and code was reused.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out_dir = Path(out_dir)
    root = out_dir / f"mini-v{MINI_VERSION}-seed{seed}-{_cache_key(seed)}"
    paths = {"stage1_train": root / "stage1" / "stage1_train.jsonl",
             "stage1_test": root / "stage1" / "stage1_test.jsonl",
             "stage2_train": root / "stage2_train.jsonl",
             "stage2_test": root / "stage2_test.jsonl"}
    if root.is_dir():
        return {**paths, "cached": True}
    # build beside the final folder and rename: a folder that exists is always complete
    tmp = out_dir / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(tmp, seed)
        try:
            os.replace(tmp, root)
        except OSError:
            if not root.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**paths, "cached": False}


def main(argv: list[str] | None = None) -> int:
    """Command line: build the mini dataset and print the manifest paths."""
    p = argparse.ArgumentParser(prog="python -m synth.mini_dataset",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(".cache/refine-iqa"),
                   help="folder that receives mini-v<version>-seed<seed>-<key>/")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for key, value in build_mini_dataset(args.out, args.seed).items():
        print(f"{key:>13}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
