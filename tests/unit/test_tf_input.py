"""The tf.data input, checked by value."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mobiletag.data.augment import TrainAugment
from mobiletag.data.tf_input import list_shards, make_dataset
from mobiletag.data.tfrecords import read_labels
from mobiletag.errors import DataError

from ..conftest import cpu_strategy


def _csv_labels(sample_dir, split, classes):
    with open(sample_dir / f"{split}_labels.csv", encoding="utf-8") as fh:
        return {r["filepath"]: [float(c in r["labels"].split("|")) for c in classes] for r in csv.DictReader(fh)}


def _records(tfrecord_dir, split):
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/labels": tf.io.FixedLenFeature([6], tf.float32),
        "image/filepath": tf.io.FixedLenFeature([], tf.string),
    }
    return [tf.io.parse_single_example(r, features) for r in tf.data.TFRecordDataset(list_shards(tfrecord_dir, split))]


def _whole_image_uint8(jpeg, size):
    resized = tf.image.resize(tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32), [size, size])
    return tf.saturate_cast(tf.round(resized), tf.uint8)


def _train(tfrecord_dir, config, sizes, batch_size, **kwargs):
    return make_dataset(
        tfrecord_dir,
        "train",
        image_sizes=sizes,
        batch_size=batch_size,
        training=True,
        num_classes=6,
        config=config,
        **kwargs,
    )


def test_training_batches_one_uint8_crop_and_a_seed(tfrecord_dir, fast_config):
    batches = list(_train(tfrecord_dir, fast_config, [64, 96], 16))
    n_train = len(_records(tfrecord_dir, "train"))
    assert len(batches) == n_train // 16  # drop_remainder
    (images, seeds), labels = batches[0]
    assert images.shape == (16, 96, 96, 3) and images.dtype == tf.uint8  # one crop at the larger size
    assert seeds.shape == (16, 2) and seeds.dtype == tf.int64
    assert labels.shape == (16, 6) and labels.dtype == tf.float32
    assert int(tf.reduce_max(images)) > 100  # real pixel values, not [0, 1]
    all_seeds = np.concatenate([s.numpy() for (_, s), _ in batches])
    assert len({tuple(s) for s in all_seeds}) == len(all_seeds)  # one seed per example


def test_training_labels_are_the_csv_labels(tfrecord_dir, sample_dir, fast_config):
    classes = read_labels(tfrecord_dir)
    expected = sorted(_csv_labels(sample_dir, "train", classes).values())
    seen = sorted(row.tolist() for _, labels in _train(tfrecord_dir, fast_config, [64], 1) for row in labels.numpy())
    assert seen == expected  # every training image once per epoch, with its own labels


def test_without_random_crop_the_training_image_is_the_whole_image(tfrecord_dir, fast_config):
    """The host does crop + resize + round only: no flip, no colour jitter (they run in the step)."""
    config = dataclasses.replace(
        fast_config,
        data=dataclasses.replace(
            fast_config.data, augment=dataclasses.replace(fast_config.data.augment, random_resized_crop=False)
        ),
    )
    expected = {_whole_image_uint8(r["image/encoded"], 64).numpy().tobytes() for r in _records(tfrecord_dir, "train")}
    got = [x.tobytes() for (images, _), _ in _train(tfrecord_dir, config, [64, 48], 8) for x in images.numpy()]
    assert got and all(x in expected for x in got)


def test_crops_and_seeds_change_every_epoch_and_repeat_with_the_seed(tfrecord_dir, fast_config):
    def epoch(ds):
        return {tuple(s): x.tobytes() for (xs, ss), _ in ds for x, s in zip(xs.numpy(), ss.numpy())}

    # batches of 1: no remainder dropped (with reproducible: false, which elements fall in it depends on timing)
    ds = _train(tfrecord_dir, fast_config, [64], 1)
    first, second = epoch(ds), epoch(ds)
    assert len(first) == len(second) and not set(first) & set(second)  # new seeds ...
    assert set(first.values()) != set(second.values())  # ... and new crops
    again = epoch(_train(tfrecord_dir, fast_config, [64], 1))
    assert again == first  # the same config.seed: the same (seed, crop) pairs
    other = epoch(_train(tfrecord_dir, fast_config, [64], 1, seed_offset=1))
    assert not set(other) & set(first)


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
        assert images.shape[1:] == (64, 64, 3) and images.dtype == tf.uint8
        for label, path in zip(labels.numpy(), paths.numpy()):
            seen[path.decode()] = label.tolist()
    assert seen == expected
    first = [p.numpy().tolist() for _, _, p in ds]
    assert first == [p.numpy().tolist() for _, _, p in ds]  # evaluation order is stable


def test_eval_is_the_whole_image_resized_to_uint8(tfrecord_dir, fast_config):
    """No crop at evaluation: a plain bilinear resize of the stored JPEG, rounded, at each size."""
    records = _records(tfrecord_dir, "test")
    for cache in (True, False):
        config = dataclasses.replace(fast_config, data=dataclasses.replace(fast_config.data, cache_eval=cache))
        ds = make_dataset(
            tfrecord_dir, "test", image_sizes=[64, 40], batch_size=5, training=False, num_classes=6, config=config
        )
        for _ in range(2):  # the second pass comes from the cache when cache_eval is on
            (big, small), labels = next(iter(ds))
            assert big.dtype == tf.uint8 and small.dtype == tf.uint8 and small.shape == (5, 40, 40, 3)
            for i, record in enumerate(records[:5]):
                np.testing.assert_array_equal(big[i].numpy(), _whole_image_uint8(record["image/encoded"], 64).numpy())
                np.testing.assert_array_equal(small[i].numpy(), _whole_image_uint8(record["image/encoded"], 40).numpy())
                np.testing.assert_array_equal(labels[i].numpy(), record["image/labels"].numpy())


def test_under_two_replica_strategy(tfrecord_dir, fast_config):
    strategy = cpu_strategy()
    dist = strategy.experimental_distribute_dataset(_train(tfrecord_dir, fast_config, [64, 48], 16))
    (images, seeds), labels = next(iter(dist))
    assert [tuple(x.shape) for x in strategy.experimental_local_results(images)] == [(8, 64, 64, 3)] * 2
    assert [x.dtype for x in strategy.experimental_local_results(images)] == [tf.uint8] * 2
    assert [tuple(x.shape) for x in strategy.experimental_local_results(seeds)] == [(8, 2)] * 2
    augment = TrainAugment([64, 48], fast_config.data.augment)
    views = strategy.run(tf.function(augment.__call__), args=(images, seeds))
    assert [[tuple(v.shape) for v in strategy.experimental_local_results(view)] for view in views] == [
        [(8, 64, 64, 3)] * 2,
        [(8, 48, 48, 3)] * 2,
    ]
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
