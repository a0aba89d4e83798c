"""tf.data input from the TFRecord shards: uint8 pixels only; float work happens in the step.

Training: shards read in parallel (interleave), records shuffled before decoding, the random
resized crop decoded straight from the JPEG (``decode_and_crop_jpeg``), resized once to
S x S with S the largest training resolution, rounded to uint8, batched with drop_remainder,
prefetched. A batch is ``((images, seeds), labels)``: the crops, one stateless seed per
example, the multi-hot labels. Float conversion, flip, colour jitter and each model's resize
run inside the training step (:class:`mobiletag.data.augment.TrainAugment`), on the
accelerator when there is one: the host decodes and crops, and sends 1 byte per pixel of one
view instead of 4 bytes per pixel of every view.

Evaluation: the whole image resized to the input size (what ``inference_config.json`` tells
an app to do), rounded to uint8 as an app's pixels are. ``data.cache_eval`` caches the
serialized records (the shards' JPEG bytes), not pixels: see :func:`make_dataset`.

Crops and seeds come from stateless random ops seeded from ``config.seed``. With
``config.reproducible`` (the default) the training order is deterministic too: the shard and
record shuffles are seeded (a new order every epoch, the same sequence of orders for the same
seed), and the parallel interleave, map and batch hand elements on in input order, so every
example meets the same (seed, crop) in every run. The map functions hold no stateful op, so
they still run in parallel under ``tf.config.experimental.enable_op_determinism``. With
``reproducible: false``, ``deterministic=False`` lets parallel reads and decodes run ahead
(which examples share a batch, and which seed an example gets, then depend on timing).

Every iterator over the repeated training stream starts the same stream. A shuffle draws its
epoch's order from a seed generator that belongs to the dataset and is shared by all its
iterators, and a repeated pipeline draws the next epoch's seeds as soon as its prefetching
reaches that epoch. A second iterator over one dataset (a stage's next training phase, QAT
after its range calibration) would start where the first one's read-ahead stopped: at a
different epoch's seeds on a loaded machine than on a quiet one. The shuffles and the seed
stream are therefore built afresh for each iterator (inside a ``flat_map``), and no iterator
sees what another one read (with ``data.cache_train`` each iterator fills a cache of its own).
A training set that is not repeated reshuffles on every new iterator (one epoch each, as Keras
iterates it without ``steps_per_epoch``), which depends only on how many iterators were made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf

from mobiletag.artifacts import Dataset
from mobiletag.config import AugmentConfig, Config
from mobiletag.data.augment import crop_size
from mobiletag.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE


def list_shards(dataset_dir: str | Path, split: str) -> list[str]:
    files = sorted(str(p) for p in Path(dataset_dir).glob(Dataset.shard_glob(split)))
    if not files:
        raise DataError(
            f"{dataset_dir}: no TFRecord shards for split '{split}' ({Dataset.shard_glob(split)}); "
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


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """float pixels (0-255, from a bilinear resize) rounded and saturated to uint8."""
    return tf.saturate_cast(tf.round(image), tf.uint8)


def _resize_uint8(image: tf.Tensor, size: int, method: str = "bilinear") -> tf.Tensor:
    """Resize of a uint8 image, back to uint8 (cast to float first: on CPU the float kernel is
    faster than the uint8 one, 0.3 ms of ~1 ms per training image, same values). ``method``: one
    of ``data.augment.resize_methods``' names (see :func:`mobiletag.data.augment.resize`)."""
    x = tf.cast(image, tf.float32)
    if method == "mediapipe":  # top-left aligned, no antialiasing: as MediaPipe Tasks' OpenCV warp
        x = tf.raw_ops.ResizeBilinear(images=x[tf.newaxis], size=[size, size], half_pixel_centers=False)[0]
    elif method in ("bilinear", "nearest", "area"):
        x = tf.image.resize(x, [size, size], method=method)
    elif method == "bilinear_antialias":
        x = tf.image.resize(x, [size, size], method="bilinear", antialias=True)
    else:
        raise ValueError(f"unknown resize method {method!r}")
    return _to_uint8(x)


def _resize_crop(image: tf.Tensor, size: int, seed: tf.Tensor, methods: Sequence[str]) -> tf.Tensor:
    """The crop resized to ``size`` with a method drawn from ``methods`` by ``seed`` (equal odds).

    This is where a training image reaches its training size (the step resizes again only the
    smaller views when teacher and student sizes differ), so this is where how an app resizes
    (MediaPipe: no antialiasing) is rehearsed."""
    if len(methods) == 1:
        return _resize_uint8(image, size, methods[0])
    pick = tf.random.stateless_uniform([], seed=seed, maxval=len(methods), dtype=tf.int32)
    return tf.switch_case(pick, [lambda m=m: _resize_uint8(image, size, m) for m in methods])


def crop_window(shape: tf.Tensor, seed: tf.Tensor, aug: AugmentConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """A random crop of an image of ``shape`` [H, W, C]: ``(offset_yx [2], size_hw [2])``, int32.

    Its area is ``aug.crop_area_min``..1 of the image's and its aspect ratio within
    ``aug.crop_aspect_ratio_max`` of square either way (10 attempts, else the whole image).
    """
    ratio = aug.crop_aspect_ratio_max
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(1.0 / ratio, ratio),
        area_range=(aug.crop_area_min, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin[:2], size[:2]


def _random_crop(jpeg: tf.Tensor, seed: tf.Tensor, aug: AugmentConfig) -> tf.Tensor:
    """The random resized crop, decoded straight from the JPEG (only the crop's blocks are decoded)."""
    if not aug.random_resized_crop:
        return tf.io.decode_jpeg(jpeg, channels=3)
    offset, size = crop_window(tf.image.extract_jpeg_shape(jpeg), seed, aug)
    return tf.image.decode_and_crop_jpeg(jpeg, tf.concat([offset, size], axis=0), channels=3)


def _train_example(
    jpeg: tf.Tensor, random_pair: tf.Tensor, side: int, aug: AugmentConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """(uint8 [side, side, 3] crop, int64 [2] seed of the in-step augmentation) for one image."""
    crop_seed, step_seed = tf.unstack(tf.random.experimental.stateless_split(random_pair, num=2))
    resize_seed = tf.random.experimental.stateless_fold_in(crop_seed, 1)
    return _resize_crop(_random_crop(jpeg, crop_seed, aug), side, resize_seed, aug.resize_methods), step_seed


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
    """A training stage's two inputs: the repeated train split as ``((crops, seeds), labels)``
    (uint8 crops at ``max(train_sizes)``, for a :class:`~mobiletag.data.augment.TrainAugment`
    built with ``train_sizes``) and the val split as ``(images, labels)``, uint8 at ``val_size``."""
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
    """Batches of uint8 RGB pixels (0-255) with float32 multi-hot labels [B, C].

    Training: ``((images, seeds), labels)``; images uint8 [B, S, S, 3], the random resized
    crop at S = ``max(image_sizes)``; seeds int64 [B, 2], one stateless seed per example for
    the in-step augmentation (``TrainAugment(image_sizes, config.data.augment)`` makes the
    float views from both). No flip or colour jitter here.

    Evaluation: ``(images, labels)`` (``(images, labels, paths)`` with ``with_paths``); images
    uint8 [B, s, s, 3], the whole image at s = ``image_sizes[0]``, or a tuple of such tensors,
    one per size, when several sizes are asked for (the JPEG is decoded once). With
    ``data.cache_eval`` the serialized records are cached in memory after the first pass:
    about the size of the split's shards (``stats.json`` ``stored_bytes``: 31 KB an image for
    the benchmark's 1 MP photos stored at 345 px), where decoded uint8 pixels would take 173 KB
    (240 px) to 270 KB (300 px) an image; decoding a stored JPEG costs ~0.5 ms of one core, paid
    again every validation pass.

    ``batch_size`` is the global batch: under a tf.distribute strategy, pass the dataset to
    ``strategy.experimental_distribute_dataset`` and each replica gets batch_size / replicas
    (the seeds travel with their images, so an example's augmentation does not depend on the
    replica count).
    """
    files = list_shards(dataset_dir, split)
    sizes = [int(s) for s in image_sizes]
    side = crop_size(sizes)
    seed = config.seed + seed_offset
    data_cfg = config.data
    ordered = config.reproducible  # training element order fixed by the seed (evaluation always is)

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return _parse(serialized, num_classes)

    if training:

        def records_and_seeds(_: object = None) -> tf.data.Dataset:
            """(serialized record, random pair): the shuffled records, each with two random int64."""
            ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
            ds = ds.interleave(
                tf.data.TFRecordDataset,
                cycle_length=min(len(files), 16),
                num_parallel_calls=AUTOTUNE,
                deterministic=ordered,
            )
            if data_cfg.cache_train:
                ds = ds.cache()
            ds = ds.shuffle(data_cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
            if repeat:
                ds = ds.repeat()
            randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            return tf.data.Dataset.zip((ds, randoms))

        if repeat:  # the shuffles and seeds built afresh for each iterator: see the module docstring
            ds = tf.data.Dataset.range(1).flat_map(records_and_seeds)
            ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
        else:
            ds = records_and_seeds()

        def train_map(serialized: tf.Tensor, random_pair: tf.Tensor) -> tuple[object, tf.Tensor]:
            ex = parse(serialized)
            crop, step_seed = _train_example(ex["image/encoded"], random_pair, side, data_cfg.augment)
            return (crop, step_seed), ex["image/labels"]

        ds = ds.map(train_map, num_parallel_calls=AUTOTUNE, deterministic=ordered)
        ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE, deterministic=ordered)
    else:
        ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
        if data_cfg.cache_eval:
            ds = ds.cache()  # encoded records: see the docstring
        if repeat:
            ds = ds.repeat()

        def eval_map(serialized: tf.Tensor) -> tuple[object, ...]:
            ex = parse(serialized)
            image = tf.io.decode_jpeg(ex["image/encoded"], channels=3)
            views = _pack([_resize_uint8(image, s) for s in sizes])
            if with_paths:
                return views, ex["image/labels"], ex["image/filepath"]
            return views, ex["image/labels"]

        ds = ds.map(eval_map, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=False)
    options = tf.data.Options()
    options.deterministic = ordered or not training
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)
