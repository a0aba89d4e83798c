"""The smallest model fit() trains, for the backup and failure tests: 4x4x3 images -> 3 logits, one batch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mobiletag.training.backup import Backup
from mobiletag.training.fit import FitResult, Trainer, fit


def tiny_model(initial: list[np.ndarray] | None = None) -> keras.Model:
    """Flatten and one dense layer ("logits") on pixels scaled to [0, 1]; ``initial``: its weights."""
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(inputs / 255.0)))
    if initial is not None:
        model.set_weights(initial)
    return model


def tiny_fit(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    backup: Backup,
    *,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> FitResult:
    """fit() on the same batch of 4 images every step (seed 0), validated on it, with ``backup``'s
    folders for the best model and the epoch backups."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 4, 4, 3)).astype(np.float32)
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
    trainer = Trainer(model)
    trainer.compile(optimizer=optimizer)
    best_dir, fit_dir = backup.folder("best"), backup.folder("fit")
    assert best_dir is not None and fit_dir is not None
    return fit(
        trainer,
        tf.data.Dataset.from_tensors((images, labels)).repeat(),
        tf.data.Dataset.from_tensors((images, labels)),
        name=name,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=4,
        checkpoint=best_dir / "best.h5",
        backup_dir=fit_dir,
        patience=0,
        backup=backup,
        extra_callbacks=extra_callbacks,
    )
