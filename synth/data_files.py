"""Your own scoring data as samples: any file Hugging Face `datasets` reads, keys mapped.

A data file is read with `datasets` (parquet, json / jsonl, csv / tsv, arrow; a dataset
id where a hub is reachable) and each row becomes one Stage-2 sample of the project's
manifest form (synth/manifest.py), checked as a manifest's samples are:

- `image_key`: the column holding the image: a path (relative to the file's folder, or
  absolute), or the image itself (bytes, a {"bytes": ...} record as parquet stores images,
  or a decoded image); images given as data are written once, as PNG, under
  `images_dir`, named by their content hash;
- `mos_key`: the column holding the score; with `mos_range` [low, high] it is rescaled
  to the prompt's 0-5 scale as the IQA dataset readers rescale (linear, 5 (s - low) /
  (high - low), capped at 4.99: synth.iqa_datasets.rescale_mos), else it must already be
  on [0, 5);
- `id_key`: the column holding a unique id (null: `<file stem>-<row>`);
- a `split` column, when present, marks train / val / test as in a manifest; rows without
  one take the split of the list the file is named in (data.train_files, ...).

A `.jsonl` file whose first record has an `images` field is a manifest and is read as one
(synth.manifest.load_samples). A row that breaks a rule raises ValueError naming the file,
the row and the column.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv",
            ".tsv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class Columns:
    """Which column holds what (conf data.image_key, mos_key, id_key, mos_range)."""

    image: str = "image"
    mos: str = "mos"
    id: str | None = None
    mos_range: tuple[float, float] | None = None


def is_manifest(path: Path) -> bool:
    """A JSONL file in the project's manifest form (its first record lists `images`)."""
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    first = json.loads(line)
                except (ValueError, RecursionError):   # not JSON, or nested past the parser
                    return False
                return isinstance(first, dict) and "images" in first
    return False


def _rows(source: str) -> tuple[Any, Path | None]:
    """(the rows, the folder relative image paths resolve against)."""
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: cannot read a {path.suffix} file; give parquet, json, "
                             f"jsonl, csv, tsv or arrow ({', '.join(sorted(BUILDERS))})")
        kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        try:
            data = datasets.load_dataset(builder, data_files=str(path), split="train",
                                         **kwargs)
        except Exception as err:   # noqa: BLE001 - datasets raises many kinds; one line
            raise ValueError(f"{path}: not readable as {builder} "
                             f"({str(err).splitlines()[0]})") from None
        return data, path.resolve().parent
    if path.exists() or str(source).startswith((".", "/", "~")) or "/" not in str(source):
        raise ValueError(f"data file {source!r} does not exist (give a file, or a Hugging "
                         "Face dataset id such as org/name)")
    try:
        return datasets.load_dataset(str(source), split="train"), None
    except Exception as err:   # noqa: BLE001
        raise ValueError(f"dataset {source!r} could not be loaded "
                         f"({str(err).splitlines()[0]})") from None


def _image_path(value: Any, folder: Path | None, images_dir: Path, where: str) -> str:
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_absolute():
            if folder is None:
                raise ValueError(f"{where}: relative image path {value!r} in a hub dataset; "
                                 "give absolute paths or the images themselves")
            path = folder / path
        return str(path)
    if isinstance(value, Mapping) and value.get("bytes") is None and value.get("path"):
        return _image_path(value["path"], folder, images_dir, where)
    data = value.get("bytes") if isinstance(value, Mapping) else value
    if hasattr(data, "save"):   # a decoded image (datasets' Image feature)
        buffer = io.BytesIO()
        data.save(buffer, format="PNG")
        data = buffer.getvalue()
    if not isinstance(data, bytes | bytearray):
        raise ValueError(f"{where}: an image must be a path or image bytes, got "
                         f"{type(value).__name__}")
    images_dir.mkdir(parents=True, exist_ok=True)
    target = images_dir / f"{hashlib.sha256(data).hexdigest()[:20]}.png"
    if not target.is_file():
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                image.save(target.with_suffix(".tmp.png"))
        except Exception as err:   # noqa: BLE001 - PIL raises many kinds
            raise ValueError(f"{where}: the image bytes do not decode ({err})") from None
        target.with_suffix(".tmp.png").replace(target)
    return str(target)


def read_data_file(source: str, columns: Columns, images_dir: str | Path,
                   split: str = "train") -> list[dict]:
    """The samples of a manifest or a data file (module docstring)."""
    from synth.images import UnreadableImage, displayed_size
    from synth.iqa_datasets import rescale_mos
    from synth.manifest import load_samples, validate_sample

    path = Path(source).expanduser()
    if is_manifest(path):
        return load_samples(path)
    rows, folder = _rows(source)
    missing = [c for c in (columns.image, columns.mos, columns.id) if c and c not in
               rows.column_names]
    if missing:
        raise ValueError(f"{source}: no column {missing[0]!r} (columns: "
                         f"{', '.join(rows.column_names)}); set data.image_key, data.mos_key "
                         "or data.id_key")
    stem = path.stem if path.is_file() else str(source).replace("/", "_")
    samples = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i}"
        try:
            raw = float(row[columns.mos])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {columns.mos} is {row[columns.mos]!r}, not a "
                             "number") from None
        if columns.mos_range is not None:
            low, high = columns.mos_range
            if not low <= raw <= high:
                raise ValueError(f"{where}: {columns.mos} {raw:g} lies outside data.mos_range "
                                 f"[{low:g}, {high:g}]")
            raw = rescale_mos(raw, low, high, True)
        image = _image_path(row[columns.image], folder, Path(images_dir), where)
        try:   # as the engines see it: EXIF-turned photos swap width and height
            size = list(displayed_size(image))
        except UnreadableImage:
            size = [1, 1]   # unreadable: the data checks skip and count it before the run
        sample = {"id": str(row[columns.id]) if columns.id else f"{stem}-{i}",
                  "task": "score", "images": [image], "question": None, "answer": None,
                  "mos": raw, "bbox": None, "image_size": size, "source": str(source),
                  "split": row.get("split") or split, "meta": {"row": i}}
        samples.append(validate_sample(sample, where))
    if not samples:
        raise ValueError(f"{source}: no rows")
    return samples
