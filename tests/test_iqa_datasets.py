"""IQA label readers (synth.iqa_datasets) on tiny files in each dataset's documented format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from synth.iqa_datasets import build_iqa_manifest, main, read_table, rescale_mos
from synth.manifest import read_manifest, resolve_images


def make_images(folder: Path, names: list[str], size=(40, 30)) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (90, 120, 150)).save(path)


def write_xlsx(path: Path, sheets: list[list[list]]) -> None:
    """An .xlsx with one worksheet per entry of `sheets`, written by openpyxl (as Excel
    stores one: strings shared, numbers as numbers)."""
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for n, rows in enumerate(sheets, 1):
        sheet = book.create_sheet(f"Sheet{n}")
        for row in rows:
            sheet.append(row)
    book.save(path)


def manifest(tmp: Path, name: str, labels: Path, images: Path, **kw) -> dict[str, dict]:
    out = tmp / "out" / f"{name}.jsonl"
    summary = build_iqa_manifest(name, labels, images, out, progress=False, **kw)
    samples = read_manifest(out)
    assert summary["written"] == len(samples)
    return {s["meta"]["image"]: s for s in samples}


def test_rescale_is_linear_flipped_for_dmos_and_stays_below_five():
    assert rescale_mos(3.0, 1, 5, True) == 2.5       # 5 * (3 - 1) / 4
    assert rescale_mos(1.0, 1, 5, True) == 0.0
    assert rescale_mos(5.0, 1, 5, True) == 4.99      # the top maps strictly below 5
    assert rescale_mos(0.25, 0, 1, False) == 3.75    # DMOS: 5 * (1 - 0.25)
    assert rescale_mos(0.0, 0, 1, False) == 4.99
    assert rescale_mos(-0.02, 0, 1, True) == 0.0     # slightly out of range: clamped


def test_koniq_scores_file_with_the_official_split(tmp_path):
    scores = tmp_path / "koniq10k_scores_and_distributions.csv"
    scores.write_text('"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"\n'
                      '"a.jpg",0,0,50,50,0,100,3.0,0.5,55.1\n'
                      '"b.jpg",0,0,0,0,100,100,5.0,0.1,99.0\n'
                      '"c.jpg",100,0,0,0,0,100,1.0,0.1,2.0\n')
    sets = tmp_path / "koniq10k_distributions_sets.csv"
    sets.write_text("image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n"
                    "a.jpg,0,0,.5,.5,0,100,55.1,0.5,training\n"
                    "b.jpg,0,0,0,0,1,100,99.0,0.1,test\n"
                    "c.jpg,1,0,0,0,0,100,2.0,0.1,validation\n")
    make_images(tmp_path / "1024x768", ["a.jpg", "b.jpg", "c.jpg"])
    got = manifest(tmp_path, "koniq10k", scores, tmp_path / "1024x768", split_file=sets)
    assert {k: (s["mos"], s["split"]) for k, s in got.items()} == {
        "a.jpg": (2.5, "train"), "b.jpg": (4.99, "test"),
        "c.jpg": (0.0, "train")}  # validation -> train by default
    assert got["a.jpg"]["image_size"] == [40, 30]
    assert got["c.jpg"]["meta"]["official_set"] == "validation"
    dropped = manifest(tmp_path, "koniq10k", scores, tmp_path / "1024x768", split_file=sets,
                       koniq_validation="drop")
    assert sorted(dropped) == ["a.jpg", "b.jpg"]


def test_koniq_sets_file_alone_is_on_0_to_100(tmp_path):
    sets = tmp_path / "koniq10k_distributions_sets.csv"
    # a real row of the official file
    sets.write_text("image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n10004473376.jpg,0.0,0.0,"
                    "0.238095238095,0.695238095238,0.0666666666667,105,77.3836206897,"
                    "0.527277894494,training\n")
    make_images(tmp_path / "img", ["10004473376.jpg"])
    (s,) = manifest(tmp_path, "koniq10k", sets, tmp_path / "img").values()
    assert s["mos"] == 3.8692  # 5 * 77.3836206897 / 100, rounded to 4 places
    assert s["split"] == "train" and s["meta"]["official_split"] is True


def test_koniq_labels_on_the_wrong_scale_are_an_error(tmp_path):
    scores = tmp_path / "koniq10k_scores_and_distributions.csv"
    scores.write_text("image_name,MOS\na.jpg,77.4\n")  # 0-100 values in the 1-5 file
    with pytest.raises(ValueError, match="far outside the nominal range 1..5"):
        build_iqa_manifest("koniq10k", scores, tmp_path, tmp_path / "m.jsonl", progress=False)


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_spaq_from_xlsx_or_csv_export(tmp_path, fmt):
    names = [f"{i:05d}.jpg" for i in range(1, 11)]
    mos = [42.5, 100.0] + [10.0 * i for i in range(8)]
    header = ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness",
              "Sharpness"]
    rows = [header] + [[n, m, 50, 50, 50, 50, 50] for n, m in zip(names, mos)]
    labels = tmp_path / f"MOS and Image attribute scores.{fmt}"
    if fmt == "xlsx":
        write_xlsx(labels, [rows])
    else:
        labels.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    make_images(tmp_path / "TestImage", names)
    got = manifest(tmp_path, "spaq", labels, tmp_path / "TestImage", test_fraction=0.2)
    assert got["00001.jpg"]["mos"] == 2.125  # 5 * 42.5 / 100
    assert got["00002.jpg"]["mos"] == 4.99
    assert [s["split"] for s in got.values()].count("test") == 2  # 0.2 of 10, seeded
    again = manifest(tmp_path, "spaq", labels, tmp_path / "TestImage", test_fraction=0.2)
    assert {k: s["split"] for k, s in again.items()} == {k: s["split"] for k, s in got.items()}


def test_livec_mat_files_drop_the_seven_training_images(tmp_path):
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["10.JPG", "100.bmp", "1000.JPG"]
    data = tmp_path / "Data"
    data.mkdir()
    cell = np.empty((len(names), 1), dtype=object)  # a MATLAB cell column, as released
    for i, n in enumerate(names):
        cell[i, 0] = np.array([n])
    scipy.io.savemat(data / "AllImages_release.mat", {"AllImages_release": cell})
    scipy.io.savemat(data / "AllMOS_release.mat", {"AllMOS_release": np.array(
        [[50.0] * 7 + [63.4, 0.0, 100.0]])})
    make_images(tmp_path / "Images", names[7:])
    got = manifest(tmp_path, "livec", data / "AllMOS_release.mat", tmp_path / "Images")
    assert {k: s["mos"] for k, s in got.items()} == {"10.JPG": 3.17, "100.bmp": 0.0,
                                                     "1000.JPG": 4.99}


def test_kadid_dmos_is_higher_better_and_split_by_reference(tmp_path):
    rows, names = ["dist_img,ref_img,dmos,var"], []
    for ref in range(1, 11):
        for dist in range(1, 4):
            name = f"I{ref:02d}_{dist:02d}_01.png"
            names.append(name)
            rows.append(f"{name},I{ref:02d}.png,{4.57 if dist == 1 else 1.0},0.1")
    labels = tmp_path / "dmos.csv"
    labels.write_text("\n".join(rows) + "\n")
    make_images(tmp_path / "images", names)
    got = manifest(tmp_path, "kadid10k", labels, tmp_path / "images")
    assert got["I01_01_01.png"]["mos"] == 4.4625  # 5 * (4.57 - 1) / 4: high dmos = good
    assert got["I01_02_01.png"]["mos"] == 0.0
    by_ref: dict[str, set[str]] = {}
    for s in got.values():
        by_ref.setdefault(s["meta"]["reference"], set()).add(s["split"])
    assert all(len(splits) == 1 for splits in by_ref.values())
    assert sum(splits == {"test"} for splits in by_ref.values()) == 2  # 0.2 of 10 references


def test_csiq_xlsx_dmos_is_flipped_and_paths_built(tmp_path):
    header = ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"]
    data = [header, [1600, 1, "noise", 1, 0.061, 0.062], [1600, 5, "blur", 5, 0.1, 1.0],
            ["bridge", 3, "jpeg 2000", 2, 0.1, 0.0], ["bridge", 6, "contrast", 1, 0.1, 0.5]]
    labels = tmp_path / "csiq.DMOS.xlsx"
    write_xlsx(labels, [[["notes"], ["see the other sheet"]],
                        [["CSIQ subjective scores"], []] + data])  # a title row above
    make_images(tmp_path, ["dst_imgs/awgn/1600.AWGN.1.png", "dst_imgs/blur/1600.BLUR.5.png",
                           "dst_imgs/jpeg2000/bridge.jpeg2000.2.png",
                           "dst_imgs/contrast/bridge.CONTRAST.1.png"])  # case differs on disk
    got = manifest(tmp_path, "csiq", labels, tmp_path)
    assert {k: s["mos"] for k, s in got.items()} == {
        "dst_imgs/awgn/1600.AWGN.1.png": 4.69,        # 5 * (1 - 0.062)
        "dst_imgs/blur/1600.BLUR.5.png": 0.0,
        "dst_imgs/jpeg2000/bridge.jpeg2000.2.png": 4.99,
        "dst_imgs/contrast/bridge.contrast.1.png": 2.5}
    found = got["dst_imgs/contrast/bridge.contrast.1.png"]
    manifest_path = tmp_path / "out" / "csiq.jsonl"
    assert resolve_images(found, manifest_path)[0].name == "bridge.CONTRAST.1.png"
    assert got["dst_imgs/awgn/1600.AWGN.1.png"]["meta"]["reference"] == "src_imgs/1600.png"
    assert len({s["split"] for k, s in got.items() if "1600" in k}) == 1


def test_agiqa3k_groups_by_prompt_and_counts_bad_images(tmp_path):
    header = "name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align"
    rows = [f"m{i}_{p}.jpg,prompt {p},a,b,s,{2.3 if i == 0 else 4.0},0.5,3,0.5"
            for p in range(5) for i in range(2)]
    labels = tmp_path / "data.csv"
    labels.write_text("\n".join([header, *rows, "lost.jpg,prompt 9,a,b,s,1,0.5,3,0.5"]) + "\n")
    make_images(tmp_path / "img", [r.split(",")[0] for r in rows])
    (tmp_path / "img" / "m1_4.jpg").write_bytes(b"broken")
    out = tmp_path / "agiqa.jsonl"
    summary = build_iqa_manifest("agiqa3k", labels, tmp_path / "img", out, progress=False)
    assert summary["skipped"] == {"missing image": 1, "unreadable image": 1}
    got = {s["meta"]["image"]: s for s in read_manifest(out)}
    assert got["m0_0.jpg"]["mos"] == 2.3  # 0-5 nominal: unchanged
    for p in range(4):
        assert got[f"m0_{p}.jpg"]["split"] == got[f"m1_{p}.jpg"]["split"]


def test_wrong_label_file_says_what_is_missing(tmp_path):
    labels = tmp_path / "data.csv"
    labels.write_text("file,score\na.jpg,3\n")
    with pytest.raises(ValueError, match=r"no header row with the columns \['name'"):
        build_iqa_manifest("agiqa3k", labels, tmp_path, tmp_path / "m.jsonl", progress=False)
    assert read_table(labels, ["FILE"]) == [{"file": "a.jpg", "score": "3"}]


def test_cli_writes_one_split(tmp_path, capsys):
    labels = tmp_path / "dmos.csv"
    labels.write_text("dist_img,ref_img,dmos,var\n" + "".join(
        f"I{r:02d}_01_01.png,I{r:02d}.png,3.0,0.1\n" for r in range(1, 6)))
    make_images(tmp_path / "images", [f"I{r:02d}_01_01.png" for r in range(1, 6)])
    out = tmp_path / "kadid_test.jsonl"
    assert main(["kadid10k", "--labels", str(labels), "--images", str(tmp_path / "images"),
                 "--out", str(out), "--only", "test", "--quiet"]) == 0
    assert [s["split"] for s in read_manifest(out)] == ["test"]  # 0.2 of 5 references
    assert "written" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_an_unreadable_xlsx_is_one_clear_error(tmp_path):
    from synth.iqa_datasets import read_table

    bad = tmp_path / "labels.xlsx"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="is not a readable .xlsx file.*export it as CSV"):
        read_table(bad, ["image", "mos"])
