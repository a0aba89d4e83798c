"""The val/test originals: never copied into the dataset artifact, read where they live, checked
against prepare_dataset's manifest (size, CRC32C) by every reader."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from mobiletag.artifacts import Dataset
from mobiletag.data import originals as originals_module
from mobiletag.data.dataset import index_dataset
from mobiletag.data.originals import iter_originals
from mobiletag.data.tfrecords import build_tfrecords, originals_of
from mobiletag.errors import DataError
from mobiletag.export.app_input import app_pixels
from mobiletag.export.inference_config import eval_pixels, stream_scores


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_dataset_holds_no_copy_of_any_original(tfrecord_dir, sample_dir):
    artifact = {_sha256(p): p for p in tfrecord_dir.rglob("*") if p.is_file()}
    images = {_sha256(p): p for p in (sample_dir / "images").rglob("*") if p.is_file()}
    assert len(images) == 120
    assert sorted(set(artifact) & set(images)) == []
    names = sorted(p.relative_to(tfrecord_dir).as_posix() for p in artifact.values())
    assert names == [
        "labels.txt",
        Dataset.ORIGINALS,
        "stats.json",
        "test-00000-of-00001.tfrecord",
        "train-00000-of-00001.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]


@pytest.fixture
def changing(sample_dir, fast_config, tmp_path):
    """A private copy of the sample data and its dataset: the tests change its files."""
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    build_tfrecords(index_dataset(data, fast_config), fast_config, tmp_path / "ds")
    return data, tmp_path / "ds"


def _mean_pixel(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(len(pixels), -1, 3).mean(axis=1)


def test_a_changed_or_vanished_original_is_named_by_every_reader(changing):
    data, dataset = changing
    first, second = originals_of(dataset, "val")[:2]
    path = data / "images" / first.filepath
    changed = bytearray(path.read_bytes())
    changed[-3] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(changed))
    named = rf"the val image {first.filepath} \(val_labels.csv\), {path.resolve()}, changed since the run began"
    todo = "restore it as it was, or start a new run"
    with pytest.raises(DataError, match=named) as info:  # evaluation, threshold search
        stream_scores(dataset, "val", {"mean": (16, _mean_pixel)})
    assert todo in str(info.value) and f"crc32c {first.crc32c} then" in str(info.value)
    with pytest.raises(DataError, match=named):  # export's parity images
        eval_pixels(dataset, "val", [16], limit=3)
    with pytest.raises(DataError, match=named):  # MediaPipe's images
        list(iter_originals(originals_of(dataset, "val")))

    changed[-3] ^= 0xFF
    path.write_bytes(bytes(changed))  # restored: a new mtime, the same bytes, read as they are
    assert len(eval_pixels(dataset, "val", [16], limit=3)[2]) == 3
    (data / "images" / second.filepath).unlink()
    vanished = rf"the val image {second.filepath} \(val_labels.csv\), .*, vanished since the run began.*{todo}"
    with pytest.raises(DataError, match=vanished):
        stream_scores(dataset, "val", {"mean": (16, _mean_pixel)})
    with pytest.raises(DataError, match=vanished):
        list(iter_originals(originals_of(dataset, "val")))


def test_unchanged_originals_give_the_source_files_pixels_and_scores(tfrecord_dir, sample_dir):
    """What the readers measure is the source file through the app's input path, as when the
    originals were copied byte for byte into the dataset."""
    config = {"input": {"shape": [1, 24, 24, 3]}}
    for split in ("val", "test"):
        scores, labels, paths = stream_scores(tfrecord_dir, split, {"mean": (24, _mean_pixel)})
        want = np.stack([app_pixels((sample_dir / "images" / p).read_bytes(), config) for p in paths])
        np.testing.assert_array_equal(scores["mean"], _mean_pixel(want))
        (pixels,), _, _ = eval_pixels(tfrecord_dir, split, [24])
        np.testing.assert_array_equal(pixels.astype(np.uint8), want)
        assert [o.filepath for o in originals_of(tfrecord_dir, split)] == paths and len(labels) == len(paths)


def test_originals_are_read_a_few_ahead_not_all_at_once(tfrecord_dir, monkeypatch):
    """Memory holds a window of files (2 per worker), not the split."""
    reads: list[str] = []
    read = originals_module.read_original

    def counting(original):
        reads.append(original.filepath)
        return read(original)

    monkeypatch.setattr(originals_module, "read_original", counting)
    originals = originals_of(tfrecord_dir, "val")
    assert len(originals) > 6
    stream = iter_originals(originals, workers=2)
    next(stream)
    assert len(reads) <= 4 + 1
    assert [o.filepath for o, _ in stream] == [o.filepath for o in originals[1:]]
    assert sorted(reads) == sorted(o.filepath for o in originals)
