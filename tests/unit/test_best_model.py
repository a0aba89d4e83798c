"""The end of a training stage and its validation passes: the best checkpoint's weights and figure
without building or validating the model again when the epochs' figure is the checkpoint's, and one
trace per model for every validation pass of a stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mobiletag.training import fit as fit_module
from mobiletag.training import precision
from mobiletag.training.fit import (
    FitResult,
    Trainer,
    ValidationMAP,
    best_model,
    fit,
    identity,
    predict_scores,
    restore_weights,
    validation_map,
)
from mobiletag.training.stage_runner import epoch_figure_is_final
from mobiletag.training.strategy import Devices

from ..conftest import cpu_strategy


def _data(n: int = 10, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16, 3)).astype(np.uint8)
    labels = (rng.uniform(size=(n, classes)) > 0.5).astype(np.float32)
    labels[0] = 1.0  # every class has a positive
    return images, labels


def _model(classes: int = 3, head: str = "logits") -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0, name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name=head)(x))


def _scaled(images: tf.Tensor) -> tf.Tensor:
    return images / 255.0


def _by_name(model: keras.Model) -> dict[str, np.ndarray]:
    return {f"{layer.name}/{w.name}": w.numpy() for layer in model.layers for w in layer.weights}


def test_predict_scores_traces_once_for_every_batch_size():
    images, labels = _data(n=10)
    model = _model()
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)  # 4, 4, 2
    scores, seen = predict_scores(model, batches, _scaled)
    assert fit_module._predict_fn(model, _scaled).experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(seen, labels)
    expected = tf.sigmoid(model(_scaled(tf.cast(images, tf.float32)), training=False)).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-7)


def test_validation_on_one_device_scores_as_the_checkpoints_validation_does(monkeypatch):
    """The epoch's figure comes from the function that validates a model read back from its file,
    traced once for the model (QAT's figure after range calibration is measured with it too)."""
    images, labels = _data(n=10)
    model = _model()
    val = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    direct = validation_map(model, val, _scaled)
    trainer = Trainer(model, preprocess=_scaled)

    def keras_predict(*args, **kwargs):
        raise AssertionError("one device: no trainer.predict")

    monkeypatch.setattr(trainer, "predict", keras_predict)
    logs: dict[str, float] = {}
    ValidationMAP(trainer, val).on_epoch_end(0, logs)
    assert logs["val_map"] == direct
    assert fit_module._predict_fn(model, _scaled).experimental_get_tracing_count() == 1


def _trained(tmp_path, trainer: Trainer | None = None) -> tuple[Trainer, tf.data.Dataset, FitResult]:
    """``trainer`` (default: SGD on a small conv net) fitted 3 epochs of 2 steps on 8 images."""
    images, labels = _data(n=8)
    if trainer is None:
        trainer = Trainer(_model(), preprocess=_scaled)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05))
    train = tf.data.Dataset.from_tensors((images, labels)).repeat()
    val = tf.data.Dataset.from_tensors((images, labels))
    result = fit(
        trainer,
        train,
        val,
        name="student",
        epochs=3,
        steps_per_epoch=2,
        batch_size=8,
        checkpoint=tmp_path / "best" / "student_best.h5",
        backup_dir=None,
        patience=0,
    )
    return trainer, val, result


def test_a_fresh_fit_makes_no_eager_pass(tmp_path):
    """Only a fit that resumes from a backup calls the trainer eagerly (to build it for the restore)."""
    (tmp_path / "best").mkdir()
    trainer, _, result = _trained(tmp_path)
    assert result.epochs_run == 3 and not trainer.built


@pytest.mark.parametrize(("steps_per_execution", "traces"), [(1, 1), (3, 2)])
def test_a_fresh_fit_traces_its_training_step_once(tmp_path, steps_per_execution, traces):
    """The optimizer's slots exist before the first step: a step that created them would be traced a
    second time by tf.function. With several steps per call, Keras' loop is traced once more by
    autograph (a first pass to learn what the loop body returns): 2, whatever the number of epochs."""
    traced: list[int] = []

    class Counting(Trainer):
        def train_step(self, data):
            traced.append(1)  # runs in Python only when the step is traced
            return super().train_step(data)

    trainer = Counting(_model(), preprocess=_scaled)
    trainer.compile(optimizer=keras.optimizers.Adam(1.0e-3), steps_per_execution=steps_per_execution)
    (tmp_path / "best").mkdir()
    _, _, result = _trained(tmp_path, trainer)
    assert result.epochs_run == 3 and len(traced) == traces


def test_best_model_restores_the_checkpoint_and_keeps_the_epoch_figure(tmp_path, monkeypatch):
    """Nothing is built from the file or validated again; the model holds the checkpoint's weights,
    the file is in the output folder, and its direct validation gives the figure returned."""
    (tmp_path / "best").mkdir()
    trainer, val, result = _trained(tmp_path)
    model = trainer.model
    for variable in model.variables:  # later epochs than the best one
        variable.assign(variable + 1.0)

    def forbidden(*args, **kwargs):
        raise AssertionError("built or validated again")

    monkeypatch.setattr(precision, "load_float32", forbidden)
    monkeypatch.setattr(fit_module, "validation_map", forbidden)
    out = tmp_path / "out" / "student_best.h5"
    out.parent.mkdir()
    best, figure = best_model(
        model, tmp_path / "best" / "student_best.h5", val, _scaled, save_to=out, val_map=result.best_val_map
    )
    monkeypatch.undo()
    assert best is model and figure == result.best_val_map
    assert out.read_bytes() == (tmp_path / "best" / "student_best.h5").read_bytes()
    saved = precision.load_float32(out)
    expected, restored = _by_name(saved), _by_name(model)
    assert expected.keys() == restored.keys() and all(np.array_equal(expected[k], restored[k]) for k in expected)
    assert validation_map(saved, val, _scaled) == figure


def test_restore_weights_by_name_when_a_wrappers_trainable_flag_changed(tmp_path):
    """A QAT layer wraps another: the order of its weights follows its trainable flag (frozen, it lists
    the wrapped kernel twice), so Keras' positional load_weights refuses a file saved under other flags;
    by name, each weight gets its own value."""
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(_model())
    start = 1
    for variable in qat.variables:  # distinct values, so a misplaced value shows
        size = int(np.prod(variable.shape))
        variable.assign(np.arange(start, start + size).reshape(variable.shape).astype(variable.dtype.as_numpy_dtype))
        start += size
    path = tmp_path / "qat.h5"
    qat.save(path, include_optimizer=False)
    saved = _by_name(qat)
    qat.get_layer("quant_conv").trainable = False  # e.g. a later phase's flags
    for variable in qat.variables:
        variable.assign(tf.zeros_like(variable))
    with pytest.raises(ValueError, match=r"Weight count mismatch for layer #1 .*quant_conv"):
        qat.load_weights(path)
    assert restore_weights(qat, path)
    restored = _by_name(qat)
    assert restored.keys() == saved.keys() and all(np.array_equal(saved[k], restored[k]) for k in saved)


def test_restore_weights_refuses_a_file_of_another_model(tmp_path):
    path = tmp_path / "other.h5"
    _model(head="head").save(path, include_optimizer=False)
    model = _model()
    before = _by_name(model)
    assert not restore_weights(model, path)
    assert all(np.array_equal(before[k], v) for k, v in _by_name(model).items())


def _devices(policy: str = "float32", strategy: tf.distribute.Strategy | None = None) -> Devices:
    return Devices(strategy or tf.distribute.get_strategy(), policy, False, 1, 0)


def test_the_epoch_figure_is_final_only_in_float32_on_one_replica():
    best = FitResult(0.7, 1, 2)
    assert epoch_figure_is_final(_devices(), best) == 0.7
    assert epoch_figure_is_final(_devices("mixed_bfloat16"), best) is None
    assert epoch_figure_is_final(_devices("mixed_float16"), best) is None
    assert epoch_figure_is_final(_devices(strategy=cpu_strategy()), best) is None
    assert epoch_figure_is_final(_devices(), FitResult(0.0, 0, 1)) is None  # NaN mAP is logged as 0
    assert epoch_figure_is_final(_devices(), FitResult(-math.inf, -1, 0)) is None  # no epoch ran


def test_the_teacher_stage_reports_its_checkpoints_validation_map(teacher_dir, tfrecord_dir, tiny_config):
    """The figure in the metrics file is what validating the shipped checkpoint gives, to 4 decimals."""
    import json

    from mobiletag.data.tf_input import train_and_val

    size = tiny_config.teacher.image_size
    _, val = train_and_val(tfrecord_dir, tiny_config, train_sizes=[size], val_size=size, batch_size=16, num_classes=6)
    metrics = json.loads((teacher_dir / "teacher_metrics.json").read_text())["metrics"]
    direct = validation_map(precision.load_float32(teacher_dir / "teacher_best.h5"), val, identity)
    assert metrics["val_map"] == round(direct, 4)
