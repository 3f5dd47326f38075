"""Which samples a run trains on, validates on and tests on: three splits, never mixed.

conf `data.train_files`, `data.val_files` and `data.test_files` each take one file or a
list: manifests (synth/manifest.py) or any data file Hugging Face `datasets` reads, its
columns named by `data.image_key`, `data.mos_key`, `data.id_key` and rescaled by
`data.mos_range` (synth/data_files.py). Relative image paths resolve against each file's
folder, so KonIQ-10k and SPAQ mix as Table 7 trains them, shuffled together.

- train: the training files' samples marked train (rows of a data file without a split
  column count as train). Samples marked test in a training file leak the test set: the
  run is refused, naming the count, unless `data.drop_test_split=true`.
- val (validation during training: `eval.every`, and the choice of `best/`): the
  validation files' samples; without them, the training files' samples marked val; without
  those, `data.val_fraction` of the training samples carved out by source image (the
  reference photo of a synthetic distortion, a dataset's group, the photo of a crop:
  every image of one source lands on one side), drawn with `run.seed`. 0 turns
  validation off.
- test (`eval.final_test`, once after the last step, and the evaluations): the test
  files' samples marked test (rows without a split column count as test). Model
  selection never reads them.

No image is in two splits (checked); the same image in two training files is reported;
two different samples with one id are an error (engines, learner and scorer key their
caches by id).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driver.data_stream import DataError

log = logging.getLogger("refine_iqa")
KEYS = {"train": "data.train_files", "val": "data.val_files", "test": "data.test_files"}


@dataclass
class Splits:
    """The three splits' samples, the training files (the data order's fingerprint reads
    them) and what was left out or noticed."""

    train: list[dict]
    val: list[dict]
    test: list[dict]
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def file_list(value: Any, key: str) -> list[str]:
    """conf `data.*_files`: one file (or hub dataset id) or a list; null is none."""
    if value is None:
        return []
    items = [value] if isinstance(value, str | Path) else list(value)
    if not items or not all(isinstance(v, str | Path) and str(v).strip() for v in items):
        raise DataError(f"{key} must be a file or a list of files, got {value!r}")
    return [str(v) for v in items]


def _read(cfg: Any, split: str, value: Any) -> list[tuple[dict, str]]:
    """(sample, its file) of every file of one split's key."""
    from synth.data_files import Columns, read_data_file

    d = cfg.data
    columns = Columns(image=d.image_key, mos=d.mos_key, id=d.id_key,
                      mos_range=tuple(d.mos_range) if d.mos_range is not None else None)
    images = Path(cfg.model.cache_dir) / "data-images"
    pairs: list[tuple[dict, str]] = []
    for source in file_list(value, KEYS[split]):
        try:
            pairs += [(s, source) for s in read_data_file(source, columns, images, split)]
        except ValueError as err:
            raise DataError(f"{KEYS[split]}: {err}") from None
    return pairs


def source_of(sample: dict) -> str:
    """The source image a sample was made from: a dataset's group (the reference of a
    synthetic distortion), the mini set's photo, the perception builder's source image,
    else the judged image itself."""
    meta = sample.get("meta") or {}
    for key in ("group", "photo", "source_image", "reference"):
        if meta.get(key):
            return str(meta[key])
    return _judged(sample)


def carve(samples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): `fraction` of the source images (at least one, when there are two or
    more and fraction > 0), drawn with `seed`, and all their samples go to val."""
    of = [source_of(s) for s in samples]
    sources = sorted(set(of))
    if fraction <= 0 or len(sources) < 2:
        return samples, []
    count = min(len(sources) - 1, max(1, round(fraction * len(sources))))
    order = np.random.default_rng([int(seed), 11]).permutation(len(sources))
    chosen = {sources[i] for i in order[:count]}
    return ([s for s, src in zip(samples, of) if src not in chosen],
            [s for s, src in zip(samples, of) if src in chosen])


def _judged(sample: dict) -> str:
    """The judged image's file, symlinks and ".." resolved (one file, one name)."""
    return str(Path(sample["images"][-1]).resolve())


def _check_ids_and_images(pairs: list[tuple[dict, str]], notes: list[str]) -> None:
    by_id: dict[str, tuple[dict, str]] = {}
    for s, source in pairs:
        seen, seen_in = by_id.setdefault(str(s["id"]), (s, source))
        if seen is not s and seen["images"] != s["images"]:
            raise DataError(f"sample id {s['id']!r} names different images in {seen_in} and "
                            f"{source}; ids must be unique across the files of a run")
    where: dict[str, set[str]] = {}
    for s, source in pairs:
        where.setdefault(_judged(s), set()).add(source)
    shared = [img for img, files in where.items() if len(files) > 1]
    if shared:
        notes.append(f"{len(shared)} images appear in more than one of data.train_files (e.g. "
                     f"{shared[0]}); they are trained on once per file")


def load_splits(cfg: Any, train_value: Any, val_value: Any, test_value: Any,
                stage_tasks: tuple[str, ...]) -> Splits:
    """The three splits of the configured files (module docstring); DataError on leakage,
    bad files or a stage's wrong tasks."""
    notes: list[str] = []
    pairs = _read(cfg, "train", train_value)
    wrong = Counter(s["task"] for s, _ in pairs if s["task"] not in stage_tasks)
    if wrong:
        raise DataError(f"data.train_files hold {dict(wrong)} samples, but this stage trains "
                        f"on {list(stage_tasks)}: pick the files of this stage")
    marked_test = sum(s["split"] == "test" for s, _ in pairs)
    if marked_test and not cfg.data.drop_test_split:
        raise DataError(
            f"data.train_files hold {marked_test} samples marked split=test: training on "
            "them leaks the test set. Build the manifest with --only train "
            "(synth.iqa_datasets) and give the test part as data.test_files, or set "
            "data.drop_test_split=true to train on the train part only")
    if marked_test:
        notes.append(f"dropped {marked_test} split=test samples from the training files "
                     "(data.drop_test_split)")
    _check_ids_and_images([p for p in pairs if p[0]["split"] != "test"], notes)
    train = [s for s, _ in pairs if s["split"] == "train"]
    val = [s for s, _ in _read(cfg, "val", val_value)]
    if any(s["split"] == "test" for s in val):
        raise DataError("data.val_files hold samples marked split=test: the test split is "
                        "read by the final evaluation only; give validation files")
    if not val:
        val = [s for s, _ in pairs if s["split"] == "val"]
    if not val and val_value is None:
        train, val = carve(train, cfg.data.val_fraction, cfg.run.seed)
        if val:
            print(f"# validation: {len(val)} samples of {len({source_of(s) for s in val})} "
                  f"source images carved from the training files (data.val_fraction="
                  f"{cfg.data.val_fraction:g})")
    if not train:
        raise DataError("data.train_files hold no training samples")
    test = [s for s, _ in _read(cfg, "test", test_value) if s["split"] == "test"]
    val = [s for s in val if s["task"] in stage_tasks]
    test = [s for s in test if s["task"] in stage_tasks]
    images = {name: {_judged(s) for s in part}
              for name, part in (("training", train), ("validation", val), ("test", test))}
    for a, b in (("training", "validation"), ("training", "test"), ("validation", "test")):
        both = images[a] & images[b]
        if both:
            raise DataError(f"{len(both)} {b} images are also {a} images (e.g. "
                            f"{sorted(both)[0]}): each split must hold other images")
    for note in notes:
        log.warning("%s", note)
    files = [Path(p) for p in file_list(train_value, KEYS["train"]) if Path(p).is_file()]
    return Splits(train=train, val=val, test=test, files=files, notes=notes)
