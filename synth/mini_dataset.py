"""The embedded mini dataset of `conf=tiny`, the tests and `make reproduce`, built in seconds.

Photos: every natural photo that the installed packages ship (no download), with the
licence their own docstrings or notes give (grey photos are made RGB):

  scikit-image  astronaut, rocket, hubble_deep_field, moon (NASA / SpaceX: public domain);
                chelsea, coffee, camera, retina, brick, grass, gravel (CC0); coins
                (Brooklyn Museum, no known copyright restrictions); immunohistochemistry
                (CMMI, no known copyright restrictions); text (Wikipedia, public domain)
  matplotlib    grace_hopper.jpg (U.S. Navy photograph, public domain)

Left out: skimage's clock (motion-blurred on purpose: its "clean" crop is not clean),
cell (a quantitative phase image, not a photo), page (a scan) and the synthetic images;
its cat is chelsea again.

- Split by source photo: the test split holds every image made from TEST_PHOTOS (chelsea,
  camera) and nothing made from another photo; training never sees those two photos, in
  either stage, so held-out numbers measure generalisation to unseen content.
- Stage-2 (stage2_train / stage2_test, task "score"): random square crops of each photo
  (side 50-100 % of the photo's short side, anywhere in it; CROPS_TRAIN per training
  photo, CROPS_TEST per test photo) scaled to 224 x 224; every crop clean and once per
  distortion class (the type drawn within the class; the crop's 12 classes take the
  levels 1..5 in turn from a random start, so the levels are balanced; a class that
  leaves the crop unchanged, such as saturation on a grey photo, is left out). Its MOS is
  SYNTHETIC, a stand-in and not human opinion: MOS = 4.5 - 0.8 * level (clean = level 0:
  4.5; levels 1..5: 3.7, 2.9, 2.1, 1.3, 0.5). The manifests name it as such (source
  "mini-synthetic-mos"; meta.synthetic_mos spells out the formula).
- Stage-1 (stage1_train / stage1_test): the perception builder (synth.perception) on the
  photos with object boxes (synth/assets/mini_objects.json, placed by hand for this
  project, at the sizes of `load_photos`), STAGE1_VARIANTS distorted images per object,
  four samples per distorted image; an image of a test photo goes to the test split.

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
from synth.manifest import read_manifest, write_manifest
from synth.perception import build_perception, write_png
from synth.perception_plan import Settings

MINI_VERSION = 3
ASSET = Path(__file__).resolve().parent / "assets" / "mini_objects.json"
STAGE2_SOURCE = "mini-synthetic-mos"
CLEAN_MOS, MOS_STEP = 4.5, 0.8
# The Stage-2 photos (module doc); the first five carry object boxes. New photos go at the
# end: the random crops of the earlier ones stay as they were.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field",
          "retina", "brick", "grass", "gravel", "moon", "coins", "immunohistochemistry",
          "text", "grace_hopper")
MATPLOTLIB_PHOTOS = {"grace_hopper": "grace_hopper.jpg"}   # name -> matplotlib sample file
TEST_PHOTOS = ("chelsea", "camera")   # one colour, one grey photo; both have object boxes
CROPS_TRAIN, CROPS_TEST = 6, 4        # Stage-2 crops per training / test photo
CROP_SIDE = 224
CROP_SCALE = (0.5, 1.0)               # crop side as a fraction of the photo's short side
STAGE1_VARIANTS = 3                   # distorted images per annotated object
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


def photo_rgb(name: str) -> np.ndarray:
    """A photo of PHOTOS as uint8 RGB at its shipped size."""
    if name in MATPLOTLIB_PHOTOS:
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data(MATPLOTLIB_PHOTOS[name], asfileobj=False)) as im:
            return np.asarray(im.convert("RGB"))
    pixels = getattr(skimage.data, name)()
    return np.asarray(Image.fromarray(pixels).convert("RGB"))


def training_photos() -> dict[str, np.ndarray]:
    """The photos no test image comes from, by name: all a builder may learn from."""
    return {name: photo_rgb(name) for name in PHOTOS if name not in TEST_PHOTOS}


def load_photos() -> dict[str, np.ndarray]:
    """The photos with object boxes, uint8 RGB at the annotation file's sizes."""
    spec = json.loads(ASSET.read_text(encoding="utf-8"))
    photos = {}
    for im in spec["images"]:
        pil = Image.fromarray(photo_rgb(im["skimage"]))
        pil = pil.resize((im["width"], im["height"]), Image.Resampling.LANCZOS)
        photos[im["file_name"]] = np.asarray(pil)
    return photos


def random_crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` square crops of `photo` (side CROP_SCALE of its short side, anywhere in it),
    each scaled to CROP_SIDE x CROP_SIDE."""
    height, width = photo.shape[:2]
    crops = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(*CROP_SCALE))
        y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        pil = Image.fromarray(photo[y:y + side, x:x + side])
        crops.append(np.asarray(pil.resize((CROP_SIDE, CROP_SIDE), Image.Resampling.LANCZOS)))
    return crops


def _stage2_samples(out: Path, seed: int) -> list[dict]:
    """Clean and whole-image-distorted crops of every photo with their synthetic MOS."""
    classes: dict[str, list[str]] = {}
    for name, cls in DISTORTIONS.items():
        classes.setdefault(cls, []).append(name)
    (out / "stage2").mkdir()
    rng = np.random.default_rng(seed)
    samples = []
    for p, photo_name in enumerate(PHOTOS):
        split = "test" if photo_name in TEST_PHOTOS else "train"
        crops = random_crops(photo_rgb(photo_name), CROPS_TEST if split == "test" else CROPS_TRAIN,
                             rng)
        for k, crop in enumerate(crops):
            start = int(rng.integers(5))   # levels 1..5 in turn over the crop's classes
            items = [(None, None, 0, None, crop)]
            for c, (cls, types) in enumerate(classes.items()):
                level, image_seed = 1 + (start + c) % 5, seed * 100_000 + p * 1000 + k * 20 + c
                for dist in rng.permutation(types):  # the first type of the class that shows
                    image = distort(crop, str(dist), level, seed=image_seed)
                    if np.abs(image.astype(np.int16) - crop).mean() >= MIN_CHANGE:
                        items.append((str(dist), cls, level, image_seed, image))
                        break
            for dist, cls, level, image_seed, image in items:
                sid = f"mini-{photo_name}-c{k}-{dist or 'clean'}-l{level}"
                write_png(out / "stage2" / f"{sid}.png", image)
                samples.append({
                    "id": sid, "task": "score", "images": [f"stage2/{sid}.png"],
                    "question": None, "answer": None, "mos": synthetic_mos(level), "bbox": None,
                    "image_size": [CROP_SIDE, CROP_SIDE], "source": STAGE2_SOURCE,
                    "split": split,
                    "meta": {"photo": photo_name, "crop": k, "distortion": dist, "class": cls,
                             "level": level, "seed": image_seed,
                             "synthetic_mos": f"{CLEAN_MOS} - {MOS_STEP} * level"}})
    return samples


def _stage1_by_photo(stage1: Path) -> None:
    """Rewrite the builder's manifests so that the test photos' images are the test split
    (the builder splits per distorted image; here the split is by source photo)."""
    spec = json.loads(ASSET.read_text(encoding="utf-8"))
    test_files = {im["file_name"] for im in spec["images"] if im["skimage"] in TEST_PHOTOS}
    samples = [s for split in ("train", "test") if (stage1 / f"stage1_{split}.jsonl").is_file()
               for s in read_manifest(stage1 / f"stage1_{split}.jsonl")]
    for s in samples:
        s["split"] = "test" if s["meta"]["source_image"] in test_files else "train"
    for split in ("train", "test"):
        write_manifest(stage1 / f"stage1_{split}.jsonl",
                       [s for s in samples if s["split"] == split])


def _build(root: Path, seed: int) -> None:
    photos = load_photos()
    photo_dir = root / "photos"
    photo_dir.mkdir(parents=True)
    for file_name, photo in photos.items():
        write_png(photo_dir / file_name, photo)
    settings = Settings(seed=seed, test_size=0, variants=STAGE1_VARIANTS,
                        dataset_name="mini-refine-perception")
    summary = build_perception(photo_dir, ASSET, root / "stage1", settings, workers=1,
                               progress=False)
    if summary["skipped"]:
        raise RuntimeError(f"the mini dataset lost items: {summary['skipped']}; see "
                           f"{root / 'stage1' / 'skipped.jsonl'}")
    _stage1_by_photo(root / "stage1")
    samples = _stage2_samples(root, seed)
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
