"""The tf.data input, checked by value."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tensorflow as tf

from mobiletag.data.pipeline import list_shards, make_dataset
from mobiletag.data.tfrecords import read_labels
from mobiletag.errors import DataError


def _csv_labels(sample_dir, split, classes):
    with open(sample_dir / f"{split}_labels.csv", encoding="utf-8") as fh:
        return {r["filepath"]: [float(c in r["labels"].split("|")) for c in classes] for r in csv.DictReader(fh)}


def test_training_batches_two_resolutions(tfrecord_dir, fast_config):
    ds = make_dataset(
        tfrecord_dir, "train", image_sizes=[96, 64], batch_size=16, training=True, num_classes=6, config=fast_config
    )
    batches = list(ds)
    n_train = sum(1 for _ in tf.data.TFRecordDataset(list_shards(tfrecord_dir, "train")))
    assert len(batches) == n_train // 16  # drop_remainder
    (big, small), labels = batches[0]
    assert big.shape == (16, 96, 96, 3) and small.shape == (16, 64, 64, 3) and labels.shape == (16, 6)
    assert big.dtype == tf.float32 and labels.dtype == tf.float32
    assert float(tf.reduce_min(big)) >= 0.0 and float(tf.reduce_max(big)) <= 255.0
    assert float(tf.reduce_max(big)) > 100  # real pixel values, not [0, 1]
    assert set(np.unique(labels.numpy())) <= {0.0, 1.0}
    # the same augmented image at both sizes: downscaling the big view gives the small one
    down = tf.image.resize(big, [64, 64], antialias=True)
    assert float(tf.reduce_mean(tf.abs(down - small))) < 12.0
    other = tf.roll(small, shift=1, axis=0)
    assert float(tf.reduce_mean(tf.abs(down - other))) > 20.0


def test_augmentation_changes_every_epoch(tfrecord_dir, fast_config):
    ds = make_dataset(
        tfrecord_dir,
        "train",
        image_sizes=[64],
        batch_size=8,
        training=True,
        num_classes=6,
        config=fast_config,
        repeat=False,
    )
    epoch1 = np.concatenate([x.numpy() for x, _ in ds])
    epoch2 = np.concatenate([x.numpy() for x, _ in ds])
    assert epoch1.shape == epoch2.shape
    assert not np.allclose(np.sort(epoch1.ravel()), np.sort(epoch2.ravel()))


def test_eval_batches_match_the_csv(tfrecord_dir, sample_dir, fast_config):
    classes = read_labels(tfrecord_dir)
    expected = _csv_labels(sample_dir, "val", classes)
    ds = make_dataset(
        tfrecord_dir,
        "val",
        image_sizes=[64],
        batch_size=7,
        training=False,
        num_classes=6,
        config=fast_config,
        with_paths=True,
    )
    seen = {}
    for images, labels, paths in ds:
        assert images.shape[1:] == (64, 64, 3)
        for label, path in zip(labels.numpy(), paths.numpy()):
            seen[path.decode()] = label.tolist()
    assert seen == expected
    first = [p.numpy().tolist() for _, _, p in ds]
    assert first == [p.numpy().tolist() for _, _, p in ds]  # evaluation order is stable


def test_eval_is_the_whole_image_resized(tfrecord_dir, fast_config):
    """No crop at evaluation: the mean colour matches a plain resize of the stored JPEG."""
    raw = next(iter(tf.data.TFRecordDataset(list_shards(tfrecord_dir, "test"))))
    ex = tf.io.parse_single_example(raw, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
    full = tf.cast(tf.io.decode_jpeg(ex["image/encoded"]), tf.float32)
    ds = make_dataset(
        tfrecord_dir, "test", image_sizes=[64], batch_size=1, training=False, num_classes=6, config=fast_config
    )
    image = next(iter(ds))[0][0]
    expected = tf.image.resize(full, [64, 64])
    np.testing.assert_allclose(image.numpy(), expected.numpy(), atol=1e-3)


def test_under_two_replica_strategy(tfrecord_dir, fast_config):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest sets up two logical CPUs"
    strategy = tf.distribute.MirroredStrategy(devices)
    ds = make_dataset(
        tfrecord_dir, "train", image_sizes=[64], batch_size=16, training=True, num_classes=6, config=fast_config
    )
    dist = strategy.experimental_distribute_dataset(ds)
    images, labels = next(iter(dist))
    per_replica = strategy.experimental_local_results(images)
    assert [tuple(x.shape) for x in per_replica] == [(8, 64, 64, 3), (8, 64, 64, 3)]
    total = strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda y: tf.reduce_sum(y), args=(labels,)), axis=None
    )
    assert float(total) == pytest.approx(
        sum(float(tf.reduce_sum(y)) for y in strategy.experimental_local_results(labels))
    )


def test_missing_shards_error(tmp_path, fast_config):
    with pytest.raises(DataError, match="no TFRecord shards for split 'train'"):
        make_dataset(
            tmp_path, "train", image_sizes=[64], batch_size=2, training=True, num_classes=6, config=fast_config
        )
