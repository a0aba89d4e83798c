"""The training loop policy shared by teacher, student and QAT.

``Trainer`` wraps the model being trained (and, for distillation, a frozen teacher). Training
batches are ``((images, seeds), labels)``: one uint8 crop per image and a stateless seed;
``augment`` (a :class:`mobiletag.data.augment.TrainAugment`) turns them into float views
inside the step, on the accelerator. Per-example losses are reduced over the global batch,
so the same code is right under one device and under MirroredStrategy. ``fit`` adds what
every stage needs: validation mAP each epoch (through the strategy), best checkpoint, early
stopping, a NaN check at epoch end (no per-step host sync), BackupAndRestore for preemption,
and progress (a bar in a terminal, one line per epoch otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mobiletag.config import HardLoss
from mobiletag.errors import TrainingError
from mobiletag.progress import report_epoch
from mobiletag.training.attempts import StopOnSigterm, sigterm_flag
from mobiletag.training.backup import Backup
from mobiletag.training.losses import distillation_loss
from mobiletag.training.metrics import mean_average_precision
from mobiletag.training.optimizer import AveragedWeights, averaging_optimizer
from mobiletag.training.phases import HEAD_PHASES

log = logging.getLogger(__name__)

Preprocess = Callable[[tf.Tensor], tf.Tensor]


def identity(x: tf.Tensor) -> tf.Tensor:
    return x


class Trainer(keras.Model):
    """Trains ``model`` on hard labels, plus soft targets of a frozen ``teacher`` when given.

    The hard-label term is ``loss`` (:func:`mobiletag.training.losses.hard_loss`; ``pos_weight`` for
    ``weighted_bce``). Training batches
    are ``((images, seeds), labels)`` when ``augment`` is given: the views are
    ``augment(images, seeds)``, the teacher's first and the student's last (the same augmented
    image at each model's resolution). Without ``augment`` they are ``(images, labels)`` with
    ``images`` a view or a tuple ``(teacher_view, student_view)``. Evaluation and prediction
    batches are ``(images, labels)`` at the student's resolution (uint8 or float, 0-255).
    """

    def __init__(
        self,
        model: keras.Model,
        teacher: keras.Model | None = None,
        alpha: float = 1.0,
        temperature: float = 1.0,
        preprocess: Preprocess = identity,
        teacher_preprocess: Preprocess = identity,
        augment: Callable[[tf.Tensor, tf.Tensor], list[tf.Tensor]] | None = None,
        loss: HardLoss = "bce",
        pos_weight: Sequence[float] | None = None,
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
        self.augment = augment
        self.hard_loss = loss
        self.pos_weight = None if pos_weight is None else [float(w) for w in pos_weight]
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker]

    def _views(self, images: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """(teacher view, student view) of a training batch, float32 in [0, 255]."""
        if self.augment is not None:
            crops, seeds = images
            views = self.augment(crops, seeds)
        else:
            views = list(images) if isinstance(images, (tuple, list)) else [images]
        views = [tf.cast(v, tf.float32) for v in views]
        return views[0], views[-1]

    def call(self, images: Any, training: bool = False) -> tf.Tensor:
        view = images[-1] if isinstance(images, (tuple, list)) else images
        return self.model(self.preprocess(tf.cast(view, tf.float32)), training=training)

    def compute_loss_per_example(self, data: Any, training: bool) -> tf.Tensor:
        images, labels = data[0], data[1]
        if training:
            teacher_view, student_view = self._views(images)
        else:
            teacher_view = student_view = tf.cast(
                images[-1] if isinstance(images, (tuple, list)) else images, tf.float32
            )
        teacher_logits = None
        if self.teacher is not None and self.alpha < 1.0:
            teacher_logits = tf.stop_gradient(self.teacher(self.teacher_preprocess(teacher_view), training=False))
        logits = self.model(self.preprocess(student_view), training=training)
        return distillation_loss(
            labels, logits, teacher_logits, self.alpha, self.temperature, self.hard_loss, self.pos_weight
        )

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
        # with mixed_float16 the optimizer is a LossScaleOptimizer (keras wraps it at compile):
        # minimize scales the loss and unscales the gradients itself
        self.optimizer.minimize(loss, self.model.trainable_variables, tape=tape)
        self.loss_tracker.update_state(per_example)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        self.loss_tracker.update_state(self.compute_loss_per_example(data[:2], training=False))
        return {"loss": self.loss_tracker.result()}

    def predict_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Sigmoid scores (float32) with their labels: ``predict`` gathers both across replicas."""
        images, labels = data[0], data[1]
        return {"scores": tf.sigmoid(tf.cast(self(images, training=False), tf.float32)), "labels": labels}


def predict_scores(
    model: keras.Model, dataset: tf.data.Dataset, preprocess: Preprocess = identity
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and labels for a dataset of (images, labels[, paths])."""
    step = _predict_fn(model, preprocess)

    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in dataset:
        images, y = batch[0], batch[1]
        if isinstance(images, (tuple, list)):
            images = images[-1]
        if not scores:  # one trace for every batch size: the last, smaller batch is not traced again
            step.get_concrete_function(tf.TensorSpec([None, *images.shape[1:]], images.dtype))
        scores.append(step(images).numpy())
        labels.append(y.numpy())
    if not scores:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(scores), np.concatenate(labels)


def validation_map(model: keras.Model, dataset: tf.data.Dataset, preprocess: Preprocess = identity) -> float:
    """Macro mAP of ``model`` on a dataset of (images, labels)."""
    scores, labels = predict_scores(model, dataset, preprocess)
    return mean_average_precision(labels, scores)


_PREDICT_FNS: dict[tuple[int, int], Any] = {}


def _predict_fn(model: keras.Model, preprocess: Preprocess) -> Any:
    """One traced function per (model, preprocess): tracing again every epoch costs seconds."""
    key = (id(model), id(preprocess))
    if key not in _PREDICT_FNS:

        @tf.function(reduce_retracing=True)
        def step(images: tf.Tensor) -> tf.Tensor:
            return tf.sigmoid(tf.cast(model(preprocess(tf.cast(images, tf.float32)), training=False), tf.float32))

        _PREDICT_FNS[key] = step
    return _PREDICT_FNS[key]


class ValidationMAP(keras.callbacks.Callback):
    """Adds ``val_map`` (macro mAP on the validation split) to the epoch logs.

    On one device the scores come from :func:`predict_scores` on the trained model: the function
    that scores a model read back from its checkpoint, traced once per model (QAT's figure after
    range calibration is measured with the same trace). Under a distribution strategy with several
    replicas they come from ``trainer.predict``: every replica scores its share of each batch (the
    validation pass is not left to one device).
    """

    def __init__(self, trainer: Trainer, dataset: tf.data.Dataset, steps: int | None = None) -> None:
        super().__init__()
        self.trainer = trainer
        self.dataset = dataset
        self.steps = steps  # batches in the dataset: keras needs it with steps_per_execution > 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.trainer.distribute_strategy.num_replicas_in_sync == 1:
            scores, labels = predict_scores(self.trainer.model, self.dataset, self.trainer.preprocess)
        else:
            if self.steps is None:
                self.steps = count_batches(self.dataset)
            out = self.trainer.predict(self.dataset, steps=self.steps, verbose=0)
            scores, labels = np.asarray(out["scores"]), np.asarray(out["labels"])
        value = mean_average_precision(labels, scores)
        if logs is not None:
            logs["val_map"] = value if not math.isnan(value) else 0.0


def count_batches(dataset: tf.data.Dataset) -> int:
    """Batches in a finite dataset: its cardinality when known, else one pass over it."""
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return sum(1 for _ in dataset)


class NanGuard(keras.callbacks.Callback):
    """Stops at the end of an epoch whose mean training loss is not finite.

    Checked once per epoch, not per step: keras.callbacks.TerminateOnNaN reads the loss back
    to the host after every step, a sync that costs accelerator time. The mean over the epoch
    is NaN/inf when any step's loss was; the stage then fails before that epoch's weights are
    validated, saved as best or backed up (this callback runs first).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise TrainingError(
                f"{self.name}: the training loss became NaN/inf in epoch {epoch + 1}; lower the learning rate "
                "or check the data (stage stopped; nothing from that epoch was saved)"
            )


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the wrapped model as .h5 whenever validation mAP improves.

    The best figure, its epoch and the phase that wrote it are kept beside the file
    (``.best.json``) so a resumed run does not overwrite a better checkpoint with the first
    epoch after the restart. Phases of a stage share one checkpoint file: a resumed phase
    takes the figure back only when the sidecar is its own (``phase``); one written by an
    earlier phase leaves ``best`` (that phase's figure, passed in) and ``best_epoch`` -1, as in
    a run that was never interrupted.
    """

    def __init__(
        self, model: keras.Model, path: Path, best: float = -math.inf, resume: bool = False, phase: str = ""
    ) -> None:
        super().__init__()
        self.inner = model
        self.path = path
        self.phase = phase
        self.sidecar = path.with_suffix(".best.json")
        self.best = best
        self.best_epoch = -1
        self.restored = False  # True when this phase's best figure was read back after a restart
        if resume and self.sidecar.is_file() and path.is_file():
            saved = json.loads(self.sidecar.read_text())
            if saved.get("phase") == phase:
                self.best, self.best_epoch = max(best, saved["val_map"]), saved["epoch"]
                self.restored = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get("val_map", -math.inf)
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            tmp = self.path.with_suffix(".tmp.h5")
            self.inner.save(tmp, include_optimizer=False)
            tmp.replace(self.path)
            self.sidecar.write_text(json.dumps({"val_map": value, "epoch": epoch, "phase": self.phase}))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on ``val_map`` that, after a restart, starts from the best figure read back
    from the backup (``BestCheckpoint``), so a preempted run does not count its first epoch after
    the restart as an improvement. (The epochs without gain before the restart are not kept.)
    Epochs before ``start_from_epoch`` are not counted (Keras' own argument)."""

    def __init__(self, best: BestCheckpoint, patience: int, start_from_epoch: int = 0) -> None:
        super().__init__(
            monitor="val_map",
            mode="max",
            patience=patience,
            restore_best_weights=False,
            start_from_epoch=start_from_epoch,
        )
        self.checkpoint = best

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self.checkpoint.restored:
            self.best = self.checkpoint.best


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch (for KFP logs, where progress bars are noise): the epoch of how many,
    the losses and validation mAP, throughput and the time the remaining epochs would take at the
    median epoch's pace (early stopping can end sooner)."""

    def __init__(self, name: str, images_per_epoch: int, epochs: int) -> None:
        super().__init__()
        self.name = name
        self.images_per_epoch = images_per_epoch
        self.epochs = epochs
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._start
        self.epoch_seconds.append(seconds)
        shown = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if isinstance(v, (int, float)))
        left = (self.epochs - epoch - 1) * float(np.median(self.epoch_seconds))
        report_epoch(
            log,
            epoch + 1,
            self.epochs,
            "%s epoch %d/%d: %s (%.1f s, %.1f img/s%s)",
            self.name,
            epoch + 1,
            self.epochs,
            shown,
            seconds,
            self.images_per_epoch / max(seconds, 1e-9),
            f", about {left:.0f} s left" if epoch + 1 < self.epochs else "",
            head=self.name in HEAD_PHASES,
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
    patience_from_epoch: int = 0,
    best_so_far: float = -math.inf,
    validation_steps: int | None = None,
    backup: Backup | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
    mark_done: bool = True,
) -> FitResult:
    """Run ``epochs`` epochs with the shared policy; resumes from ``backup_dir`` if it holds an
    epoch backup of this fit (``resumed_from_backup``).

    ``backup_dir`` is a local folder (BackupAndRestore writes there) inside ``backup``'s, which
    is mirrored to its remote prefix at the end of each epoch, after the backup is written.
    Each fit of a stage needs a ``backup_dir`` of its own. With ``mark_done`` a finished fit
    leaves ``<backup_dir>.done.json`` (its result) and saves the backup, and a retried pod that
    finds it returns that result without training; a phase run through ``fit_phase_once``
    passes False: that function stores the result with the phase's weights in one save.

    Reproducibility (``config.reproducible``): ``steps_per_execution`` only groups steps into one
    call (the same batches feed the same steps in the same order), and on one device the default
    strategy adds nothing. A run resumed from a backup restores the weights and optimizer of its
    last finished epoch but starts a new input iterator, whose shuffle and augmentation sequence
    begins again at the seed's first epoch: a resumed run differs from an uninterrupted one.
    """
    if epochs <= 0:
        return FitResult(best_so_far, -1, 0)
    # a pod retried after this fit had finished (but before its stage did) must not train again
    done = Path(f"{backup_dir}.done.json") if backup_dir is not None and mark_done else None
    if done is not None and done.is_file():
        log.info("%s: finished before a restart (%s); not trained again", name, done.name)
        return FitResult(**json.loads(done.read_text()))
    epoch_log = EpochLog(name, steps_per_epoch * batch_size, epochs)
    resuming = resumed_from_backup(backup_dir)
    if resuming:
        log.info("%s: resuming from the epoch backup in %s", name, backup_dir)
    best = BestCheckpoint(trainer.model, checkpoint, best=best_so_far, resume=resuming, phase=name)
    # first: an epoch whose loss is not finite stops before anything of it is validated or saved
    averaging = averaging_optimizer(trainer)
    average = AveragedWeights(trainer, averaging) if averaging is not None else None
    callbacks: list[keras.callbacks.Callback] = [
        NanGuard(name),
        *([average.swap_in] if average else []),  # validated and checkpointed: the averaged weights
        ValidationMAP(trainer, val_ds, validation_steps),
        best,
        *([average.swap_out] if average else []),  # trained on and backed up: the trained ones
    ]
    if patience > 0:
        callbacks.append(ResumableEarlyStopping(best, patience=patience, start_from_epoch=patience_from_epoch))
    if backup_dir is not None:
        # after the others: the backup of an epoch is written once its checkpoint is saved
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=True))
        if backup is not None and backup.enabled:
            callbacks.append(backup.callback())
    callbacks.append(epoch_log)  # last of ours: an epoch's log line means its backup is stored
    callbacks.extend(extra_callbacks or [])
    with trainer.distribute_strategy.scope():  # the slots now: a first step that creates them is traced twice
        trainer.optimizer.build(trainer.model.trainable_variables)
    if resuming and not trainer.built:  # BackupAndRestore restores into a built model (a fresh fit needs no eager pass)
        trainer(next(iter(val_ds))[0])
    # SIGTERM (node shutdown) while training: back up at the next step and raise Preempted
    with sigterm_flag() as sigterm:
        callbacks.append(StopOnSigterm(sigterm, name, backup if backup_dir is not None else None))
        history = trainer.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=1 if sys.stderr.isatty() else 0,
        )
    losses = history.history.get("loss", [])
    timed = epoch_log.epoch_seconds[1:] or epoch_log.epoch_seconds  # the first epoch includes tracing
    speed = steps_per_epoch * batch_size / (sum(timed) / len(timed)) if timed else 0.0
    result = FitResult(
        best_val_map=best.best,
        best_epoch=best.best_epoch,
        epochs_run=len(losses),
        history={k: [float(x) for x in v] for k, v in history.history.items()},
        train_images_per_second=speed,
    )
    if done is not None:
        # BackupAndRestore deleted its epoch backup when training ended; this marker (with the
        # best checkpoint kept beside it) is what a retried pod finds instead
        done.write_text(json.dumps(dataclasses.asdict(result)))
        if backup is not None and backup.enabled:
            backup.save()
    return result


def resumed_from_backup(backup_dir: Path | None) -> bool:
    """Whether ``backup_dir`` holds an epoch backup that BackupAndRestore will resume from.

    BackupAndRestore keeps a ``tf.train.CheckpointManager`` in ``<backup_dir>/chief``: its
    state file ``checkpoint`` names the last epoch's checkpoint (``ckpt-N.index`` and data),
    and the folder is deleted when the fit ends. An empty or missing folder is a fresh start.
    """
    return backup_dir is not None and tf.train.latest_checkpoint(str(Path(backup_dir) / "chief")) is not None


PHASE_WEIGHTS = "weights"  # in the phase's folder: tf checkpoint files weights.index, weights.data-*
PHASE_RESULT = "result.json"  # in the phase's folder, written after the weights: the phase is done


def fit_phase_once(
    model: keras.Model, backup: Backup, key: str, train: Callable[[], FitResult], name: str
) -> FitResult:
    """Run a training phase that later phases build on, once per run.

    With a backup, the model's weights at the end of ``train()`` and then its result are written
    to the folder ``key`` and stored in one backup save: a pod retried in a later phase loads the
    weights and returns the stored result instead of training this phase again. The result is
    written after the weights, so a pod lost in between leaves no result and the phase trains
    again (a result without weights is never trusted). ``train()`` must call ``fit`` with
    ``mark_done=False``.
    """
    done_dir = backup.folder(key)
    if done_dir is None:
        return train()
    weights, marker = done_dir / PHASE_WEIGHTS, done_dir / PHASE_RESULT
    if marker.is_file() and Path(f"{weights}.index").is_file():
        log.info("%s finished before a restart; loading its weights", name)
        model.load_weights(str(weights))
        return FitResult(**json.loads(marker.read_text()))
    marker.unlink(missing_ok=True)  # a result whose weights are gone: not this attempt's
    result = train()
    model.save_weights(str(weights))
    marker.write_text(json.dumps(dataclasses.asdict(result)))
    backup.save()
    return result


def best_model(
    model: keras.Model,
    checkpoint: Path,
    val_ds: tf.data.Dataset,
    preprocess: Preprocess = identity,
    load: Callable[[Path], keras.Model] | None = None,
    save_to: Path | None = None,
    val_map: float | None = None,
) -> tuple[keras.Model, float]:
    """The best epoch's model (``model`` as it is when no epoch ran, e.g. 0 epochs configured) and
    its validation mAP; the checkpoint is written to ``save_to`` (default: it stays where it is).

    With ``val_map`` (the figure the best epoch's validation measured on the checkpoint's weights
    with this ``val_ds``, the same function and float32 compute: see
    ``stage_runner.epoch_figure_is_final``) the checkpoint's weights are restored into ``model``
    and that figure is returned; nothing is built or validated again. Otherwise the checkpoint is
    read back (``load``; default: as float32 whatever precision it was trained in) and validated:
    the file the next stages read and that ships is always float32.
    """
    from mobiletag.training.precision import float32_copy, is_float32, load_float32

    target = save_to or checkpoint
    if val_map is not None and checkpoint.exists() and is_float32(model) and restore_weights(model, checkpoint):
        if target != checkpoint:
            shutil.copyfile(checkpoint, target)
        return model, val_map
    if not checkpoint.exists():  # no epoch ran: the model as it is
        checkpoint = target
        (model if load else float32_copy(model)).save(checkpoint, include_optimizer=False)
    best = load(checkpoint) if load else load_float32(checkpoint)
    if load is None or target != checkpoint:
        best.save(target, include_optimizer=False)
    return best, validation_map(best, val_ds, preprocess)


def restore_weights(model: keras.Model, path: Path) -> bool:
    """Assign each weight of ``model`` its value in the .h5 file that ``model.save`` wrote, matched by
    layer and weight name; False (nothing assigned) when the file's names are not the model's.

    By name, not by position as ``load_weights`` does: the order of a layer's weights in the file
    follows its trainable flag at save time when the layer wraps another (tfmot's QuantizeWrapper),
    and a checkpoint of an earlier phase was saved under other flags.
    """
    import h5py
    from tf_keras.src.saving.legacy.hdf5_format import load_attributes_from_hdf5_group

    pairs: list[tuple[tf.Variable, np.ndarray]] = []
    with h5py.File(path, "r") as f:
        if "mixed_" in str(f.attrs.get("model_config", "")):  # saved under another precision policy
            return False
        group = f.get("model_weights", f)
        saved = [name for name in load_attributes_from_hdf5_group(group, "layer_names") if name in group]
        stored = {name for name in saved if load_attributes_from_hdf5_group(group[name], "weight_names")}
        layers = [layer for layer in model.layers if layer.weights]
        if stored != {layer.name for layer in layers} or len(layers) != len(stored):
            return False
        for layer in layers:
            names = load_attributes_from_hdf5_group(group[layer.name], "weight_names")
            variables: dict[str, tf.Variable] = {}
            for weight in layer.weights:  # a frozen wrapper may list a weight twice
                if variables.setdefault(weight.name, weight) is not weight:
                    return False  # two weights of one name
            if sorted(names) != sorted(variables):
                return False
            pairs += [(variables[name], np.asarray(group[layer.name][name])) for name in names]
        top = group.get("top_level_model_weights")
        if top is not None and load_attributes_from_hdf5_group(top, "weight_names"):
            return False
    keras.backend.batch_set_value(pairs)
    for layer in model._flatten_layers():  # e.g. Normalization recomputes its mean and variance tensors
        layer.finalize_state()
    return True


def scaled_learning_rate(learning_rate: float, batch_size: int, reference_batch_size: int) -> float:
    """The linear scaling rule (Goyal et al., 2017): the rate grows with the global batch."""
    return learning_rate * batch_size / reference_batch_size


def warmup_steps(epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup length in steps, never the whole run."""
    return min(int(round(epochs * steps_per_epoch)), max(0, total_steps - 1))


def set_batch_norm_momentum(model: keras.Model, momentum: float) -> None:
    """Moving statistics follow the weights faster with a lower momentum (short runs)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def cosine_schedule(
    peak: float, total_steps: int, warmup_steps: int = 0, decay: bool = True
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 1% of it
    (or, with ``decay=False``, ``peak`` held constant)."""
    total = max(1, total_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak if warmup_steps == 0 else 0.0,
        decay_steps=max(1, total - warmup_steps),
        alpha=0.01 if decay else 1.0,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
