"""Readers for the official label files of six IQA datasets -> "score" manifests.

The user brings the images and the label files; each reader follows the dataset's
documented format. MOS are rescaled linearly from the nominal range [lo, hi] to [0, 5):
``mos = 5 * (x - lo) / (hi - lo)`` (``5 * (hi - x) / (hi - lo)`` where a lower label means
better quality), then capped at 4.99 so that the top of the range stays below 5. A label
outside the nominal range by up to 10% of it is clamped (and counted in the summary);
further out means the wrong file or column, and is an error.

========= =============================================== ========== ======== =============
name      --labels (official file)                        range      better   split
========= =============================================== ========== ======== =============
koniq10k  koniq10k_scores_and_distributions.csv (MOS)     1-5        higher   official (1)
          or koniq10k_distributions_sets.csv (MOS, set)   0-100 (2)
spaq      "MOS and Image attribute scores.xlsx"           0-100      higher   seeded 80/20
          (Image name, MOS) or its CSV export
livec     Data/AllMOS_release.mat, with                   0-100      higher   seeded 80/20
          AllImages_release.mat in the same folder (3)
kadid10k  dmos.csv (dist_img, ref_img, dmos, var)         1-5 (4)    higher   seeded by ref
csiq      csiq.DMOS.xlsx (image, dst_idx, dst_type,       0-1        lower    seeded by ref
          dst_lev, dmos_std, dmos) or its CSV export                 (DMOS)
agiqa3k   data.csv (name, prompt, ..., mos_quality, ...)  0-5        higher   seeded by prompt
========= =============================================== ========== ======== =============

--images is the folder the file names are relative to: KonIQ's 1024x768/ (or 512x384/),
SPAQ's TestImage/, LIVE Challenge's Images/, KADID's images/, the CSIQ folder holding
dst_imgs/<type>/<image>.<TYPE>.<level>.png (dst_idx 1..6 = awgn, jpeg, jpeg2000, fnoise,
blur, contrast), AGIQA-3K's image folder. A file not found under its exact name is looked
up case-insensitively; a missing or unreadable image is skipped and counted.

(1) the ``set`` column (training / validation / test); give the scores file the split
    with --split-file koniq10k_distributions_sets.csv. Validation images go to
    --koniq-validation (default train). (2) that file's MOS column is on 0-100.
(3) the first 7 entries, the training images of the LIVE study (Images/trainingImages),
    are left out as in the usual 1,162-image protocol.
(4) called "dmos" but a degradation category rating averaged per image: 5 = imperceptible
    degradation, so higher is better, like a MOS.
Seeded splits keep every group (the reference image of a synthetic dataset, the prompt of
AGIQA-3K) on one side, so no content is in both. The xlsx files are read with openpyxl:
the first sheet whose header has the columns wins.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from tqdm import tqdm

from synth.images import UnreadableImage, displayed_size
from synth.manifest import relative_image_path, write_manifest

MOS_CAP = 4.99
OUT_OF_RANGE_TOLERANCE = 0.1  # of the nominal range
CSIQ_TYPES = {1: ("awgn", "AWGN"), 2: ("jpeg", "JPEG"), 3: ("jpeg2000", "jpeg2000"),
              4: ("fnoise", "fnoise"), 5: ("blur", "BLUR"), 6: ("contrast", "contrast")}


@dataclass
class LabelRow:
    image: str                 # path relative to --images
    raw: float                 # the label as the file gives it
    group: str                 # rows of one group stay on one side of a seeded split
    split: str | None = None   # the official split, where the dataset has one
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Labels:
    rows: list[LabelRow]
    lo: float
    hi: float
    higher_is_better: bool
    official_split: bool


def rescale_mos(raw: float, lo: float, hi: float, higher_is_better: bool) -> float:
    """A label on [lo, hi] -> [0, 5): linear, flipped for DMOS, capped at 4.99."""
    unit = (raw - lo) / (hi - lo) if higher_is_better else (hi - raw) / (hi - lo)
    return round(min(max(5.0 * unit, 0.0), MOS_CAP), 4)


def _xlsx_sheets(path: Path) -> list[list[list[str]]]:
    """Every worksheet of an .xlsx file as rows of cell strings (values, not formulas)."""
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        return [[["" if v is None else str(v) for v in row]
                 for row in sheet.iter_rows(values_only=True)] for sheet in book.worksheets]
    finally:
        book.close()


def read_table(path: str | Path, required: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV / TSV / .xlsx label file as dicts keyed by lower-case column name.

    The header is the first row holding every `required` column (case-insensitive), so
    title rows above it are fine.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"label file {path} does not exist")
    if path.suffix.lower() == ".xlsx":
        try:
            sheets = _xlsx_sheets(path)
        except (zipfile.BadZipFile, OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path} is not a readable .xlsx file ({e}); export it as "
                             "CSV") from None
    else:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        first = text.splitlines()[0] if text else ""
        delimiter = max(",;\t", key=first.count)
        sheets = [list(csv.reader(text.splitlines(), delimiter=delimiter))]
    want = [r.lower() for r in required]
    for rows in sheets:
        for i, row in enumerate(rows):
            header = [c.strip().lower() for c in row]
            if all(w in header for w in want):
                return [dict(zip(header, (c.strip() for c in r)))
                        for r in rows[i + 1:] if any(c.strip() for c in r)]
    raise ValueError(f"{path}: no header row with the columns {required}; is this the "
                     "right label file for the dataset? (python -m synth.iqa_datasets --help)")


def _number(row: dict[str, str], column: str, where: str) -> float:
    try:
        return float(row[column])
    except (KeyError, ValueError):
        raise ValueError(f"{where}: column {column!r} is not a number: "
                         f"{row.get(column)!r}") from None


def read_koniq(labels: Path, split_file: Path | None, validation_as: str) -> Labels:
    rows = read_table(labels, ["image_name", "mos"])
    sets_file = bool(rows) and "set" in rows[0]
    sets = {r["image_name"]: r["set"] for r in read_table(split_file, ["image_name", "set"])} \
        if split_file else {r["image_name"]: r["set"] for r in rows} if sets_file else {}
    to_split = {"training": "train", "train": "train", "test": "test",
                "validation": None if validation_as == "drop" else validation_as}
    out = []
    for k, r in enumerate(rows):
        official = sets.get(r["image_name"])
        if sets and official not in to_split:
            raise ValueError(f"{split_file or labels}: image {r['image_name']!r} has set "
                             f"{official!r}; expected training / validation / test")
        out.append(LabelRow(r["image_name"], _number(r, "mos", f"{labels} row {k + 2}"),
                            r["image_name"], to_split[official] if sets else None,
                            {"official_set": official} if sets else {}))
    if sets and validation_as == "drop":
        out = [r for r in out if r.split is not None]
    lo, hi = (0.0, 100.0) if sets_file else (1.0, 5.0)
    return Labels(out, lo, hi, True, bool(sets))


def read_spaq(labels: Path, *_: Any) -> Labels:
    rows = read_table(labels, ["image name", "mos"])
    return Labels([LabelRow(r["image name"], _number(r, "mos", str(labels)), r["image name"])
                   for r in rows], 0.0, 100.0, True, False)


def read_livec(labels: Path, *_: Any) -> Labels:
    folder = labels if labels.is_dir() else labels.parent
    try:
        mos = scipy.io.loadmat(folder / "AllMOS_release.mat")["AllMOS_release"].ravel()
        names = scipy.io.loadmat(folder / "AllImages_release.mat")["AllImages_release"].ravel()
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"LIVE Challenge needs AllMOS_release.mat and AllImages_release.mat "
                         f"in {folder} ({e})") from None
    names = [str(np.asarray(n).ravel()[0]) for n in names]
    if len(names) != len(mos):
        raise ValueError(f"{folder}: {len(names)} image names but {len(mos)} MOS values")
    return Labels([LabelRow(n, float(m), n) for n, m in zip(names[7:], mos[7:])],
                  0.0, 100.0, True, False)


def read_kadid(labels: Path, *_: Any) -> Labels:
    rows = read_table(labels, ["dist_img", "ref_img", "dmos"])
    return Labels([LabelRow(r["dist_img"], _number(r, "dmos", str(labels)), r["ref_img"], None,
                            {"reference": r["ref_img"], "var": r.get("var")}) for r in rows],
                  1.0, 5.0, True, False)


def read_csiq(labels: Path, *_: Any) -> Labels:
    out = []
    for r in read_table(labels, ["image", "dst_idx", "dst_lev", "dmos"]):
        image = r["image"][:-2] if r["image"].endswith(".0") else r["image"]  # 1600.0 -> 1600
        idx, level = int(_number(r, "dst_idx", str(labels))), int(_number(r, "dst_lev", ""))
        if idx not in CSIQ_TYPES:
            raise ValueError(f"{labels}: dst_idx {idx} of image {image} is not 1..6")
        folder, tag = CSIQ_TYPES[idx]
        out.append(LabelRow(f"dst_imgs/{folder}/{image}.{tag}.{level}.png",
                            _number(r, "dmos", str(labels)), image, None,
                            {"reference": f"src_imgs/{image}.png", "type": folder,
                             "level": level}))
    return Labels(out, 0.0, 1.0, False, False)


def read_agiqa3k(labels: Path, *_: Any) -> Labels:
    rows = read_table(labels, ["name", "mos_quality"])
    return Labels([LabelRow(r["name"], _number(r, "mos_quality", str(labels)),
                            r.get("prompt") or r["name"], None, {"prompt": r.get("prompt")})
                   for r in rows], 0.0, 5.0, True, False)


READERS: dict[str, Callable[..., Labels]] = {
    "koniq10k": read_koniq, "spaq": read_spaq, "livec": read_livec, "kadid10k": read_kadid,
    "csiq": read_csiq, "agiqa3k": read_agiqa3k}


def _find(images: Path, rel: str, listing: dict[Path, dict[str, str]]) -> Path | None:
    path = images / rel
    if path.is_file():
        return path
    folder = path.parent
    if folder not in listing:  # one directory read per folder, only when a name misses
        listing[folder] = {p.name.lower(): p.name for p in folder.iterdir()} \
            if folder.is_dir() else {}
    name = listing[folder].get(path.name.lower())
    return folder / name if name else None


def seeded_split(groups: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """group -> "train" / "test": a seeded-hash order of the distinct groups, the first
    round(test_fraction * n) of them (at least one when there are two or more) to test."""
    distinct = sorted(set(groups),
                      key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n_test = round(test_fraction * len(distinct))
    n_test = max(n_test, 1) if len(distinct) > 1 and test_fraction > 0 else n_test
    return {g: "test" if i < n_test else "train" for i, g in enumerate(distinct)}


def build_iqa_manifest(name: str, labels: str | Path, images: str | Path, out: str | Path, *,
                       split_file: str | Path | None = None, koniq_validation: str = "train",
                       test_fraction: float = 0.2, seed: int = 0, only: str = "all",
                       progress: bool = True) -> dict[str, Any]:
    """Read a dataset's labels, check its images, write the manifest; returns a summary."""
    if name not in READERS:
        raise ValueError(f"name must be one of {sorted(READERS)}, got {name!r}")
    if koniq_validation not in ("train", "test", "drop"):
        raise ValueError(f"koniq_validation must be train, test or drop, got {koniq_validation!r}")
    if only not in ("all", "train", "test") or not 0 <= test_fraction < 1:
        raise ValueError("only must be all / train / test and test_fraction in [0, 1)")
    images, out = Path(images), Path(out)
    table = READERS[name](Path(labels), Path(split_file) if split_file else None,
                          koniq_validation)
    span = table.hi - table.lo
    far = [r for r in table.rows if not table.lo - OUT_OF_RANGE_TOLERANCE * span <= r.raw
           <= table.hi + OUT_OF_RANGE_TOLERANCE * span]
    if far:
        raise ValueError(f"{labels}: {len(far)} labels lie far outside the nominal range "
                         f"{table.lo:g}..{table.hi:g} of {name} (e.g. {far[0].image}: "
                         f"{far[0].raw:g}); wrong file or column?")
    splits = {} if table.official_split else \
        seeded_split([r.group for r in table.rows], test_fraction, seed)
    skipped: Counter[str] = Counter()
    samples, seen, listing = [], set(), {}
    for row in tqdm(table.rows, desc=f"{name} images", disable=not progress, unit="img"):
        sid = f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', row.image)}"
        if sid in seen:
            skipped["duplicate row"] += 1
            continue
        path = _find(images, row.image, listing)
        if path is None:
            skipped["missing image"] += 1
            continue
        try:   # the header only; the size as every reader shows the image (EXIF turned)
            size = list(displayed_size(path))
        except UnreadableImage as err:
            skipped[err.reason] += 1
            continue
        seen.add(sid)
        skipped["clamped label (kept)"] += not table.lo <= row.raw <= table.hi
        samples.append({
            "id": sid, "task": "score", "images": [relative_image_path(path, out)],
            "question": None, "answer": None,
            "mos": rescale_mos(row.raw, table.lo, table.hi, table.higher_is_better),
            "bbox": None, "image_size": size, "source": name,
            "split": row.split if table.official_split else splits[row.group],
            "meta": {**row.meta, "label": row.raw, "label_range": [table.lo, table.hi],
                     "higher_is_better": table.higher_is_better, "image": row.image,
                     "group": row.group, "official_split": table.official_split}})
    kept = [s for s in samples if only in ("all", s["split"])]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, kept)
    mos = [s["mos"] for s in kept]
    return {"dataset": name, "label_rows": len(table.rows), "written": len(kept),
            "train": sum(s["split"] == "train" for s in kept),
            "test": sum(s["split"] == "test" for s in kept),
            "skipped": {k: v for k, v in skipped.items() if v},
            "mos_min": min(mos, default=None), "mos_max": max(mos, default=None),
            "official_split": table.official_split, "manifest": str(out)}


def main(argv: list[str] | None = None) -> int:
    """Command line: write one dataset's manifest and print its summary."""
    p = argparse.ArgumentParser(prog="python -m synth.iqa_datasets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(READERS))
    p.add_argument("--labels", required=True, type=Path, help="the official label file")
    p.add_argument("--images", required=True, type=Path, help="folder the names are under")
    p.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    p.add_argument("--split-file", type=Path, help="KonIQ: koniq10k_distributions_sets.csv")
    p.add_argument("--koniq-validation", default="train", choices=["train", "test", "drop"])
    p.add_argument("--test-fraction", type=float, default=0.2, help="seeded splits only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="all", choices=["all", "train", "test"],
                   help="write only one split")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        summary = build_iqa_manifest(
            args.name, args.labels, args.images, args.out, split_file=args.split_file,
            koniq_validation=args.koniq_validation, test_fraction=args.test_fraction,
            seed=args.seed, only=args.only, progress=not args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in summary.items():
        print(f"{key:>15}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
