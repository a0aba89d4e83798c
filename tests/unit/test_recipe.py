"""The training recipe on small, hard multi-label data: the hard set, crops that keep
labelled objects, configurable flips and the student's head phase."""

from __future__ import annotations

import csv
import dataclasses
import hashlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mobiletag.config import AugmentConfig, Config, load_config


def _rows(root, split):
    with open(root / f"{split}_labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_hard_set_has_the_promised_shape_and_is_seeded(tmp_path):
    from PIL import Image

    from mobiletag.data.sample import HARD_CLASSES, HARD_SIZE, make_hard_dataset

    assert make_hard_dataset(tmp_path / "a", seed=3) == {"train": 420, "val": 90, "test": 90}
    make_hard_dataset(tmp_path / "b", seed=3)
    make_hard_dataset(tmp_path / "c", seed=4)
    train = _rows(tmp_path / "a", "train")
    labels = [set(filter(None, r["labels"].split("|"))) for r in train]
    assert set().union(*labels) == set(HARD_CLASSES) and len(HARD_CLASSES) == 10
    counts = np.bincount([len(s) for s in labels], minlength=5)
    assert counts[4] == 0 and all(counts[:4] > 20), counts  # 0 to 3 labels, each count common
    with Image.open(tmp_path / "a" / "images" / train[0]["filepath"]) as image:
        assert image.size == (HARD_SIZE, HARD_SIZE) and image.mode == "RGB"

    def digest(root):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def _share_keeping(aug: AugmentConfig, box: tuple[float, float], n: int = 400) -> float:
    """Share of the input pipeline's random crops of a 96-px image that contain ``box`` (lo, hi
    as shares of the side, on both axes) whole."""
    from mobiletag.data.tf_input import crop_window

    lo, hi = box
    kept = 0
    for i in range(n):
        offset, size = (t.numpy() / 96.0 for t in crop_window(tf.constant([96, 96, 3]), tf.constant([i, 11]), aug))
        kept += bool(np.all(offset <= lo) and np.all(offset + size >= hi))
    return kept / n


def test_default_crops_keep_an_object_near_a_corner():
    """An object in the hard set's worst slot position (8% from two edges, a quarter of the side
    wide): ImageNet-style crops (area 0.5-1) cut it in two of three crops, and its label stays."""
    corner = (0.08, 0.32)
    default = Config().data.augment
    assert default.crop_area_min == 0.85
    assert _share_keeping(default, corner) >= 0.80  # 0.8475 with TensorFlow 2.21
    assert _share_keeping(AugmentConfig(crop_area_min=0.5), corner) <= 0.32  # 0.27
    assert _share_keeping(AugmentConfig(crop_area_min=1.0), corner) == 1.0  # area 1: the whole image


def test_crop_aspect_limit_is_configurable():
    from mobiletag.data.tf_input import crop_window

    for ratio in (1.0, 2.0):
        aug = AugmentConfig(crop_area_min=0.3, crop_aspect_ratio_max=ratio)
        shapes = [crop_window(tf.constant([480, 480, 3]), tf.constant([i, 5]), aug)[1].numpy() for i in range(200)]
        aspect = np.array([w / h for h, w in shapes])
        assert aspect.max() <= ratio * 1.02 and aspect.min() >= 1 / ratio / 1.02
        if ratio > 1:
            assert aspect.max() > 1.5 or aspect.min() < 1 / 1.5  # the range is used


def test_flip_can_be_turned_off_by_a_dataset_config(tmp_path):
    (tmp_path / "config.yaml").write_text("data:\n  augment:\n    flip: false\n")
    config = load_config(tmp_path / "config.yaml")
    assert config.data.augment.flip is False
    from mobiletag.data.augment import TrainAugment

    images = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)), tf.uint8)
    seeds = tf.constant(np.arange(32).reshape(16, 2), tf.int64)
    aug = config.data.augment.__class__(flip=False, color_jitter=False)
    (out,) = TrainAugment([8], aug)(images, seeds)
    np.testing.assert_array_equal(out.numpy(), images.numpy().astype(np.float32))  # no image mirrored


def test_train_head_only_freezes_the_backbone_and_its_batch_norm():
    from mobiletag.models.student import build_student, train_head_only

    model = build_student(4, 32, "efficientnet_lite0")
    assert train_head_only(model, True) == 1
    assert [w.name for w in model.trainable_weights] == ["logits/kernel:0", "logits/bias:0"]
    assert train_head_only(model, False) > 50
    assert all(layer.trainable for layer in model.layers)
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    everything = train_head_only(model, False)
    assert train_head_only(model, False, freeze_batch_norm=True) == everything - len(bn)
    assert bn and not any(layer.trainable for layer in bn)
    assert model.get_layer("logits").trainable


def _moved_from_imagenet(checkpoint, config) -> tuple[dict[str, bool], set[str]]:
    """Per layer with weights of a trained student checkpoint: whether any weight differs from the
    ImageNet weights the stage started from (the same architecture, loaded as the stage loads them);
    and the names of its BatchNormalization layers."""
    from mobiletag.models.lite_weights import imagenet_weights, load_backbone
    from mobiletag.models.student import build_student

    trained = keras.models.load_model(checkpoint, compile=False)
    reference = build_student(6, config.student.image_size, config.student.architecture, config.student.dropout)
    load_backbone(reference, imagenet_weights(config.student.architecture))
    moved = {
        mine.name: not all(np.array_equal(a, b) for a, b in zip(mine.get_weights(), theirs.get_weights()))
        for mine, theirs in zip(trained.layers, reference.layers)
        if mine.weights
    }
    return moved, {layer.name for layer in trained.layers if isinstance(layer, keras.layers.BatchNormalization)}


@pytest.mark.slow
def test_student_warm_up_trains_the_head_on_the_pretrained_backbone(tfrecord_dir, teacher_dir, tiny_config, tmp_path):
    """One warm-up epoch and no fine-tuning: the backbone is the pretrained one, bit for bit,
    BatchNormalization statistics included; only the head has learned."""
    import json

    from mobiletag.stages import train_student

    student = dataclasses.replace(tiny_config.student, head_epochs=1, epochs=0, weights="imagenet")
    config = tiny_config.replace(student=student)
    result = train_student.run(
        config, tfrecord_dir, teacher_dir, tmp_path / "student", backup_uri=str(tmp_path / "backups"), run_id="run-1"
    )
    assert result.metrics["epochs_warmup"] == 1 and result.metrics["epochs"] == 0
    moved, _ = _moved_from_imagenet(tmp_path / "student" / "student_best.h5", config)
    assert all(moved[name] == (name == "logits") for name in moved), moved
    history = json.loads((tmp_path / "student" / "student_metrics.json").read_text())["warmup_history"]
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])


@pytest.mark.slow
def test_student_fine_tuning_with_frozen_batch_norm_keeps_the_pretrained_statistics(
    tfrecord_dir, teacher_dir, tiny_config, tmp_path
):
    """`student.freeze_batch_norm`: one fine-tuning epoch moves the convolutions but leaves every
    BatchNormalization layer (moving statistics, scale, offset) as the ImageNet weights have it."""
    from mobiletag.stages import train_student

    student = dataclasses.replace(
        tiny_config.student, head_epochs=0, epochs=1, weights="imagenet", freeze_batch_norm=True
    )
    config = tiny_config.replace(student=student)
    train_student.run(
        config, tfrecord_dir, teacher_dir, tmp_path / "student", backup_uri=str(tmp_path / "backups"), run_id="run-1"
    )
    moved, batch_norm = _moved_from_imagenet(tmp_path / "student" / "student_best.h5", config)
    assert batch_norm and not any(moved[name] for name in batch_norm)
    assert all(moved[name] for name in moved if name not in batch_norm)  # every convolution and the head learned


@pytest.mark.slow
def test_the_student_stage_does_not_stop_early_at_a_high_rate(tfrecord_dir, teacher_dir, tiny_config, tmp_path):
    """A flat validation mAP (rate 0, BatchNormalization statistics held) with patience 1 over 6 cosine
    epochs: counting starts at epoch 3 (the middle of the decay), so the stage runs 5 epochs; counted
    from the first it would run 2."""
    import json

    from mobiletag.stages import train_student

    student = dataclasses.replace(
        tiny_config.student,
        head_epochs=0,
        epochs=6,
        learning_rate=0.0,
        early_stopping_patience=1,
        alpha=1.0,
        batch_norm_momentum=1.0,
    )
    train_student.run(
        tiny_config.replace(student=student),
        tfrecord_dir,
        teacher_dir,
        tmp_path / "student",
        backup_uri=str(tmp_path / "backups"),
        run_id="run-1",
    )
    history = json.loads((tmp_path / "student" / "student_metrics.json").read_text())["history"]
    assert len(set(history["val_map"])) == 1 and len(history["val_map"]) == 5


def test_sample_images_at_phone_scale():
    """`mobiletag sample-data --scale 14`: photos of 2.3 MP and more (the large-image set)."""
    from mobiletag.data.sample import _image

    rng = np.random.default_rng(0)
    sizes = [_image(rng, ["circle", "star"], scale=14.0).size for _ in range(3)]
    assert all(w * h >= 2_300_000 for w, h in sizes), sizes
    small = _image(np.random.default_rng(0), ["circle"]).size
    assert 112 <= small[0] < 192 and 104 <= small[1] < 176


def test_the_input_pipeline_resizes_each_crop_with_a_drawn_method(tmp_path):
    """The crop reaches the training size in the input pipeline: that is where the resize method
    must vary (a single-size student's step never resizes), drawn per example, seeded."""
    from mobiletag.data.tf_input import _resize_crop, _resize_uint8

    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (97, 97, 3)), tf.uint8)  # noise: every method differs
    methods = ["bilinear", "mediapipe", "nearest"]
    expected = {m: _resize_uint8(image, 40, m).numpy() for m in methods}
    assert all(not np.array_equal(expected[a], expected[b]) for a in methods for b in methods if a != b)
    seen = []
    for i in range(30):
        out = _resize_crop(image, 40, tf.constant([i, 3], tf.int64), methods).numpy()
        seen.append(next(m for m in methods if np.array_equal(out, expected[m])))
        again = _resize_crop(image, 40, tf.constant([i, 3], tf.int64), methods).numpy()
        np.testing.assert_array_equal(out, again)
    assert set(seen) == set(methods)
    single = _resize_crop(image, 40, tf.constant([0, 3], tf.int64), ["bilinear"]).numpy()
    np.testing.assert_array_equal(single, expected["bilinear"])


def test_sample_data_hard_refuses_a_size(tmp_path, capsys):
    """The hard set has a fixed size: --images or --scale with it is an error, not silently ignored."""
    from mobiletag.cli import main

    assert main(["sample-data", "--kind", "hard", "--images", "1000", "--out-dir", str(tmp_path / "h")]) == 2
    assert "--kind hard has a fixed size" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
