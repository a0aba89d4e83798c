"""The optimizer a training phase compiles with, from its config section's recipe keys
(``optimizer``, ``weight_decay``, ``ema_half_life_epochs``), and the moving average of the
weights (EMA) that the epochs are validated and checkpointed with.

The average is Keras' own (``use_ema``): the optimizer keeps one average per trainable variable
and updates it after each step, on every replica (MirroredStrategy), and it is part of the
optimizer's state, so an epoch backup keeps it. BatchNormalization's moving statistics are not
trainable and are not averaged: the averaged weights are validated and checkpointed with the
statistics of the trained weights (as Keras' own ``use_ema`` leaves them). The average starts
from the phase's first weights, which still weigh 2^(-E/H) after E epochs at half-life H: keep H
well below the phase's epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tf_keras as keras

# AdamW: biases and BatchNormalization's scale and offset are not decayed. Keras matches each
# pattern with re.search on the variable's name, which on a replica's copy ends in /replica_N:0
NOT_DECAYED = [r"/(bias|gamma|beta)(/replica_\d+)?:\d+$"]


@dataclass(frozen=True)
class OptimizerRecipe:
    """Adam or AdamW (``weight_decay``), with an EMA of the weights of ``ema_momentum`` per step (None: off)."""

    kind: str = "adam"
    weight_decay: float = 0.0
    ema_momentum: float | None = None

    def build(self, learning_rate: Any) -> keras.optimizers.Optimizer:
        ema: dict[str, Any] = {}
        if self.ema_momentum is not None:
            ema = {"use_ema": True, "ema_momentum": self.ema_momentum}
        if self.kind == "adamw":
            optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=self.weight_decay, **ema)
            optimizer.exclude_from_weight_decay(var_names=NOT_DECAYED)
            return optimizer
        return keras.optimizers.Adam(learning_rate, **ema)


def recipe_for(section: Any, steps_per_epoch: int, average: bool) -> OptimizerRecipe:
    """The recipe of a config section (teacher, student; QAT's has none of the keys: Adam) for a phase
    that averages its weights (``average``) or not, at ``steps_per_epoch``."""
    half_life = float(getattr(section, "ema_half_life_epochs", 0.0)) if average else 0.0
    momentum = ema_momentum(half_life, steps_per_epoch) if half_life > 0 else None
    return OptimizerRecipe(
        getattr(section, "optimizer", "adam"), float(getattr(section, "weight_decay", 0.0)), momentum
    )


def ema_momentum(half_life_epochs: float, steps_per_epoch: int) -> float:
    """The decay per step that halves a step's weight in the average after ``half_life_epochs`` epochs."""
    return 0.5 ** (1.0 / max(1.0, half_life_epochs * steps_per_epoch))


def averaging_optimizer(trainer: keras.Model) -> keras.optimizers.Optimizer | None:
    """The trainer's optimizer when it keeps an EMA of the weights (a LossScaleOptimizer's inner one), else None."""
    optimizer = getattr(trainer, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return optimizer if getattr(optimizer, "use_ema", False) else None


class AveragedWeights:
    """Validation and the best checkpoint see the EMA of the weights; training goes on from its own.

    ``swap_in`` (a callback placed before validation) puts the averages into the model's
    trainable variables and keeps the trained values; ``swap_out`` (after the checkpoint, before
    the epoch backup) puts them back. Swapping exchanges values: nothing is copied twice."""

    def __init__(self, trainer: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
        self.trainer = trainer
        self.optimizer = optimizer
        self.swapped = False
        self.swap_in, self.swap_out = _SwapAtEpochEnd(self, True), _SwapAtEpochEnd(self, False)

    def swap(self, averaged: bool) -> None:
        if averaged == self.swapped:
            return
        pairs = self._pairs()
        values = keras.backend.batch_get_value([v for pair in pairs for v in pair])
        keras.backend.batch_set_value(
            [(var, values[2 * i + 1]) for i, (var, _) in enumerate(pairs)]
            + [(avg, values[2 * i]) for i, (_, avg) in enumerate(pairs)]
        )
        self.swapped = averaged

    def _pairs(self) -> list[tuple[Any, Any]]:
        optimizer = self.optimizer
        return [
            (var, optimizer._model_variables_moving_average[optimizer._index_dict[optimizer._var_key(var)]])
            for var in self.trainer.model.trainable_variables
        ]


class _SwapAtEpochEnd(keras.callbacks.Callback):
    """At each epoch's end: the averaged weights in (``averaged``) or the trained ones back."""

    def __init__(self, average: AveragedWeights, averaged: bool) -> None:
        super().__init__()
        self.average = average
        self.averaged = averaged

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.average.swap(self.averaged)
