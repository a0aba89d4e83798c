"""In-step augmentation (TrainAugment): checked by value, under XLA, mixed precision and two replicas."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mobiletag.config import AugmentConfig
from mobiletag.data.augment import RESIZE_METHODS, TrainAugment, crop_size, resize, stateless_uniforms, to_float
from mobiletag.export.app_input import mediapipe_resize

from ..conftest import cpu_strategy

BIG, SMALL, BATCH = 96, 64, 16
PLAIN = AugmentConfig(flip=False, color_jitter=False, resize_methods=["bilinear"])
FLIP_ONLY = AugmentConfig(flip=True, color_jitter=False)
ALL_METHODS = ["bilinear", "mediapipe", "nearest", "bilinear_antialias", "area"]


def _images(n: int = BATCH, side: int = BIG, low: float = 30, high: float = 225) -> tf.Tensor:
    """Smooth, different images with a left-right asymmetry (a flip shows), uint8."""
    rng = np.random.default_rng(0)
    coarse = tf.constant(rng.uniform(low, high, (n, 6, 6, 3)).astype(np.float32))
    smooth = tf.image.resize(coarse, [side, side], method="bicubic")
    ramp = tf.reshape(tf.linspace(-20.0, 20.0, side), [1, 1, side, 1])
    return tf.saturate_cast(tf.round(smooth + ramp), tf.uint8)


def _seeds(n: int = BATCH, offset: int = 0) -> tf.Tensor:
    return tf.constant([[offset + i, 7 * i + 1] for i in range(n)], tf.int64)


def test_views_shapes_dtype_and_range():
    views = TrainAugment([BIG, SMALL], AugmentConfig())(_images(), _seeds())
    assert [tuple(v.shape) for v in views] == [(BATCH, BIG, BIG, 3), (BATCH, SMALL, SMALL, 3)]
    for v in views:
        assert v.dtype == tf.float32
        assert float(tf.reduce_min(v)) >= 0.0 and float(tf.reduce_max(v)) <= 255.0
        assert float(tf.reduce_mean(v)) > 60.0  # pixel values 0-255, not 0-1
    assert crop_size([SMALL, BIG]) == BIG and TrainAugment([SMALL, BIG], PLAIN).crop_size == BIG


def test_every_size_sees_the_same_augmented_image():
    big, small = TrainAugment([BIG, SMALL], AugmentConfig(resize_methods=["bilinear"]))(_images(), _seeds())
    down = tf.image.resize(big, [SMALL, SMALL], method="bilinear")
    np.testing.assert_allclose(down.numpy(), small.numpy(), atol=1e-3)
    other = tf.roll(small, shift=1, axis=0)  # another example's view: far off
    assert float(tf.reduce_mean(tf.abs(down - other))) > 10.0


def test_flip_and_jitter_off_is_the_cast_and_resized_input():
    images = _images()
    big, small = TrainAugment([BIG, SMALL], PLAIN)(images, _seeds())
    np.testing.assert_array_equal(big.numpy(), images.numpy().astype(np.float32))
    np.testing.assert_array_equal(small.numpy(), tf.image.resize(tf.cast(images, tf.float32), [SMALL, SMALL]).numpy())
    np.testing.assert_array_equal(to_float(images).numpy(), images.numpy().astype(np.float32))


def test_flip_mirrors_some_examples_and_keeps_the_others():
    images = _images(32).numpy().astype(np.float32)
    (out,) = TrainAugment([BIG], FLIP_ONLY)(tf.constant(images.astype(np.uint8)), _seeds(32))
    out = out.numpy()
    flipped = [bool(np.array_equal(o, x[:, ::-1])) for o, x in zip(out, images)]
    kept = [bool(np.array_equal(o, x)) for o, x in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))  # each one or the other, exactly
    assert 4 <= sum(flipped) <= 28  # about half (p < 1e-4 to fail by chance)


def test_jitter_factors_stay_within_the_configured_ranges():
    grey = tf.fill([64, 32, 32, 3], tf.constant(128, tf.uint8))  # mid-grey: no clipping
    brightness = AugmentConfig(flip=False, brightness=0.1, contrast=0.0, saturation=0.0)
    (out,) = TrainAugment([32], brightness)(grey, _seeds(64))
    delta = out.numpy() - 128.0
    per_example = delta.reshape(64, -1)
    np.testing.assert_allclose(per_example, per_example[:, :1].repeat(per_example.shape[1], 1), atol=1e-4)
    assert np.abs(per_example).max() <= 0.1 * 255 + 1e-3
    assert per_example[:, 0].std() > 0.1 * 255 / 4  # spread over the range, per example

    colourful = _images(64, 32, low=80, high=175)  # contrast x1.3 does not reach 0 or 255
    contrast = AugmentConfig(flip=False, brightness=0.0, contrast=0.3, saturation=0.0)
    (out,) = TrainAugment([32], contrast)(colourful, _seeds(64))
    x = colourful.numpy().astype(np.float32)
    mean_in, mean_out = x.mean(axis=(1, 2)), out.numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(mean_out, mean_in, atol=0.05)  # the channel means are kept ...
    spread = out.numpy().std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3))
    assert spread.min() >= 0.7 - 1e-3 and spread.max() <= 1.3 + 1e-3 and spread.std() > 0.05  # ... spread scaled

    saturation = AugmentConfig(flip=False, brightness=0.0, contrast=0.0, saturation=0.3)
    (out,) = TrainAugment([32], saturation)(colourful, _seeds(64))
    luma = np.array([0.2989, 0.5870, 0.1140], np.float32)
    np.testing.assert_allclose(out.numpy() @ luma, x @ luma, atol=0.05)  # the greyscale image is kept
    chroma_in = np.abs(x - (x @ luma)[..., None]).mean(axis=(1, 2, 3))
    chroma_out = np.abs(out.numpy() - (out.numpy() @ luma)[..., None]).mean(axis=(1, 2, 3))
    ratio = chroma_out / chroma_in
    assert ratio.min() >= 0.7 - 1e-3 and ratio.max() <= 1.3 + 1e-3 and ratio.std() > 0.05


def test_jitter_equals_brightness_then_contrast_then_saturation():
    """The fused per-example affine map gives what the three adjustments give in sequence."""
    images, seeds = _images(8, 32), _seeds(8)
    aug = AugmentConfig(flip=False, brightness=0.3, contrast=0.4, saturation=0.5)
    (out,) = TrainAugment([32], aug)(images, seeds)
    u = stateless_uniforms(seeds, 4).numpy().astype(np.float64)
    d, k, f = ((2 * u[:, i] - 1) * a for i, a in ((1, aug.brightness * 255), (2, aug.contrast), (3, aug.saturation)))
    y = images.numpy().astype(np.float64) + d[:, None, None, None]  # tf.image.adjust_brightness
    mean = y.mean(axis=(1, 2), keepdims=True)
    y = (y - mean) * (1 + k[:, None, None, None]) + mean  # tf.image.adjust_contrast
    grey = (y @ np.array([0.2989, 0.5870, 0.1140]))[..., None]
    y = grey + (y - grey) * (1 + f[:, None, None, None])  # a blend with the greyscale image
    np.testing.assert_allclose(out.numpy(), np.clip(y, 0, 255), atol=2e-3)
    assert np.abs(out.numpy() - images.numpy()).mean() > 5.0  # the jitter did something


def test_deterministic_for_equal_seeds_and_per_example():
    augment = TrainAugment([BIG, SMALL], AugmentConfig())
    images, seeds = _images(), _seeds()
    first, again = augment(images, seeds), augment(images, seeds)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = augment(images, _seeds(offset=1000))
    assert float(tf.reduce_mean(tf.abs(first[0] - other[0]))) > 1.0
    # an example's augmentation depends on its own seed only, not on the batch around it
    part = augment(images[3:7], seeds[3:7])
    for whole, piece in zip(first, part):
        np.testing.assert_array_equal(whole.numpy()[3:7], piece.numpy())


def test_stateless_uniforms_are_uniform_and_spread_for_neighbouring_seeds():
    u = stateless_uniforms(tf.constant([[i, 0] for i in range(20000)], tf.int64), 4).numpy()
    assert u.dtype == np.float32 and u.shape == (20000, 4)
    assert u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_allclose(u.mean(axis=0), 0.5, atol=0.01)
    np.testing.assert_allclose(u.std(axis=0), np.sqrt(1 / 12), atol=0.01)
    assert np.abs(np.corrcoef(u.T) - np.eye(4)).max() < 0.03
    assert len(np.unique(u[:, 0])) > 19900


def test_runs_under_xla_on_cpu():
    augment = TrainAugment([BIG, SMALL], AugmentConfig())
    compiled = tf.function(augment.__call__, jit_compile=True)
    images, seeds = _images(), _seeds()
    for eager, xla in zip(augment(images, seeds), compiled(images, seeds)):
        assert xla.dtype == tf.float32 and xla.shape == eager.shape
        np.testing.assert_allclose(xla.numpy(), eager.numpy(), atol=0.05)  # XLA's own resize rounding


def test_stays_float32_under_a_mixed_bfloat16_policy():
    augment = TrainAugment([BIG, SMALL], AugmentConfig())
    images, seeds = _images(), _seeds()
    reference = augment(images, seeds)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        views = tf.function(augment.__call__)(images, seeds)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for view, ref in zip(views, reference):
        assert view.dtype == tf.float32
        np.testing.assert_allclose(view.numpy(), ref.numpy(), atol=1e-4)


def test_two_replicas_give_the_single_device_views():
    strategy = cpu_strategy()
    augment = TrainAugment([BIG, SMALL], AugmentConfig())
    images, seeds = _images(), _seeds()
    ds = tf.data.Dataset.from_tensors((images, seeds))
    dist_images, dist_seeds = next(iter(strategy.experimental_distribute_dataset(ds)))
    per_replica = strategy.run(tf.function(augment.__call__), args=(dist_images, dist_seeds))
    single = augment(images, seeds)
    for replicated, whole in zip(per_replica, single):
        parts = strategy.experimental_local_results(replicated)
        assert [tuple(p.shape)[0] for p in parts] == [BATCH // 2, BATCH // 2]
        np.testing.assert_allclose(np.concatenate([p.numpy() for p in parts]), whole.numpy(), atol=1e-4)


def test_crop_size_needs_a_size():
    with pytest.raises(ValueError, match="no image sizes"):
        crop_size([])


# === Resize methods ===


def test_resize_methods_equal_their_tensorflow_ops():
    x = tf.cast(_images(4), tf.float32)
    native = {
        "bilinear": tf.image.resize(x, [SMALL, SMALL], method="bilinear"),
        "nearest": tf.image.resize(x, [SMALL, SMALL], method="nearest"),
        "bilinear_antialias": tf.image.resize(x, [SMALL, SMALL], method="bilinear", antialias=True),
        "area": tf.image.resize(x, [SMALL, SMALL], method="area"),
    }
    for method, want in native.items():  # the last two as matrix products
        np.testing.assert_allclose(resize(x, SMALL, method).numpy(), want.numpy(), atol=2e-3, err_msg=method)
    assert sorted(RESIZE_METHODS) == sorted(ALL_METHODS)
    with pytest.raises(ValueError, match="unknown method 'cubic'"):
        resize(x, SMALL, "cubic")


def test_mediapipe_method_is_mediapipe_resize_up_to_its_fixed_point():
    """Same sampling as the app's resize; OpenCV's 1/32-px grid and 5-bit weights move noise by a few levels."""
    noise = np.random.default_rng(3).integers(0, 256, (2, 37, 37, 3), dtype=np.uint8)
    for size in (32, 24, 50):
        want = np.stack([mediapipe_resize(image, size, size) for image in noise]).astype(np.float32)
        got = resize(tf.constant(noise, tf.float32), size, "mediapipe").numpy()
        assert np.abs(got - want).max() <= 8 and np.abs(got - want).mean() < 1.0, size
        half_pixel = resize(tf.constant(noise, tf.float32), size, "bilinear").numpy()
        assert np.abs(half_pixel - want).mean() > 5 * np.abs(got - want).mean(), size


def test_each_example_gets_its_drawn_method_at_every_size():
    n, sizes = 40, [BIG, SMALL, 48]
    aug = AugmentConfig(flip=False, color_jitter=False, resize_methods=ALL_METHODS)
    images, seeds = _images(n), _seeds(n)
    views = TrainAugment(sizes, aug)(images, seeds)
    drawn = np.minimum((stateless_uniforms(seeds, 5).numpy()[:, 4] * 5).astype(int), 4)
    assert set(drawn) == set(range(5))  # every method picked
    x = tf.cast(images, tf.float32)
    np.testing.assert_array_equal(views[0].numpy(), x.numpy())  # the crop's own size: untouched
    for view, size in zip(views[1:], sizes[1:]):
        per_method = {m: resize(x, size, m).numpy() for m in ALL_METHODS}
        for i, k in enumerate(drawn):
            np.testing.assert_array_equal(view.numpy()[i], per_method[ALL_METHODS[k]][i])
    # the same seeds give the same views; an example's view does not depend on its batch
    again = TrainAugment(sizes, aug)(images[5:9], seeds[5:9])
    for whole, part in zip(views, again):
        np.testing.assert_array_equal(whole.numpy()[5:9], part.numpy())
    weighted = AugmentConfig(flip=False, color_jitter=False, resize_methods=["nearest", "nearest", "area"])
    (_, small) = TrainAugment([BIG, SMALL], weighted)(images, seeds)[:2]
    nearest, area = resize(x, SMALL, "nearest").numpy(), resize(x, SMALL, "area").numpy()
    picks = [
        0 if np.array_equal(v, a) else 1 if np.array_equal(v, b) else 2 for v, a, b in zip(small.numpy(), nearest, area)
    ]
    assert 2 not in picks and picks.count(0) > picks.count(1) > 0  # listed twice, drawn twice as often


def test_all_resize_methods_run_under_xla_and_two_replicas():
    augment = TrainAugment([BIG, SMALL], AugmentConfig(resize_methods=ALL_METHODS))
    images, seeds = _images(), _seeds()
    eager = augment(images, seeds)
    for xla, want in zip(tf.function(augment.__call__, jit_compile=True)(images, seeds), eager):
        np.testing.assert_allclose(xla.numpy(), want.numpy(), atol=0.05)
    strategy = cpu_strategy()
    ds = tf.data.Dataset.from_tensors((images, seeds))
    dist_images, dist_seeds = next(iter(strategy.experimental_distribute_dataset(ds)))
    per_replica = strategy.run(tf.function(augment.__call__), args=(dist_images, dist_seeds))
    for replicated, whole in zip(per_replica, eager):
        parts = strategy.experimental_local_results(replicated)
        np.testing.assert_allclose(np.concatenate([p.numpy() for p in parts]), whole.numpy(), atol=1e-3)
