"""Training phases: what a training stage declares, and the phase names its epoch lines carry.

No TensorFlow here: the console (:mod:`mobiletag.progress`) imports the names.

A phase's ``name`` starts each epoch line (``<name> epoch N/M: ...``) and tags the best
checkpoint's ``.best.json``; its ``folder`` is the phase's folder in the task's backup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

TEACHER_HEAD = "teacher phase A"
TEACHER_FINE_TUNE = "teacher phase B"
STUDENT_HEAD = "student warm-up"
STUDENT_FINE_TUNE = "student"
QAT = "qat"
# phases that train the classification head alone on a frozen backbone: a few short epochs
# whose last one reads as the phase's result
HEAD_PHASES = (TEACHER_HEAD, STUDENT_HEAD)

Schedule = Literal["constant", "hold", "cosine"]


@dataclass(frozen=True)
class Phase:
    """One fit of a training stage.

    Attributes:
        name: the epoch lines' and the best checkpoint's phase name.
        folder: the phase's backup folder (its epoch backups; ``<folder>_done`` with ``once``).
        epochs: epochs to train (0: the phase only records where it stands).
        learning_rate: the config's rate; the driver scales it with the global batch.
        schedule: ``constant`` (the rate as it is), ``hold`` (a linear ramp over
            ``lr_warmup_epochs``, then the rate held), ``cosine`` (the ramp, then cosine decay).
        lr_warmup_epochs: length of the learning-rate ramp, in epochs.
        prepare: sets which layers train (and logs it), right before the phase compiles.
        once: later phases build on this one's weights: with a backup, its weights and result
            are stored when it ends and a retried pod loads them instead of training it again.
    """

    name: str
    folder: str
    epochs: int
    learning_rate: float
    schedule: Schedule = "cosine"
    lr_warmup_epochs: float = 0.0
    prepare: Callable[[], Any] | None = None
    once: bool = False
