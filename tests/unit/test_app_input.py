"""The app's input path: MediaPipe's resize (against MediaPipe's own tensors and a plain reference),
the app's pre-scale (against a plain reference and docs/app.md's snippet), decoding (EXIF
orientation, modes to RGB), the originals' manifest written by prepare_dataset, and evaluation
reading the originals where they live."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mobiletag.artifacts import Dataset
from mobiletag.data.dataset import index_dataset
from mobiletag.data.tfrecords import build_tfrecords, originals_of, read_stats
from mobiletag.errors import DataError
from mobiletag.export.app_input import app_image, app_pixels, app_resize, mediapipe_resize, prescale
from mobiletag.export.inference_config import (
    PRESCALE,
    RESIZE,
    build_inference_config,
    eval_pixels,
    iter_eval_batches,
)
from mobiletag.storage import bytes_crc32c

GOLDEN = Path(__file__).parent / "data" / "mediapipe_resize_golden.npz"  # see make_mediapipe_golden.py there
APP_DOC = Path(__file__).parents[2] / "docs" / "app.md"


def plain_bilinear(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The resize as a person would write it from the description: output pixel (x, y) samples
    (x * W / out_w, y * H / out_h) rounded to 1/32 px, bilinear on 5-bit weights, edges replicated."""
    h, w = rgb.shape[:2]
    out = np.zeros((out_h, out_w, rgb.shape[2]), np.uint8)
    for y in range(out_h):
        for x in range(out_w):
            sx, sy = round(x * w / out_w * 32), round(y * h / out_h * 32)
            x0, fx, y0, fy = sx // 32, sx % 32, sy // 32, sy % 32
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            x0, y0 = min(x0, w - 1), min(y0, h - 1)
            acc = (
                rgb[y0, x0].astype(np.int64) * (32 - fx) * (32 - fy)
                + rgb[y0, x1].astype(np.int64) * fx * (32 - fy)
                + rgb[y1, x0].astype(np.int64) * (32 - fx) * fy
                + rgb[y1, x1].astype(np.int64) * fx * fy
            )
            out[y, x] = (acc * 32 + (1 << 14)) >> 15
    return out


def plain_prescale(image: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The pre-scale as a person would write it from inference_config.json's words: blocks of
    kx = W // out_w by ky = H // out_h pixels (at least 1), the leftovers a last smaller block,
    each channel's mean rounded half up in integers."""
    h, w = image.shape[:2]
    kx, ky = max(1, w // out_w), max(1, h // out_h)
    pixels = image.reshape(h, w, -1).astype(np.int64)
    out = np.zeros((-(-h // ky), -(-w // kx), pixels.shape[2]), np.uint8)
    for by in range(out.shape[0]):
        for bx in range(out.shape[1]):
            block = pixels[by * ky : (by + 1) * ky, bx * kx : (bx + 1) * kx]
            n = block.shape[0] * block.shape[1]
            out[by, bx] = (block.sum(axis=(0, 1)) + n // 2) // n
    return out.reshape(out.shape[0], out.shape[1], *image.shape[2:])


def png(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG", **save)
    return out.getvalue()


# === The resize ===


def test_resize_equals_mediapipe_tensors():
    """Bit-identical to what MediaPipe 1.2.2's ImageClassifier fed a model (24x16 and 40x40 inputs)."""
    golden = np.load(GOLDEN)
    cases = [k for k in golden.files if k.startswith("out_")]
    assert len(cases) == 12
    for key in cases:
        _, i, size = key.split("_")
        width, height = (int(v) for v in size.split("x"))
        got = mediapipe_resize(golden[f"src_{i}"], width, height)
        assert got.dtype == np.uint8 and got.shape == (height, width, 3)
        np.testing.assert_array_equal(got, golden[key], err_msg=key)


@pytest.mark.parametrize(
    ("source", "out"),
    [((48, 64), (24, 16)), ((7, 5), (40, 40)), ((1, 1), (3, 2)), ((300, 2), (7, 9)), ((97, 131), (32, 32))],
)
def test_resize_against_a_plain_reference(source, out):
    """OpenCV's perspective-matrix arithmetic rounds a coordinate differently from the plain formula
    only at exact 1/64-px ties: at most one level apart, on a few pixels."""
    rgb = np.random.default_rng(sum(source)).integers(0, 256, (*source, 3), dtype=np.uint8)
    got = mediapipe_resize(rgb, *out)
    want = plain_bilinear(rgb, *out)
    assert np.abs(got.astype(int) - want).max() <= 1
    assert np.mean(got == want) >= 0.99


def test_resize_facts():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(mediapipe_resize(rgb, 50, 30), rgb)  # same size: the image itself
    half = mediapipe_resize(rgb, 25, 15)
    np.testing.assert_array_equal(half, rgb[::2, ::2])  # top-left aligned, no antialiasing: every other pixel
    rgba = np.concatenate([rgb, np.zeros((30, 50, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(mediapipe_resize(rgba, 25, 15), half)  # alpha dropped, not applied
    assert mediapipe_resize(rgb[..., 0], 25, 15).shape == (15, 25, 1)
    with pytest.raises(ValueError, match="0x15"):
        mediapipe_resize(rgb, 0, 15)


# === The app's pre-scale ===


@pytest.mark.parametrize(
    ("source", "out"),
    [
        ((900, 1200), (64, 64)),  # a generated phone photo for fast.yaml's student: 18 x 14 blocks, leftovers
        ((480, 640), (40, 40)),  # exact blocks: 16 x 12
        ((50, 300), (32, 32)),  # one axis reduced (kx 9), the other kept (50 < 2 * 32)
        ((7, 5), (40, 40)),  # smaller than the input: the image as it is
        ((97, 131), (3, 2)),
    ],
)
def test_prescale_equals_a_plain_reference(source, out):
    rgb = np.random.default_rng(sum(source)).integers(0, 256, (*source, 3), dtype=np.uint8)
    got = prescale(rgb, *out)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, plain_prescale(rgb, *out))
    np.testing.assert_array_equal(prescale(rgb[..., 0], *out), plain_prescale(rgb[..., 0], *out))  # grey
    rgba = np.concatenate([rgb, rgb[..., :1]], axis=2)
    np.testing.assert_array_equal(prescale(rgba, *out), plain_prescale(rgba, *out))


def test_prescale_facts():
    rgb = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    assert prescale(rgb, 40, 30) is rgb  # less than twice the input on both axes: untouched
    reduced = prescale(rgb, 35, 15)  # kx 2, ky 3
    assert reduced.shape == (15, 35, 3)
    np.testing.assert_array_equal(reduced[4, 7], (rgb[12:15, 14:16].sum(axis=(0, 1)) + 3) // 6)
    halves = np.array([[[0], [1]], [[0], [0]], [[1], [2]]], np.uint8)  # 3 x 2, one channel
    np.testing.assert_array_equal(prescale(halves, 1, 1), [[[1]]])  # 4 / 6 rounds to 1
    np.testing.assert_array_equal(prescale(halves[:2], 1, 1), [[[0]]])  # 1 / 4 rounds to 0
    np.testing.assert_array_equal(prescale(np.array([[0, 1]], np.uint8), 1, 1), [[1]])  # 1 / 2: half up
    small = np.arange(35, dtype=np.uint8).reshape(5, 7)
    leftovers = prescale(small, 3, 2)  # kx 2, ky 2: the last column and row of blocks are one pixel wide
    assert leftovers.shape == (3, 4) and leftovers[2, 3] == small[4, 6]
    photo = np.zeros((900, 1200, 3), np.uint8)
    for size in (64, 96, 240):
        height, width = prescale(photo, size, size).shape[:2]  # MediaPipe then resizes by a factor in [1, 2)
        assert size <= height < 2 * size and size <= width < 2 * size
    with pytest.raises(ValueError, match="0x15"):
        prescale(rgb, 0, 15)


def test_app_resize_is_the_prescale_then_mediapipe_resize():
    rgb = np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    np.testing.assert_array_equal(app_resize(rgb, 32, 24), mediapipe_resize(plain_prescale(rgb, 32, 24), 32, 24))
    small = rgb[:40, :50]
    np.testing.assert_array_equal(app_resize(small, 32, 24), mediapipe_resize(small, 32, 24))


def test_the_python_snippet_in_docs_is_the_prescale():
    """docs/app.md's Python pre-scale, run as it is written there, gives prescale's bytes."""
    blocks = re.findall(r"```python\n(.*?)```", APP_DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    code = next(b for b in blocks if "def prescale(" in b)
    namespace: dict = {}
    exec(code[code.index("def prescale(") :].split("\n\n\n")[0], {"np": np}, namespace)
    rng = np.random.default_rng(5)
    for source, out in (((900, 1200), (64, 64)), ((131, 97), (32, 32)), ((20, 30), (32, 32))):
        rgb = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
        np.testing.assert_array_equal(namespace["prescale"](rgb, *out), prescale(rgb, *out))


def test_exif_orientation_is_applied():
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:5, :10] = (250, 20, 20)  # a red corner, top left
    plain, turned = io.BytesIO(), io.BytesIO()
    image = Image.fromarray(rgb)
    image.save(plain, format="JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(turned, format="JPEG", quality=95, exif=exif)
    upright = app_image(turned.getvalue())
    assert upright.shape == (40, 20, 3)
    np.testing.assert_array_equal(upright, np.rot90(app_image(plain.getvalue()), k=-1))
    assert upright[2:8, -4:, 0].min() > 200 and upright[-8:, :8, 0].max() < 30  # the red corner is now top right
    config = {"input": {"shape": [1, 8, 4, 3]}}
    np.testing.assert_array_equal(app_pixels(turned.getvalue(), config), app_resize(upright, 4, 8))


def test_modes_become_rgb():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    np.testing.assert_array_equal(app_image(png(grey)), np.repeat(grey[..., None], 3, axis=2))
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # a transparent pixel keeps its colour, as MediaPipe's RGBA -> RGB does
    np.testing.assert_array_equal(app_image(png(rgba, "RGBA")), rgba[..., :3])
    palette = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).quantize(8)
    out = io.BytesIO()
    palette.save(out, format="PNG")
    assert Image.open(io.BytesIO(out.getvalue())).mode == "P"
    np.testing.assert_array_equal(app_image(out.getvalue()), np.asarray(palette.convert("RGB")))
    grey16 = (grey.astype(np.uint16) * 257).astype(np.uint16)
    as_rgb = app_image(png(grey16, "I;16"))
    assert as_rgb.shape == (6, 5, 3) and np.abs(as_rgb[..., 0].astype(int) - grey).max() <= 1
    with pytest.raises(OSError):
        app_image(b"not an image")


def test_inference_config_documents_the_input_path():
    spec = SimpleNamespace(shape=[1, 24, 32, 3], dtype="uint8", scale=1.0, zero_point=0)
    out = SimpleNamespace(shape=[1, 2], dtype="uint8", scale=1 / 256, zero_point=0)
    config = build_inference_config(SimpleNamespace(input=spec, output=out), ["a", "b"], {"a": 0.5, "b": 0.25})
    section = config["input"]
    assert section["resize"] == RESIZE
    assert RESIZE == "bilinear as MediaPipe Tasks (OpenCV warpPerspective, no antialiasing, no crop or padding)"
    assert section["prescale"] == PRESCALE and "kx = W // width, ky = H // height" in PRESCALE
    assert "(sum + n // 2) // n" in PRESCALE and "kx = W // 32, ky = H // 24" in section["how_to"]
    assert section["exif_orientation"].startswith("applied")
    assert "alpha dropped" in section["decode"] and "top-left aligned" in section["resize_sampling"]
    assert "32x24" in section["how_to"] and "feed the pixels as they are" in section["how_to"]
    assert section["reference"].startswith("mobiletag.export.app_input.app_pixels")


# === Originals in the dataset, and evaluation on them ===


def _large_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Fine detail that a shrunk, re-encoded copy loses: a 1-px checkerboard over colour noise."""
    noise = rng.integers(40, 216, (height, width, 3)).astype(np.int16)
    board = ((np.indices((height, width)).sum(axis=0) % 2) * 80 - 40)[..., None]
    return Image.fromarray(np.clip(noise + board, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def large_dataset(sample_dir, fast_config, tmp_path_factory) -> tuple[Path, Path]:
    """The sample data with its test images replaced by large ones (one PNG, one EXIF-rotated JPEG)."""
    root = tmp_path_factory.mktemp("large") / "data"
    shutil.copytree(sample_dir, root)
    rng = np.random.default_rng(7)
    with open(root / "test_labels.csv", encoding="utf-8") as fh:
        test_files = [row["filepath"] for row in csv.DictReader(fh)]
    for i, name in enumerate(test_files):
        image = _large_image(rng, 640, 480)
        if i == 1:
            exif = Image.Exif()
            exif[0x0112] = 6
            image.save(root / "images" / name, format="JPEG", quality=92, exif=exif)
        else:
            image.save(root / "images" / name, format="JPEG", quality=92)
    out = tmp_path_factory.mktemp("large-ds") / "ds"
    build_tfrecords(index_dataset(root, fast_config), fast_config, out)
    return root, out


def test_manifest_lists_the_originals_where_they_live_in_record_order(tfrecord_dir, sample_dir):
    stats = read_stats(tfrecord_dir)
    assert stats["format_version"] == 3 and set(stats["originals"]) == {"val", "test"}
    manifest = json.loads((tfrecord_dir / Dataset.ORIGINALS).read_text())
    assert manifest["data_uri"] == str(sample_dir.resolve()) and set(manifest["splits"]) == {"val", "test"}
    for split in ("val", "test"):
        originals = originals_of(tfrecord_dir, split)
        batches = list(iter_eval_batches(tfrecord_dir, split, [8], source="records"))
        paths = [p for b in batches for p in b.paths]  # record order
        assert [o.filepath for o in originals] == paths
        assert len(paths) == stats["splits"][split]["num_images"] == stats["originals"][split]["files"]
        for original in originals:
            source = sample_dir.resolve() / "images" / original.filepath
            data = source.read_bytes()
            assert original.uri == str(source) and original.size == len(data)
            assert original.crc32c == bytes_crc32c(data) and original.mtime_ns == source.stat().st_mtime_ns
            assert original.generation is None
        assert stats["originals"][split]["bytes"] == sum(o.size for o in originals)


def test_evaluation_reads_the_originals(large_dataset):
    """At 40 px the app's pre-scale averages 16 x 12 blocks of the 640x480 originals; at 400 px
    (no pre-scale) the 1-px checkerboard reaches the pixels, which the records' copies lost."""
    root, dataset = large_dataset
    (pixels, large), labels, paths = eval_pixels(dataset, "test", [40, 400])
    for size, got in ((40, pixels), (400, large)):
        config = {"input": {"shape": [1, size, size, 3]}}
        want = np.stack([app_pixels((root / "images" / p).read_bytes(), config) for p in paths])
        np.testing.assert_array_equal(got.astype(np.uint8), want)
    (stored,), stored_labels, stored_paths = eval_pixels(dataset, "test", [400], source="records")
    assert stored_paths == paths
    np.testing.assert_array_equal(stored_labels, labels)
    assert np.abs(stored - large).mean() > 10  # the records' 37-px copies lost the detail
    rotated = app_image((root / "images" / paths[1]).read_bytes())
    assert rotated.shape == (640, 480, 3)  # turned upright before the resize


def test_an_older_dataset_says_to_rerun_prepare_dataset(large_dataset, tmp_path):
    _, dataset = large_dataset
    old = tmp_path / "old"
    shutil.copytree(dataset, old, ignore=shutil.ignore_patterns(Dataset.ORIGINALS))
    stats = json.loads((old / "stats.json").read_text())
    (old / "stats.json").write_text(json.dumps({**stats, "format_version": 2}))
    with pytest.raises(DataError, match=r"in format 2, this mobiletag reads format 3.*Re-run prepare_dataset"):
        next(iter_eval_batches(old, "test", [16]))
    with pytest.raises(DataError, match=r"format 2.*Re-run prepare_dataset"):
        read_stats(old)
    (old / "stats.json").write_text(json.dumps(stats))  # the format of today, the manifest missing
    with pytest.raises(DataError, match=r"has no originals.json .*Re-run prepare_dataset"):
        next(iter_eval_batches(old, "test", [16]))
    with pytest.raises(DataError, match="val and test splits only"):
        next(iter_eval_batches(dataset, "train", [16]))
    assert len(next(iter_eval_batches(old, "train", [16], source="records")).paths) > 0
