"""synth.data_files: a parquet with the images inside and a CSV of paths, other column
names, become samples of the manifest form; scores rescaled by hand-worked numbers."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from synth.data_files import Columns, is_manifest, read_data_file


def _png(color: tuple[int, int, int], size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_parquet_with_image_bytes_and_a_csv_of_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"picture": [{"bytes": _png((200, 10, 10)), "path": None},
                                  {"bytes": _png((10, 200, 10)), "path": None}],
                      "score": [87.5, 12.5], "key": ["a", "b"]})
    pq.write_table(table, tmp_path / "mine.parquet")
    cols = Columns(image="picture", mos="score", id="key", mos_range=(0.0, 100.0))
    samples = read_data_file(str(tmp_path / "mine.parquet"), cols, tmp_path / "images")
    # 5 x (87.5 - 0) / 100 = 4.375; 5 x 12.5 / 100 = 0.625
    assert [(s["id"], s["mos"], s["split"]) for s in samples] == [("a", 4.375, "train"),
                                                                  ("b", 0.625, "train")]
    assert all(s["image_size"] == [40, 30] and s["task"] == "score" for s in samples)
    with Image.open(samples[0]["images"][0]) as image:
        assert image.getpixel((0, 0)) == (200, 10, 10)   # the bytes, written once as PNG

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (50, 50)).save(tmp_path / "photos" / "x.png")
    (tmp_path / "labels.csv").write_text("file,quality,split\nphotos/x.png,3.5,test\n")
    (csv_sample,) = read_data_file(str(tmp_path / "labels.csv"),
                                   Columns(image="file", mos="quality"), tmp_path / "images",
                                   split="val")
    assert csv_sample["id"] == "labels-0" and csv_sample["mos"] == 3.5
    assert csv_sample["split"] == "test"   # the row's own split wins over the list's
    assert csv_sample["images"] == [str(tmp_path / "photos" / "x.png")]


def test_bad_rows_name_the_file_row_and_column(tmp_path):
    (tmp_path / "a.csv").write_text("image,mos\nx.png,high\n")
    with pytest.raises(ValueError, match=r"a.csv: row 0: mos is 'high', not a number"):
        read_data_file(str(tmp_path / "a.csv"), Columns(), tmp_path)
    (tmp_path / "b.csv").write_text("img,mos\nx.png,3\n")
    with pytest.raises(ValueError, match=r"no column 'image' \(columns: img, mos\).*image_key"):
        read_data_file(str(tmp_path / "b.csv"), Columns(), tmp_path)
    (tmp_path / "c.csv").write_text("image,mos\nx.png,7\n")
    with pytest.raises(ValueError, match=r"row 0.*mos.*must be a number in \[0, 5\)"):
        read_data_file(str(tmp_path / "c.csv"), Columns(), tmp_path)
    with pytest.raises(ValueError, match=r"outside data.mos_range \[1, 5\]"):
        read_data_file(str(tmp_path / "c.csv"), Columns(mos_range=(1.0, 5.0)), tmp_path)
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="cannot read a .xml file"):
        read_data_file(str(tmp_path / "d.xml"), Columns(), tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        read_data_file(str(tmp_path / "none.csv"), Columns(), tmp_path)


def test_a_manifest_is_read_as_a_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "s", "images": ["x.png"]}) + "\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "x.png", "mos": 2.0}) + "\n")
    assert is_manifest(tmp_path / "m.jsonl") and not is_manifest(tmp_path / "rows.jsonl")
    # A first line that is not an object, or nested past the parser: not a manifest (a
    # data file, refused later with its own message), never an exception here.
    (tmp_path / "n.jsonl").write_text("5\n")
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert not is_manifest(tmp_path / "n.jsonl") and not is_manifest(tmp_path / "deep.jsonl")


def test_an_exif_turned_photo_states_the_size_the_engines_see(tmp_path):
    # A 40 x 30 JPEG whose EXIF orientation 6 turns it by 90 degrees: the engines (and
    # synth.images.open_rgb) see 30 x 40, so the sample must say 30 x 40.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(tmp_path / "turned.jpg", exif=exif)
    (tmp_path / "labels.csv").write_text("image,mos\nturned.jpg,2.0\n")
    (sample,) = read_data_file(str(tmp_path / "labels.csv"), Columns(), tmp_path / "images")
    assert sample["image_size"] == [30, 40]
