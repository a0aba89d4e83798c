"""tf.data input from the TFRecord shards.

Training: shards read in parallel (interleave), records shuffled before decoding, random
resized crop decoded straight from the JPEG (``decode_and_crop_jpeg``), flip and colour
jitter, resized to one or more resolutions (the same augmented view for teacher and
student), batched with drop_remainder, prefetched. Evaluation: the whole image resized to the
input size (what ``inference_config.json`` tells an app to do), optionally cached.

Images come out as float32 in [0, 255], RGB; each model applies its own normalisation.
Augmentation uses stateless random ops seeded from ``config.seed``; in training, element order
is not deterministic (``deterministic=False`` lets parallel reads and decodes run ahead).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf

from mobiletag.config import AugmentConfig, Config
from mobiletag.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE


def list_shards(dataset_dir: str | Path, split: str) -> list[str]:
    files = sorted(str(p) for p in Path(dataset_dir).glob(f"{split}-*-of-*.tfrecord"))
    if not files:
        raise DataError(
            f"{dataset_dir}: no TFRecord shards for split '{split}' ({split}-*-of-*.tfrecord); "
            "build them with the prepare_dataset stage first"
        )
    return files


def _parse(serialized: tf.Tensor, num_classes: int) -> dict[str, tf.Tensor]:
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/labels": tf.io.FixedLenFeature([num_classes], tf.float32),
        "image/filepath": tf.io.FixedLenFeature([], tf.string),
    }
    return tf.io.parse_single_example(serialized, features)


def _resize_all(image: tf.Tensor, sizes: Sequence[int]) -> list[tf.Tensor]:
    image = tf.cast(image, tf.float32)
    return [tf.image.resize(image, [s, s], method="bilinear") for s in sizes]


def _augment(jpeg: tf.Tensor, seed: tf.Tensor, sizes: Sequence[int], aug: AugmentConfig) -> list[tf.Tensor]:
    """One random view of the image, at every requested size."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    if aug.random_resized_crop:
        shape = tf.image.extract_jpeg_shape(jpeg)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(aug.crop_area_min, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        offset_y, offset_x, _ = tf.unstack(begin)
        height, width, _ = tf.unstack(size)
        image = tf.image.decode_and_crop_jpeg(jpeg, tf.stack([offset_y, offset_x, height, width]), channels=3)
    else:
        image = tf.io.decode_jpeg(jpeg, channels=3)
    if aug.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    views = _resize_all(image, sizes)
    if aug.color_jitter:
        delta = tf.random.stateless_uniform([], seeds[2], -aug.brightness, aug.brightness)
        contrast = tf.random.stateless_uniform([], seeds[3], 1 - aug.contrast, 1 + aug.contrast)
        saturation = tf.random.stateless_uniform([], seeds[4], 1 - aug.saturation, 1 + aug.saturation)
        jittered = []
        for view in views:  # the same factors for every resolution: one augmented image
            x = view / 255.0
            x = tf.image.adjust_brightness(x, delta)
            x = tf.image.adjust_contrast(x, contrast)
            x = tf.image.adjust_saturation(x, saturation)
            jittered.append(tf.clip_by_value(x, 0.0, 1.0) * 255.0)
        views = jittered
    return views


def _pack(views: list[tf.Tensor]) -> tf.Tensor | tuple[tf.Tensor, ...]:
    return views[0] if len(views) == 1 else tuple(views)


def train_and_val(
    dataset_dir: str | Path,
    config: Config,
    *,
    train_sizes: Sequence[int],
    val_size: int,
    batch_size: int,
    num_classes: int,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """A training stage's two inputs: the augmented, repeated train split (one view per size in
    ``train_sizes``: the teacher's and the student's when distilling) and the val split at
    ``val_size``."""
    common: dict[str, Any] = dict(batch_size=batch_size, num_classes=num_classes, config=config)
    train = make_dataset(dataset_dir, "train", image_sizes=train_sizes, training=True, repeat=True, **common)
    val = make_dataset(dataset_dir, "val", image_sizes=[val_size], training=False, **common)
    return train, val


def make_dataset(
    dataset_dir: str | Path,
    split: str,
    *,
    image_sizes: Sequence[int],
    batch_size: int,
    training: bool,
    num_classes: int,
    config: Config,
    repeat: bool = False,
    with_paths: bool = False,
    seed_offset: int = 0,
) -> tf.data.Dataset:
    """Batches of (images, labels): images float32 [B, S, S, 3] in [0, 255] (a tuple of them,
    one per size, when several sizes are asked for), labels float32 multi-hot [B, C].

    ``batch_size`` is the global batch: under a tf.distribute strategy, pass the dataset to
    ``strategy.experimental_distribute_dataset`` and each replica gets batch_size / replicas.
    With ``with_paths`` (evaluation) a third element holds the original file paths.
    """
    files = list_shards(dataset_dir, split)
    sizes = list(image_sizes)
    seed = config.seed + seed_offset
    data_cfg = config.data

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return _parse(serialized, num_classes)

    if training:
        ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 16),
            num_parallel_calls=AUTOTUNE,
            deterministic=False,
        )
        if data_cfg.cache_train:
            ds = ds.cache()
        ds = ds.shuffle(data_cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, randoms))

        def train_map(serialized: tf.Tensor, random_pair: tf.Tensor) -> tuple[object, tf.Tensor]:
            ex = parse(serialized)
            views = _augment(ex["image/encoded"], random_pair, sizes, data_cfg.augment)
            return _pack(views), ex["image/labels"]

        ds = ds.map(train_map, num_parallel_calls=AUTOTUNE, deterministic=False)
        ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    else:
        ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))

        def eval_map(serialized: tf.Tensor) -> tuple[object, ...]:
            ex = parse(serialized)
            image = tf.io.decode_jpeg(ex["image/encoded"], channels=3)
            views = _pack(_resize_all(image, sizes))
            if with_paths:
                return views, ex["image/labels"], ex["image/filepath"]
            return views, ex["image/labels"]

        ds = ds.map(eval_map, num_parallel_calls=AUTOTUNE, deterministic=True)
        if data_cfg.cache_eval:
            ds = ds.cache()
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=False)
    options = tf.data.Options()
    options.experimental_deterministic = not training
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)
