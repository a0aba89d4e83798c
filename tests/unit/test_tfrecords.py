from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import tensorflow as tf

from mobiletag.data.dataset import index_dataset
from mobiletag.data.tfrecords import build_tfrecords, read_labels, read_stats
from mobiletag.errors import DataError


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _records(folder, split):
    out = {}
    for path in sorted(folder.glob(f"{split}-*.tfrecord")):
        for raw in tf.data.TFRecordDataset(str(path)):
            ex = tf.train.Example.FromString(raw.numpy())
            f = ex.features.feature
            out[f["image/filepath"].bytes_list.value[0].decode()] = (
                list(f["image/labels"].float_list.value),
                f["image/width"].int64_list.value[0],
                f["image/height"].int64_list.value[0],
                f["image/encoded"].bytes_list.value[0],
            )
    return out


def test_shards_hold_every_row_with_its_labels(tfrecord_dir, sample_dir, fast_config):
    classes = read_labels(tfrecord_dir)
    assert classes == ["circle", "cross", "ring", "square", "star", "triangle"]
    stats = read_stats(tfrecord_dir)
    side = fast_config.stored_image_side
    largest = max(fast_config.teacher.image_size, fast_config.student.image_size)
    assert stats["stored_image_side"] == side == round(largest * 1.15)
    for split in ("train", "val", "test"):
        with open(sample_dir / f"{split}_labels.csv", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        records = _records(tfrecord_dir, split)
        assert len(records) == len(rows) == stats["splits"][split]["num_images"]
        for row in rows:
            labels, width, height, jpeg = records[row["filepath"]]
            expected = [1.0 if c in row["labels"].split("|") else 0.0 for c in classes]
            assert labels == expected
            assert max(width, height) == side  # sample images are all larger than the cap
            decoded = tf.io.decode_jpeg(jpeg).numpy()
            assert decoded.shape == (height, width, 3)


def test_rebuild_is_byte_identical(sample_dir, fast_config, tmp_path):
    index = index_dataset(sample_dir, fast_config)
    build_tfrecords(index, fast_config, tmp_path / "one")
    build_tfrecords(index, fast_config, tmp_path / "two")
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_sharding_by_count(sample_dir, fast_config, tmp_path):
    config = fast_config.replace(data=fast_config.data.__class__(images_per_shard=30))
    stats = build_tfrecords(index_dataset(sample_dir, config), config, tmp_path / "out")
    n = stats["splits"]["train"]["num_images"]
    assert len(stats["shards"]["train"]) == -(-n // 30)
    assert sum(1 for _ in tf.data.TFRecordDataset([str(tmp_path / "out" / s) for s in stats["shards"]["train"]])) == n


def test_bad_image_leaves_nothing_behind(sample_dir, fast_config, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sample_dir, broken)
    with open(broken / "val_labels.csv", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh))["filepath"]
    path = broken / "images" / first
    path.write_bytes(path.read_bytes()[:200])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"val_labels.csv line 2 \({first}\): cannot be decoded"):
        build_tfrecords(index_dataset(broken, fast_config), fast_config, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_train_order_is_shuffled_but_seeded(tfrecord_dir, sample_dir):
    names = list(_records(tfrecord_dir, "train"))
    with open(sample_dir / "train_labels.csv", encoding="utf-8") as fh:
        listed = [r["filepath"] for r in csv.DictReader(fh)]
    assert sorted(names) == sorted(listed) and names != listed
    assert np.all([n in listed for n in names])
