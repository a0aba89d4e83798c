"""The training loop policy shared by teacher, student and QAT.

``Trainer`` wraps the model being trained (and, for distillation, a frozen teacher) and
reduces per-example losses over the global batch, so the same code is right under one
device and under MirroredStrategy. ``fit`` adds what every stage needs: validation mAP each
epoch, best checkpoint, early stopping, TerminateOnNaN, BackupAndRestore for preemption,
and progress (a bar in a terminal, one line per epoch otherwise).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mobiletag.errors import TrainingError
from mobiletag.training.losses import distillation_loss
from mobiletag.training.metrics import mean_average_precision

log = logging.getLogger(__name__)

Preprocess = Callable[[tf.Tensor], tf.Tensor]


def identity(x: tf.Tensor) -> tf.Tensor:
    return x


class Trainer(keras.Model):
    """Trains ``model`` on hard labels, plus soft targets of a frozen ``teacher`` when given.

    Batches are ``(images, labels)``; with a teacher, ``images`` is ``(teacher_view,
    student_view)``: the same augmented image at each model's resolution.
    """

    def __init__(
        self,
        model: keras.Model,
        teacher: keras.Model | None = None,
        alpha: float = 1.0,
        temperature: float = 1.0,
        preprocess: Preprocess = identity,
        teacher_preprocess: Preprocess = identity,
    ) -> None:
        super().__init__(name="trainer")
        self.model = model
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.preprocess = preprocess
        self.teacher_preprocess = teacher_preprocess
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker]

    def _split(self, images: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
        if self.teacher is None:
            return (images[-1] if isinstance(images, (tuple, list)) else images), None
        teacher_view, student_view = images
        return student_view, teacher_view

    def call(self, images: Any, training: bool = False) -> tf.Tensor:
        student_view, _ = self._split(images)
        return self.model(self.preprocess(student_view), training=training)

    def compute_loss_per_example(self, data: Any, training: bool) -> tf.Tensor:
        images, labels = data
        student_view, teacher_view = self._split(images)
        teacher_logits = None
        if self.teacher is not None and self.alpha < 1.0:
            teacher_logits = tf.stop_gradient(self.teacher(self.teacher_preprocess(teacher_view), training=False))
        logits = self.model(self.preprocess(student_view), training=training)
        return distillation_loss(labels, logits, teacher_logits, self.alpha, self.temperature)

    def _global_average(self, per_example: tf.Tensor) -> tf.Tensor:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.shape(per_example)[0] * replicas
        return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            per_example = self.compute_loss_per_example(data, training=True)
            loss = self._global_average(per_example)
            regularization = self.model.losses
            if regularization:
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                loss += tf.add_n(regularization) / replicas
        self.optimizer.minimize(loss, self.model.trainable_variables, tape=tape)
        self.loss_tracker.update_state(per_example)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        self.loss_tracker.update_state(self.compute_loss_per_example(data[:2], training=False))
        return {"loss": self.loss_tracker.result()}


def predict_scores(
    model: keras.Model, dataset: tf.data.Dataset, preprocess: Preprocess = identity
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and labels for a dataset of (images, labels[, paths])."""
    step = _predict_fn(model, preprocess)

    scores, labels = [], []
    for batch in dataset:
        images, y = batch[0], batch[1]
        if isinstance(images, (tuple, list)):
            images = images[-1]
        scores.append(step(images).numpy())
        labels.append(y.numpy())
    if not scores:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(scores), np.concatenate(labels)


def validation_map(model: keras.Model, dataset: tf.data.Dataset, preprocess: Preprocess = identity) -> float:
    """Macro mAP of ``model`` on a dataset of (images, labels)."""
    scores, labels = predict_scores(model, dataset, preprocess)
    return mean_average_precision(labels, scores)


_PREDICT_FNS: dict[tuple[int, int], Callable[[tf.Tensor], tf.Tensor]] = {}


def _predict_fn(model: keras.Model, preprocess: Preprocess) -> Callable[[tf.Tensor], tf.Tensor]:
    """One traced function per (model, preprocess): tracing again every epoch costs seconds."""
    key = (id(model), id(preprocess))
    if key not in _PREDICT_FNS:

        @tf.function(reduce_retracing=True)
        def step(images: tf.Tensor) -> tf.Tensor:
            return tf.sigmoid(tf.cast(model(preprocess(images), training=False), tf.float32))

        _PREDICT_FNS[key] = step
    return _PREDICT_FNS[key]


class ValidationMAP(keras.callbacks.Callback):
    """Adds ``val_map`` (macro mAP on the validation split) to the epoch logs."""

    def __init__(self, model: keras.Model, dataset: tf.data.Dataset, preprocess: Preprocess = identity) -> None:
        super().__init__()
        self.inner = model
        self.dataset = dataset
        self.preprocess = preprocess

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = validation_map(self.inner, self.dataset, self.preprocess)
        if logs is not None:
            logs["val_map"] = value if not math.isnan(value) else 0.0


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the wrapped model as .h5 whenever validation mAP improves.

    The best figure is kept beside the file (``.best.json``) so a resumed run does not
    overwrite a better checkpoint with the first epoch after the restart.
    """

    def __init__(self, model: keras.Model, path: Path, best: float = -math.inf, resume: bool = False) -> None:
        super().__init__()
        self.inner = model
        self.path = path
        self.sidecar = path.with_suffix(".best.json")
        self.best = best
        self.best_epoch = -1
        if resume and self.sidecar.is_file() and path.is_file():
            saved = json.loads(self.sidecar.read_text())
            self.best, self.best_epoch = max(best, saved["val_map"]), saved["epoch"]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get("val_map", -math.inf)
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            tmp = self.path.with_suffix(".tmp.h5")
            self.inner.save(tmp, include_optimizer=False)
            tmp.replace(self.path)
            self.sidecar.write_text(json.dumps({"val_map": value, "epoch": epoch}))


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch (for KFP logs, where progress bars are noise) and throughput."""

    def __init__(self, name: str, images_per_epoch: int) -> None:
        super().__init__()
        self.name = name
        self.images_per_epoch = images_per_epoch
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._start
        self.epoch_seconds.append(seconds)
        shown = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if isinstance(v, (int, float)))
        log.info(
            "%s epoch %d: %s (%.1f s, %.1f img/s)",
            self.name,
            epoch + 1,
            shown,
            seconds,
            self.images_per_epoch / max(seconds, 1e-9),
        )


@dataclass
class FitResult:
    best_val_map: float
    best_epoch: int  # 0-based; -1 when no epoch improved
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)
    train_images_per_second: float = 0.0


def fit(
    trainer: Trainer,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    *,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    checkpoint: Path,
    backup_dir: Path | None,
    patience: int,
    preprocess: Preprocess = identity,
    best_so_far: float = -math.inf,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> FitResult:
    """Run ``epochs`` epochs with the shared policy; resumes from ``backup_dir`` if a backup exists."""
    if epochs <= 0:
        return FitResult(best_so_far, -1, 0)
    epoch_log = EpochLog(name, steps_per_epoch * batch_size)
    resuming = backup_dir is not None and tf.io.gfile.exists(str(backup_dir))
    best = BestCheckpoint(trainer.model, checkpoint, best=best_so_far, resume=resuming)
    callbacks: list[keras.callbacks.Callback] = [ValidationMAP(trainer.model, val_ds, preprocess), best]
    if patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_map", mode="max", patience=patience, restore_best_weights=False)
        )
    nan_guard = keras.callbacks.TerminateOnNaN()
    callbacks.append(nan_guard)
    if backup_dir is not None:
        # after the others: the backup of an epoch is written once its checkpoint is saved
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=True))
    callbacks.append(epoch_log)  # last of ours: an epoch's log line means its backup is on disk
    callbacks.extend(extra_callbacks or [])
    if not trainer.built:  # BackupAndRestore needs built variables to restore into
        trainer(next(iter(train_ds))[0])
    history = trainer.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=1 if sys.stderr.isatty() else 0,
    )
    losses = history.history.get("loss", [])
    if any(not math.isfinite(v) for v in losses):
        raise TrainingError(
            f"{name}: the training loss became NaN/inf at epoch {len(losses)}; lower the learning rate "
            "or check the data (stage stopped, no model written from that epoch)"
        )
    timed = epoch_log.epoch_seconds[1:] or epoch_log.epoch_seconds  # the first epoch includes tracing
    speed = steps_per_epoch * batch_size / (sum(timed) / len(timed)) if timed else 0.0
    return FitResult(
        best_val_map=best.best,
        best_epoch=best.best_epoch,
        epochs_run=len(losses),
        history={k: [float(x) for x in v] for k, v in history.history.items()},
        train_images_per_second=speed,
    )


def best_model(
    model: keras.Model,
    checkpoint: Path,
    val_ds: tf.data.Dataset,
    preprocess: Preprocess = identity,
    load: Callable[[Path], keras.Model] | None = None,
) -> tuple[keras.Model, float]:
    """The best epoch's model read back from ``checkpoint`` (the file that ships; ``model`` as it
    is when no epoch ran, e.g. 0 epochs configured) and its validation mAP."""
    if not checkpoint.exists():
        model.save(checkpoint)
    best = load(checkpoint) if load else keras.models.load_model(checkpoint, compile=False)
    return best, validation_map(best, val_ds, preprocess)


def set_batch_norm_momentum(model: keras.Model, momentum: float) -> None:
    """Moving statistics follow the weights faster with a lower momentum (short runs)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def cosine_schedule(
    peak: float, total_steps: int, warmup_steps: int = 0
) -> keras.optimizers.schedules.LearningRateSchedule:
    total = max(1, total_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak if warmup_steps == 0 else 0.0,
        decay_steps=max(1, total - warmup_steps),
        alpha=0.01,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
