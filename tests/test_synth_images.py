"""synth.images.open_rgb (every part's image reading) on the formats that used to go wrong,
and the data stream skipping what the prompt builder would refuse. Expected pixels are
worked by hand from the definitions in synth/images.py."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

from driver.data_stream import DataStream
from model_inputs.prompting import check_sample, load_images
from synth.images import UnreadableImage, open_rgb
from synth.prefilter import BadImage, load_rgb


def test_exif_orientation_is_applied(tmp_path):
    # A 40x20 image stored sideways with EXIF orientation 6 ("rotate 90 CW to view"): a
    # viewer shows it 20 wide and 40 tall, its left columns (red) on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    shown = np.asarray(open_rgb(path))
    assert shown.shape == (40, 20, 3)
    assert shown[0, :, 0].mean() > 200 and shown[-1, :, 0].mean() < 50


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    deep = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    # 16-bit: v * 255 / 65535 -> 0, 128 (127.5 rounds to even 128), 255, 4.
    assert np.asarray(open_rgb(tmp_path / "deep.png"))[0, :, 0].tolist() == [0, 128, 255, 4]
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], np.float32), "F").save(
        tmp_path / "float.tif")
    # Float at most 1: v * 255 -> 0, 128 (127.5), 255, 64 (63.75).
    assert np.asarray(open_rgb(tmp_path / "float.tif"))[0, :, 1].tolist() == [0, 128, 255, 64]


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 128], [0, 0, 255, 0]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    # Half-transparent red over white: 255, 255 * 127/255 + ... = (255, 127, 127);
    # fully transparent blue: white.
    out = np.asarray(open_rgb(tmp_path / "alpha.png"))[0]
    assert out[0].tolist() == pytest.approx([255, 127, 127], abs=1)
    assert out[1].tolist() == [255, 255, 255]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    assert np.asarray(open_rgb(tmp_path / "palette.png"))[0].tolist() == [[255, 255, 255],
                                                                          [0, 255, 0]]


def test_every_reader_sees_the_same_pixels(tmp_path):
    deep = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    expected = np.asarray(open_rgb(tmp_path / "deep.png"))
    sample = {"id": "d", "task": "score", "images": [str(tmp_path / "deep.png")]}
    assert np.array_equal(np.asarray(load_images(sample)[0]), expected)   # engines, learner
    assert np.array_equal(load_rgb(tmp_path / "deep.png"), expected)       # builders


def test_bad_files_raise_one_clear_error(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("text.jpg", "empty.png", "missing.png"):
        with pytest.raises(UnreadableImage, match=name):
            open_rgb(tmp_path / name)
    with pytest.raises(BadImage):
        load_rgb(tmp_path / "text.jpg")


def test_the_stream_skips_what_the_prompt_builder_refuses(tmp_path):
    good, thin = tmp_path / "good.png", tmp_path / "thin.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good)
    Image.new("RGB", (300, 1), (9, 9, 9)).save(thin)      # aspect 300 > 200: unreadable
    samples = [{"id": "ok", "task": "score", "images": [str(good)], "question": None},
               {"id": "thin", "task": "score", "images": [str(thin)], "question": None},
               {"id": "three", "task": "score", "images": [str(good)] * 3, "question": None},
               {"id": "ok2", "task": "score", "images": [str(good)], "question": None}]
    check = functools.partial(check_sample, mode="think", min_pixels=3136,
                              max_pixels=50176, max_images=2)
    stream = DataStream(samples, batch_size=2, seed=0, shuffle=False, check=check)
    assert [s["id"] for s in stream.next_batch()[1]] == ["ok", "ok2"]
    assert set(stream.skipped) == {"thin", "three"}
    assert "aspect ratio" in stream.skipped["thin"]
    assert "3 images" in stream.skipped["three"]


def test_the_scorer_lists_and_skips_files_that_do_not_decode(tmp_path):
    from evals.score import decodable, find_images

    Image.new("RGB", (40, 40)).save(tmp_path / "good.png")
    (tmp_path / "text.jpg").write_text("a text file named .jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    good, bad = decodable(find_images(tmp_path))
    assert good == [(tmp_path / "good.png").resolve()]
    assert len(bad) == 2 and any("text.jpg" in b for b in bad)


def test_dataset_sizes_are_the_displayed_ones_and_a_bomb_is_skipped(tmp_path, monkeypatch):
    from synth.images import displayed_size

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20)).save(tmp_path / "turned.jpg", exif=exif)
    assert displayed_size(tmp_path / "turned.jpg") == (20, 40) == open_rgb(
        tmp_path / "turned.jpg").size
    # Beyond Pillow's pixel limit (lowered here for a small file): a clear error, which
    # the dataset readers count and skip instead of aborting the build.
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UnreadableImage, match="too large") as err:
        displayed_size(tmp_path / "big.png")
    assert err.value.reason == "decompression bomb"
